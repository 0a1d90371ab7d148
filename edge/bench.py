"""`noa-edge bench`: latency and memory of every variant × backend × thread count, the whole
frame-to-result pipeline, and a sustained live feed — the numbers engineers pick hardware by.

Trustworthy on a noisy, shared machine:
- contenders are interleaved (A B C A B C …, the starting contender rotating every round), so a burst
  of load from another process hits all of them alike and the ratios between them hold;
- every contender gets the same input, its own warm-up, and the statistics TFLite's benchmark_model
  prints (init, first inference, warm-up mean, mean/std/min/max, p50/p90/p95/p99, throughput);
- a backend that is not installed, or a variant the bundle lacks, is listed under "skipped" with the
  reason — never silently absent.

Host-only backends (onnxruntime, keras → TensorFlow) are imported lazily inside their contender, only
when asked for, so `import edge.bench` stays light and TensorFlow-free (tests/test_layering.py).

Memory: `rss_delta_mb` is the resident-memory growth caused by loading that contender and running its
first inference; `peak_rss_mb` is the process's peak (getrusage) at that moment, so in a run with many
contenders it accumulates. For a clean per-variant figure run one contender per process
(benchmarks/cold_start.py does).
"""

from __future__ import annotations

import json
import importlib
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ALL_VARIANTS = ("fp32", "fp16", "int8", "edgetpu")
ALL_BACKENDS = ("litert", "tflite-runtime", "onnxruntime", "keras")
# levers, for comparison: LiteRT without its default XNNPACK delegate, and XNNPACK with its latest features
EXTRA_BACKENDS = ("litert-builtin", "litert-latest")
# backends that run the bundle's fp32 reference model (ONNX or Keras), not its TFLite variants
FP32_ONLY_BACKENDS = {"onnxruntime": "the bundle's ONNX model (fp32)", "keras": "the Keras model (fp32)"}
PERCENTILES = (50, 90, 95, 99)
PIPELINE_STAGES = ("decode", "image_area", "roi", "preprocess", "invoke", "cam", "nomogram", "encode", "store",
                   "render")
# edge.pipeline.Analyzer timing keys -> bench stage names (the vocabulary)
ANALYZER_STAGE_NAMES = {"image_area": "image_area", "roi": "roi", "crop": "preprocess", "invoke": "invoke",
                        "cam_overlay": "cam", "nomogram": "nomogram", "encode": "encode", "store": "store"}
DEMO_CLINICAL = {"fsh": 18.0, "volume_ml": 9.0, "edv_cm_s": 2.5}


class BenchError(ValueError):
    """A bench option or input that cannot work; the message says which and why."""


class Unavailable(Exception):
    """This contender cannot run here (backend not installed, variant absent, no Edge TPU)."""


# ------------------------------------------------------------------------------------- statistics
def summarize(samples_ms) -> dict:
    """mean/std/min/max/p50/p90/p95/p99 (ms) and single-stream throughput (fps) of timings in ms."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        raise BenchError("no timings to summarize")
    out = {"mean_ms": float(a.mean()), "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
           "min_ms": float(a.min()), "max_ms": float(a.max())}
    for p in PERCENTILES:
        out[f"p{p}_ms"] = float(np.percentile(a, p))
    out["fps"] = 1000.0 / out["mean_ms"] if out["mean_ms"] > 0 else float("inf")
    out["n"] = int(a.size)
    return out


def interleave(contenders: dict, runs: int, warmup: int = 3) -> dict:
    """{name: fn} -> {name: summarize(ms)}: round-robin with a rotating start, so drift on a shared machine
    hits every contender alike and their ratios hold (the levers scripts use it)."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times = {n: [] for n in names}
    for i in range(runs):
        for n in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append((time.perf_counter() - t0) * 1000.0)
    return {n: summarize(t) for n, t in times.items()}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def rss_mb() -> float:
    """Current resident set size (MB), psutil if present, else /proc."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1e6
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (getrusage; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if platform.system() == "Darwin" else peak * 1024 / 1e6


# ------------------------------------------------------------------------------------- machine
def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU model, SIMD flags, cores, load, and the versions of everything that runs a model."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                                     "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_int8", "amx_bf16", "neon", "asimd")
                         if f in have]
    except OSError:
        pass
    try:
        import psutil

        physical, total_mem = psutil.cpu_count(logical=False), psutil.virtual_memory().total / 1e9
    except ImportError:
        physical, total_mem = None, None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu, "arch": platform.machine(), "flags": flags, "logical_cores": os.cpu_count(),
        "physical_cores": physical, "usable_cores": affinity,
        "memory_gb": round(total_mem, 1) if total_mem else None,
        "load_avg": [round(v, 2) for v in load] if load else None,
        "os": platform.platform(), "python": platform.python_version(),
        "versions": {name: _dist_version(name) for name in (
            "noa-edge", "ai-edge-litert", "tflite-runtime", "onnxruntime", "numpy", "opencv-python-headless",
            "tensorflow", "tensorflow-cpu", "keras")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ------------------------------------------------------------------------------------- contenders
@dataclass
class Contender:
    """One (variant, backend, threads): `load()` builds it, `infer(x)` runs one batch-1 inference."""

    variant: str
    backend: str
    threads: int
    model: Path
    load: Callable[[], Callable[[np.ndarray], object]]
    infer: Callable[[np.ndarray], object] | None = None
    info: dict = field(default_factory=dict)
    times_ms: list = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.variant}/{self.backend}/t{self.threads}"


def _tflite_loader(path: Path, variant: str, threads: int, runtime: str) -> Callable:
    def load():
        from .runtime import ModelRunner, RuntimeUnavailable

        try:
            runner = ModelRunner(path, variant=variant, num_threads=threads, runtime=runtime)
        except RuntimeUnavailable as exc:
            raise Unavailable(str(exc)) from None
        return runner.run
    return load


def _litert_options_loader(path: Path, threads: int, backend: str) -> Callable:
    """LiteRT with interpreter options the device runner does not use: `litert-builtin` = built-in kernels
    only (no default XNNPACK delegate), `litert-latest` = XNNPACK with experimental latest features."""
    def load():
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        options = ({"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
                   if backend == "litert-builtin" else {"experimental_default_delegate_latest_features": True})
        interp = Interpreter(model_path=str(path), num_threads=threads, **options)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        outs = [d["index"] for d in interp.get_output_details()]

        def infer(x):
            interp.set_tensor(inp["index"], x[None])
            interp.invoke()
            return [interp.get_tensor(i) for i in outs]
        return infer
    return load


def _onnx_loader(path: Path, threads: int) -> Callable:
    def load():
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        if not any("prob" in o for o in outputs):
            raise Unavailable(f"{path.name}: no output named prob (outputs: {', '.join(outputs)})")

        def infer(x):
            return session.run(outputs, {name: x[None]})
        return infer
    return load


_KERAS_THREADS: list[int] = []


def _keras_loader(path: Path, threads: int) -> Callable:
    def load():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if _KERAS_THREADS and _KERAS_THREADS[0] != threads:
            raise Unavailable(f"TensorFlow fixes its thread pools once per process (already {_KERAS_THREADS[0]}); "
                              f"run keras with --threads {threads} in a separate bench")
        # host-only contender: imported lazily by name, so the device package never pulls TensorFlow in
        tf = importlib.import_module("tensorflow")

        if not _KERAS_THREADS:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TF already initialised by someone else in this process
                pass
            _KERAS_THREADS.append(threads)
        keras = importlib.import_module("keras")

        model = keras.saving.load_model(str(path), compile=False)

        def infer(x):
            return model.predict(x[None], verbose=0)
        return infer
    return load


def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def keras_model_path(bundle_path: Path, manifest: dict, explicit: str | Path | None) -> Path | None:
    """The Keras model the bundle was converted from: --keras-model, else BUNDLE/model.keras, else the
    training run named in the provenance (RUN/model.keras)."""
    candidates = [Path(explicit)] if explicit else [bundle_path / "model.keras"]
    run = (manifest.get("provenance") or {}).get("run")
    if not explicit and run:
        candidates.append(Path(run) / "model.keras")
    return next((p for p in candidates if p.is_file()), None)


def plan_contenders(bundle_path: Path, manifest: dict, variants: list[str], backends: list[str],
                    threads: list[int], keras_model: str | Path | None = None) -> tuple[list[Contender], list[dict]]:
    """Every (variant, backend, threads) asked for: runnable contenders, and skipped ones with reasons."""
    todo, skipped = [], []
    specs = manifest.get("variants", {})

    def skip(variant, backend, reason, t=None):
        entry = {"variant": variant, "backend": backend, "reason": reason}
        if t is not None:
            entry["threads"] = t
        skipped.append(entry)

    backend_missing = {}
    for backend in backends:
        module = {"litert": "ai_edge_litert", "litert-builtin": "ai_edge_litert", "litert-latest": "ai_edge_litert",
                  "tflite-runtime": "tflite_runtime",
                  "onnxruntime": "onnxruntime", "keras": "keras"}[backend]
        if not _module_available(module):
            backend_missing[backend] = f"not installed (python module {module} not found)"
        elif backend == "keras" and not _module_available("tensorflow"):
            backend_missing[backend] = "keras is installed but TensorFlow (its backend here) is not"
    for variant in variants:
        for backend in backends:
            if backend in backend_missing:
                skip(variant, backend, backend_missing[backend])
                continue
            if backend in FP32_ONLY_BACKENDS:
                if variant != "fp32":
                    skip(variant, backend, f"not applicable: {backend} runs {FP32_ONLY_BACKENDS[backend]} only")
                    continue
                if backend == "onnxruntime":
                    spec = specs.get("onnx")
                    path = bundle_path / spec["file"] if spec else None
                    if path is None or not path.is_file():
                        skip(variant, backend, "the bundle has no onnx variant")
                        continue
                    make = lambda t, p=path: _onnx_loader(p, t)  # noqa: E731
                else:
                    path = keras_model_path(bundle_path, manifest, keras_model)
                    if path is None:
                        skip(variant, backend, "no Keras model: pass --keras-model RUN/model.keras (bundles ship "
                                               "TFLite/ONNX only)")
                        continue
                    make = lambda t, p=path: _keras_loader(p, t)  # noqa: E731
            else:
                spec = specs.get(variant)
                if spec is None:
                    skip(variant, backend, f"the bundle has no {variant} variant "
                                           f"(has: {', '.join(sorted(specs)) or 'none'})")
                    continue
                path = bundle_path / spec["file"]
                if not path.name.endswith(".tflite"):
                    skip(variant, backend, f"{path.name} is not a TFLite model")
                    continue
                if backend in EXTRA_BACKENDS:
                    if variant == "edgetpu":
                        skip(variant, backend, "an Edge TPU model needs the edgetpu delegate")
                        continue
                    make = lambda t, p=path, b=backend: _litert_options_loader(p, t, b)  # noqa: E731
                else:
                    runtime = "ai_edge_litert" if backend == "litert" else "tflite_runtime"
                    make = lambda t, p=path, v=variant, r=runtime: _tflite_loader(p, v, t, r)  # noqa: E731
            for t in threads:
                todo.append(Contender(variant, backend, t, path, make(t)))
    return todo, skipped


# ------------------------------------------------------------------------------------- the run
def bench_input(size: int, seed: int = 0) -> np.ndarray:
    """A fixed uint8 (size, size, 3) grayscale-speckle ROI: same pixels for every contender."""
    rng = np.random.default_rng(seed)
    gray = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _progress(total: int, desc: str, quiet: bool):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="inf", disable=quiet, leave=False)
    except ImportError:  # pragma: no cover - tqdm ships with the project
        class _Null:
            def update(self, n=1): ...
            def close(self): ...
        return _Null()


def bench_models(contenders: list[Contender], x: np.ndarray, runs: int, warmup: int, quiet: bool = False
                 ) -> tuple[list[dict], list[dict]]:
    """Load each contender (init, first inference, warm-up), then time `runs` interleaved rounds."""
    ready, skipped = [], []
    for c in contenders:
        rss0 = rss_mb()
        t0 = time.perf_counter()
        try:
            c.infer = c.load()
            c.info["init_ms"] = _ms(t0)
            t0 = time.perf_counter()
            c.infer(x)
            c.info["first_ms"] = _ms(t0)
        except Unavailable as exc:
            skipped.append({"variant": c.variant, "backend": c.backend, "threads": c.threads, "reason": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - a broken contender must not hide the others
            skipped.append({"variant": c.variant, "backend": c.backend, "threads": c.threads,
                            "reason": f"failed to load or run: {type(exc).__name__}: {exc}"})
            continue
        warm = []
        for _ in range(warmup):
            t0 = time.perf_counter()
            c.infer(x)
            warm.append(_ms(t0))
        c.info["warmup_mean_ms"] = float(np.mean(warm)) if warm else None
        c.info["rss_delta_mb"] = rss_mb() - rss0
        c.info["peak_rss_mb"] = peak_rss_mb()
        ready.append(c)
    bar = _progress(runs * len(ready), "bench", quiet)
    n = len(ready)
    for i in range(runs):
        order = ready[i % n:] + ready[:i % n] if n else []
        for c in order:
            t0 = time.perf_counter()
            c.infer(x)
            c.times_ms.append(_ms(t0))
        bar.update(n)
    bar.close()
    results = []
    for c in ready:
        stats = summarize(c.times_ms)
        results.append({"variant": c.variant, "backend": c.backend, "threads": c.threads,
                        "init_ms": c.info["init_ms"], "first_ms": c.info["first_ms"],
                        "warmup_mean_ms": c.info["warmup_mean_ms"], **stats,
                        "peak_rss_mb": c.info["peak_rss_mb"], "rss_delta_mb": c.info["rss_delta_mb"],
                        "runs": len(c.times_ms), "warmup": warmup, "model": c.model.name})
    return results, skipped


# ------------------------------------------------------------------------------------- pipeline
class _CineFrames:
    """Frames of the phantom cine (decoded once, decode time per frame kept), with its frozen ranges."""

    def __init__(self, path: Path | None = None, limit: int = 120):
        import cv2

        from .capture import DEMO_CINE
        from .preprocess import to_rgb_uint8

        self.path = Path(path) if path else DEMO_CINE
        if not self.path.is_file():
            raise BenchError(f"phantom cine not found: {self.path} (pass --cine PATH to a video)")
        cap = cv2.VideoCapture(str(self.path))
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
        self.frames, self.decode_ms = [], []
        while len(self.frames) < limit:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            rgb = to_rgb_uint8(frame)
            self.decode_ms.append(_ms(t0))
            self.frames.append(rgb)
        cap.release()
        if not self.frames:
            raise BenchError(f"{self.path}: no decodable frames")
        sidecar = Path(str(self.path) + ".json")
        frozen = json.loads(sidecar.read_text()).get("frozen", []) if sidecar.is_file() else []
        self.frozen = [self.frames[a] for a, b in frozen if a < len(self.frames)] or [self.frames[len(self.frames) // 2]]


def _make_analyzer(bundle_path: Path, variant: str, threads: int, data_dir: Path):
    from .pipeline import Analyzer
    from .store import ExamStore

    store = ExamStore(data_dir)
    return Analyzer(bundle_path, variant=variant, threads=threads, store=store), store


def _page_renderer(bundle_path: Path, variant: str, threads: int, data_dir: Path):
    """GET /exams/{id} on the real FastAPI app (in-process, no socket), sharing the SQLite store."""
    from fastapi.testclient import TestClient

    from .server import DaemonConfig, create_app

    app = create_app(DaemonConfig(bundle=str(bundle_path), source=None, data_dir=str(data_dir), variant=variant,
                                  threads=threads))
    client = TestClient(app)
    client.__enter__()

    def render(exam_id: int) -> None:
        r = client.get(f"/exams/{exam_id}")
        if r.status_code != 200:
            raise BenchError(f"result page answered {r.status_code}: {r.text[:200]}")
        r = client.get(f"/api/exams/{exam_id}/nomogram.svg")
        r.raise_for_status()
    return render, client


def bench_pipeline(bundle_path: Path, variant: str, threads: int, runs: int, warmup: int,
                   cine: Path | None = None, quiet: bool = False) -> tuple[dict, list[dict]]:
    """Frozen cine frame → image area + ROI → crop → invoke → CAM → nomogram → encode → store (end to end),
    interleaved with a bare invoke of the same ROI each round; decode and page render timed beside it."""
    skipped = []
    frames = _CineFrames(cine)
    with tempfile.TemporaryDirectory(prefix="noa-bench-") as tmp:
        analyzer, store = _make_analyzer(bundle_path, variant, threads, Path(tmp))
        render, client = None, None
        try:
            render, client = _page_renderer(bundle_path, variant, threads, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - the page needs fastapi/httpx; the rest does not
            skipped.append({"stage": "render", "reason": f"{type(exc).__name__}: {exc}"})
        from .preprocess import crop_roi
        from .roi import find_image_area, propose_roi

        rois = []
        for f in frames.frozen:
            roi = propose_roi(f, find_image_area(f))
            rois.append(crop_roi(f, roi, analyzer.input_size))
        stages: dict[str, list[float]] = {s: [] for s in PIPELINE_STAGES}
        stages["decode"] = list(frames.decode_ms)
        total, bare, with_render = [], [], []
        bar = _progress(runs + warmup, "pipeline", quiet)
        try:
            for i in range(warmup + runs):
                k = i % len(frames.frozen)
                t0 = time.perf_counter()
                analyzer.runner.run(rois[k])
                bare_ms = _ms(t0)
                exam = analyzer.analyze(frames.frozen[k], clinical=dict(DEMO_CLINICAL), trigger="freeze",
                                        source="bench")
                render_ms = None
                if render is not None:
                    t0 = time.perf_counter()
                    render(exam["id"])
                    render_ms = _ms(t0)
                bar.update(1)
                if i < warmup:
                    continue
                bare.append(bare_ms)
                timings = exam["timings"]
                for key, name in ANALYZER_STAGE_NAMES.items():
                    if key in timings:
                        stages[name].append(float(timings[key]))
                total.append(float(timings["total"]))
                if render_ms is not None:
                    stages["render"].append(render_ms)
                    with_render.append(float(timings["total"]) + render_ms)
        finally:
            bar.close()
            if client is not None:
                client.__exit__(None, None, None)
            store.close()
    out = {"variant": analyzer.variant, "threads": threads, "runs": len(total),
           "frame_size": list(frames.frozen[0].shape[1::-1]), "input_size": analyzer.input_size,
           "stages": {}, "notes": ["decode: video frame → RGB on the capture thread, not part of end_to_end",
                                   "end_to_end: frozen frame → stored exam (Analyzer.analyze total)",
                                   "render: GET /exams/{id} + nomogram.svg after the result is stored"]}
    for name, vals in stages.items():
        if vals:
            s = summarize(vals)
            out["stages"][name] = {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "mean_ms": s["mean_ms"],
                                   "min_ms": s["min_ms"], "max_ms": s["max_ms"]}
    e2e = summarize(total)
    out["end_to_end"] = {k: e2e[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")}
    if with_render:
        r = summarize(with_render)
        out["end_to_end_with_render"] = {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}
    b = summarize(bare)
    out["invoke_p50_ms"] = b["p50_ms"]
    out["invoke_p99_ms"] = b["p99_ms"]
    out["end_to_end_over_invoke"] = e2e["p50_ms"] / b["p50_ms"]
    return out, skipped


# ------------------------------------------------------------------------------------- sustained
def bench_sustained(bundle_path: Path, variant: str, threads: int, seconds: float, fps: float,
                    cine: Path | None = None, quiet: bool = False) -> dict:
    """Feed the cine at `fps` through the real FrameGrabber + FreezeDetector + Analyzer for `seconds`:
    frames dropped by the feed (capture fell behind), freezes lost (analysis too slow), CPU use,
    latency from the frame that completed a freeze to the stored result, and RSS over time."""
    from .capture import FrameGrabber, FreezeDetector, Source

    if seconds <= 0 or fps <= 0:
        raise BenchError("--sustained SECONDS and --fps N must be positive")
    frames = _CineFrames(cine, limit=10_000)
    delivered_at: dict[int, float] = {}

    class PacedCine(Source):
        """The cine as a live card delivers it: one frame per 1/fps; a frame whose slot has passed is lost."""
        kind, describe = "video", f"bench cine at {fps:g} fps"

        def __init__(self):
            self.t0, self.i, self.dropped, self.delivered = None, 0, 0, 0

        def read(self):
            now = time.monotonic()
            if self.t0 is None:
                self.t0 = now
            due = int((now - self.t0) * fps)
            if due > self.i:          # slots passed while we were busy: those frames never reached us
                self.dropped += due - self.i
                self.i = due
            wait = self.t0 + self.i / fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            frame = frames.frames[self.i % len(frames.frames)]
            self.i += 1
            self.delivered += 1
            frame = frame.copy()  # a new buffer per frame, like a real capture
            delivered_at[id(frame)] = time.monotonic()
            if len(delivered_at) > 4 * len(frames.frames):
                for k in list(delivered_at)[: len(frames.frames)]:
                    delivered_at.pop(k, None)
            return frame

    with tempfile.TemporaryDirectory(prefix="noa-bench-") as tmp:
        analyzer, store = _make_analyzer(bundle_path, variant, threads, Path(tmp))
        latencies, analyses, invoke = [], [], []

        def on_still(frame, trigger, info):
            t_freeze = delivered_at.get(id(frame))
            exam = analyzer.analyze(frame, clinical=dict(DEMO_CLINICAL), trigger=trigger, source="bench")
            if t_freeze is not None:
                latencies.append((time.monotonic() - t_freeze) * 1000.0)
            analyses.append(exam["timings"]["total"])
            invoke.append(exam["timings"]["invoke"])

        try:
            import psutil

            proc = psutil.Process()
        except ImportError:
            proc = None
        source = PacedCine()
        grabber = FrameGrabber(source, on_still=on_still, freeze=FreezeDetector())
        cpu0, wall0 = os.times(), time.monotonic()
        memory = [[0.0, rss_mb()]]
        grabber.start()
        try:
            while time.monotonic() - wall0 < seconds:
                time.sleep(min(0.5, max(0.0, seconds - (time.monotonic() - wall0))))
                memory.append([round(time.monotonic() - wall0, 2), rss_mb()])
        finally:
            grabber.stop()
        cpu1, wall = os.times(), time.monotonic() - wall0
        store.close()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = {"variant": analyzer.variant, "threads": threads, "seconds": round(wall, 2), "fps_requested": fps,
           "frames_delivered": source.delivered, "frames_dropped": source.dropped,
           "fps_achieved": source.delivered / wall if wall else 0.0,
           "freezes_detected": grabber.freezes, "analyses": len(analyses),
           "freezes_lost": max(0, grabber.freezes - len(analyses)),
           "cpu_percent_of_one_core": 100.0 * cpu_s / wall if wall else 0.0,
           "cpu_percent_of_machine": 100.0 * cpu_s / wall / cores if wall else 0.0,
           "rss_mb": {"start": memory[0][1], "end": memory[-1][1], "max": max(m[1] for m in memory)},
           "memory_over_time": [[t, round(m, 1)] for t, m in memory],
           "notes": ["frames_dropped: frame slots that passed while the capture thread was busy",
                     "latency: the frame that completed a freeze → exam stored"]}
    if latencies:
        s = summarize(latencies)
        out["freeze_to_result"] = {k: s[k] for k in ("p50_ms", "p99_ms", "mean_ms", "max_ms")}
    if analyses:
        out["analysis_p50_ms"] = float(np.percentile(analyses, 50))
        out["invoke_p50_ms"] = float(np.percentile(invoke, 50))
    if proc is not None:
        out["threads_in_process"] = proc.num_threads()
    return out


# ------------------------------------------------------------------------------------- report
def run_bench(bundle: str | Path, variants: list[str], backends: list[str], threads: list[int], runs: int,
              warmup: int, pipeline: bool = False, sustained: float | None = None, fps: float = 15.0,
              keras_model: str | Path | None = None, cine: str | Path | None = None, quiet: bool = False) -> dict:
    """The whole bench as one JSON-ready dict: machine, results, pipeline, sustained, skipped."""
    from .bundle import BundleError, load

    if runs < 1 or warmup < 0:
        raise BenchError("--runs must be ≥ 1 and --warmup ≥ 0")
    if not threads or any(t < 1 for t in threads):
        raise BenchError("--threads must list positive integers, e.g. 1,2")
    unknown_v = [v for v in variants if v not in ALL_VARIANTS]
    if unknown_v:
        raise BenchError(f"--variants: unknown {', '.join(unknown_v)}; choose from {', '.join(ALL_VARIANTS)}")
    unknown_b = [b for b in backends if b not in ALL_BACKENDS + EXTRA_BACKENDS]
    if unknown_b:
        raise BenchError(f"--backends: unknown {', '.join(unknown_b)}; choose from "
                         f"{', '.join(ALL_BACKENDS + EXTRA_BACKENDS)}")
    try:
        b = load(bundle)
    except BundleError as exc:
        raise BenchError(str(exc)) from None
    report = {"machine": machine_info(), "bundle": {"name": b.name, "path": str(b.path),
                                                    "input_shape": b.manifest["input"]["shape"],
                                                    "synthetic_demo": b.synthetic_demo},
              "settings": {"variants": variants, "backends": backends, "threads": threads, "runs": runs,
                           "warmup": warmup, "interleaved": True},
              "results": [], "skipped": []}
    contenders, skipped = plan_contenders(b.path, b.manifest, variants, backends, threads, keras_model)
    report["skipped"] += skipped
    # Keras last: importing TensorFlow adds ~1 GB of address space and threads; load it after the others.
    contenders.sort(key=lambda c: c.backend == "keras")
    x = bench_input(b.input_size)
    if contenders:
        results, skipped = bench_models(contenders, x, runs, warmup, quiet)
        report["results"], report["skipped"] = results, report["skipped"] + skipped
    pipe_variant = next((r["variant"] for r in report["results"] if r["backend"] == "litert"), None)
    pipe_variant = pipe_variant or b.choose_variant("cpu")
    if pipeline:
        pipe, skipped = bench_pipeline(b.path, pipe_variant, threads[0], runs, warmup, Path(cine) if cine else None,
                                       quiet)
        report["pipeline"] = pipe
        report["skipped"] += skipped
    if sustained:
        report["sustained"] = bench_sustained(b.path, pipe_variant, threads[0], sustained, fps,
                                              Path(cine) if cine else None, quiet)
    report["summary"] = ratios(report)
    return report


def ratios(report: dict) -> dict:
    """The goal ratios the issue tracks, from this one interleaved run (None where a contender is missing)."""
    def p50(variant, backend):
        hits = [r for r in report.get("results", []) if r["variant"] == variant and r["backend"] == backend]
        return min(hits, key=lambda r: r["p50_ms"]) if hits else None

    out = {}
    lit, onnx, keras_, int8 = p50("fp32", "litert"), p50("fp32", "onnxruntime"), p50("fp32", "keras"), p50("int8", "litert")
    if lit and onnx:
        out["litert_fp32_over_onnxruntime_fp32_p50"] = lit["p50_ms"] / onnx["p50_ms"]
    if lit and keras_:
        out["keras_predict_over_litert_fp32_p50"] = keras_["p50_ms"] / lit["p50_ms"]
    if lit and int8:
        out["litert_int8_over_fp32_p50"] = int8["p50_ms"] / lit["p50_ms"]
    if "pipeline" in report:
        out["pipeline_end_to_end_over_invoke_p50"] = report["pipeline"]["end_to_end_over_invoke"]
    return out


def format_report(report: dict) -> str:
    m = report["machine"]
    v = m["versions"]
    lines = [f"machine   {m['cpu']} ({m['arch']}), {m['usable_cores']} usable / {m['logical_cores']} logical cores, "
             f"{m.get('memory_gb')} GB, load {m.get('load_avg')}",
             f"flags     {' '.join(m['flags']) or '-'}",
             "versions  " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             f"bundle    {report['bundle']['name']} input {report['bundle']['input_shape']}; "
             f"{report['settings']['runs']} interleaved runs after {report['settings']['warmup']} warm-up each", ""]
    if report["results"]:
        head = (f"{'variant':8s} {'backend':14s} {'thr':>3s} {'init':>8s} {'first':>8s} {'warm':>7s} {'mean':>7s} "
                f"{'std':>6s} {'min':>7s} {'p50':>7s} {'p90':>7s} {'p95':>7s} {'p99':>7s} {'max':>7s} {'fps':>6s} "
                f"{'peakMB':>7s} {'dMB':>6s}")
        lines += ["latency, ms (batch 1)", head, "-" * len(head)]
        for r in report["results"]:
            warm = r["warmup_mean_ms"]
            lines.append(
                f"{r['variant']:8s} {r['backend']:14s} {r['threads']:3d} {r['init_ms']:8.1f} {r['first_ms']:8.1f} "
                f"{(warm if warm is not None else float('nan')):7.2f} {r['mean_ms']:7.2f} {r['std_ms']:6.2f} "
                f"{r['min_ms']:7.2f} {r['p50_ms']:7.2f} {r['p90_ms']:7.2f} {r['p95_ms']:7.2f} {r['p99_ms']:7.2f} "
                f"{r['max_ms']:7.2f} {r['fps']:6.1f} {r['peak_rss_mb']:7.0f} {r['rss_delta_mb']:6.1f}")
    pipe = report.get("pipeline")
    if pipe:
        lines += ["", f"pipeline  variant {pipe['variant']}, {pipe['threads']} thread(s), frame "
                      f"{pipe['frame_size'][0]}x{pipe['frame_size'][1]} → ROI {pipe['input_size']} px, {pipe['runs']} runs",
                  f"  {'stage':12s} {'p50 ms':>8s} {'p99 ms':>8s}"]
        for name, s in pipe["stages"].items():
            lines.append(f"  {name:12s} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f}")
        e = pipe["end_to_end"]
        lines.append(f"  {'end to end':12s} {e['p50_ms']:8.2f} {e['p99_ms']:8.2f}   (frozen frame → stored exam)")
        lines.append(f"  {'bare invoke':12s} {pipe['invoke_p50_ms']:8.2f} {pipe['invoke_p99_ms']:8.2f}   "
                     f"end-to-end / invoke p50 = {pipe['end_to_end_over_invoke']:.2f}×")
    sus = report.get("sustained")
    if sus:
        lat = sus.get("freeze_to_result", {})
        lines += ["", f"sustained {sus['seconds']} s at {sus['fps_requested']:g} fps (variant {sus['variant']}): "
                      f"{sus['frames_delivered']} frames, {sus['frames_dropped']} dropped, "
                      f"{sus['freezes_detected']} freezes → {sus['analyses']} analyses ({sus['freezes_lost']} lost)",
                  f"  CPU {sus['cpu_percent_of_one_core']:.0f}% of one core ({sus['cpu_percent_of_machine']:.0f}% of "
                  f"the machine); RSS {sus['rss_mb']['start']:.0f} → {sus['rss_mb']['end']:.0f} MB "
                  f"(max {sus['rss_mb']['max']:.0f})"
                  + (f"; freeze → result p50 {lat['p50_ms']:.0f} ms, max {lat['max_ms']:.0f} ms" if lat else "")]
    if report.get("summary"):
        lines += ["", "ratios (same interleaved run): " + ", ".join(f"{k} {v:.2f}" for k, v in report["summary"].items())]
    if report["skipped"]:
        lines += ["", "skipped:"]
        for s in report["skipped"]:
            what = "/".join(str(s[k]) for k in ("variant", "backend", "threads", "stage") if k in s)
            lines.append(f"  {what}: {s['reason']}")
    return "\n".join(lines)


def compare(new: dict, old: dict) -> str:
    """Ratios new/old for each matching contender and pipeline stage (< 1 = faster now)."""
    lines = [f"compare vs earlier run ({old.get('machine', {}).get('time', '?')}, "
             f"{old.get('machine', {}).get('cpu', '?')}): new/old, < 1 is faster now"]
    index = {(r["variant"], r["backend"], r["threads"]): r for r in old.get("results", [])}
    for r in new.get("results", []):
        o = index.get((r["variant"], r["backend"], r["threads"]))
        if o is None:
            lines.append(f"  {r['variant']}/{r['backend']}/t{r['threads']}: not in the earlier run")
            continue
        lines.append(f"  {r['variant']:6s} {r['backend']:14s} t{r['threads']}: p50 {r['p50_ms'] / o['p50_ms']:.2f}× "
                     f"({o['p50_ms']:.2f} → {r['p50_ms']:.2f} ms), p99 {r['p99_ms'] / o['p99_ms']:.2f}×, "
                     f"mean {r['mean_ms'] / o['mean_ms']:.2f}×")
    np_, op = new.get("pipeline"), old.get("pipeline")
    if np_ and op:
        for name, s in np_["stages"].items():
            if name in op.get("stages", {}) and op["stages"][name]["p50_ms"] > 0:
                lines.append(f"  stage {name:12s} p50 {s['p50_ms'] / op['stages'][name]['p50_ms']:.2f}×")
        lines.append(f"  end to end         p50 {np_['end_to_end']['p50_ms'] / op['end_to_end']['p50_ms']:.2f}×")
    return "\n".join(lines)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(app) -> None:
    import typer

    @app.command("bench")
    def bench_cmd(
        bundle: str = typer.Option("firmware_assets/demo-phantom", help="Firmware bundle directory."),
        variants: str = typer.Option("fp32,fp16,int8,edgetpu", help="Comma list of fp32, fp16, int8, edgetpu."),
        backends: str = typer.Option("litert,tflite-runtime,onnxruntime,keras",
                                     help="Comma list of litert, tflite-runtime, onnxruntime, keras (host only), "
                                          "litert-builtin (LiteRT without XNNPACK), litert-latest (XNNPACK latest "
                                          "features). Missing ones are skipped "
                                          "and listed."),
        threads: str = typer.Option("1,2", help="Comma list of thread counts, e.g. 1,2."),
        runs: int = typer.Option(50, help="Timed inferences per contender (interleaved)."),
        warmup: int = typer.Option(5, help="Warm-up inferences per contender."),
        json_out: Path = typer.Option(None, "--json", help="Write the full report as JSON here."),
        pipeline: bool = typer.Option(False, "--pipeline", help="Also time the full frame-to-result path."),
        sustained: float = typer.Option(None, "--sustained", help="Feed the phantom cine for this many seconds."),
        fps: float = typer.Option(15.0, help="Frame rate of the --sustained feed."),
        compare_to: Path = typer.Option(None, "--compare", help="An earlier --json report to compare against."),
        keras_model: Path = typer.Option(None, help="Keras model for the keras backend (default: BUNDLE/model.keras "
                                                    "or the provenance run's model.keras)."),
        cine: Path = typer.Option(None, help="Video for --pipeline/--sustained (default: the shipped phantom cine)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Latency, throughput and memory per variant × backend × threads (interleaved), the pipeline
        stages, and a sustained live feed; prints a table and optionally writes JSON."""
        from .server import resolve_bundle

        old = None
        if compare_to is not None:
            try:
                old = json.loads(Path(compare_to).read_text())
                if not isinstance(old, dict) or "results" not in old:
                    raise ValueError("no 'results' list")
            except (OSError, ValueError) as exc:
                typer.echo(f"error: --compare {compare_to}: not a bench JSON report ({exc})", err=True)
                raise typer.Exit(2) from None
        try:
            thread_list = [int(t) for t in _split(threads)]
        except ValueError:
            typer.echo(f"error: --threads {threads!r}: expected a comma list of integers, e.g. 1,2", err=True)
            raise typer.Exit(2) from None
        try:
            report = run_bench(resolve_bundle(bundle), _split(variants), _split(backends), thread_list, runs, warmup,
                               pipeline=pipeline, sustained=sustained, fps=fps, keras_model=keras_model, cine=cine,
                               quiet=quiet)
        except BenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(format_report(report))
        if old is not None:
            typer.echo("")
            typer.echo(compare(report, old))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2) + "\n")
            typer.echo(f"\nJSON written to {json_out}")
