"""The contenders: every (variant, backend, threads) the bench times, how each one loads and runs, and
the interleaved timing loop over them.

Every contender gets the same input, its own warm-up, and the statistics TFLite's benchmark_model prints
(init, first inference, warm-up mean, mean/std/min/max, p50/p90/p95/p99, throughput). A backend that is not
installed, or a variant the bundle lacks, is returned under "skipped" with the reason, never silently absent.

Optional backends (onnxruntime, through the device's edge.runtime_onnx; keras → TensorFlow, host only) are
imported lazily inside their loader, only when asked for, so `import edge.bench` stays light and
TensorFlow-free (tests/test_layering.py); LiteRT's interpreter options are imported there too, since a
Coral/Jetson image may have tflite_runtime only.

Memory: `rss_delta_mb` is the resident-memory growth caused by loading that contender and running its
first inference; `peak_rss_mb` is the process's peak (getrusage) at that moment, so in a run with many
contenders it accumulates. For a clean per-variant figure run one contender per process
(benchmarks/cold_start.py does).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import Manifest
from ..errors import EdgeError
from ..runtime import ModelError, ModelRunner, RuntimeUnavailable
from ..runtime_onnx import OnnxRunner
from .stats import ms_since, peak_rss_mb, progress, rss_mb, summarize

ALL_VARIANTS = ("fp32", "fp16", "int8", "edgetpu")
ALL_BACKENDS = ("litert", "tflite-runtime", "onnxruntime", "keras")
# levers, for comparison: LiteRT without its default XNNPACK delegate, and XNNPACK with its latest features
EXTRA_BACKENDS = ("litert-builtin", "litert-latest")
# backends that run the bundle's fp32 reference model (ONNX or Keras), not its TFLite variants
FP32_ONLY_BACKENDS = {"onnxruntime": "the bundle's ONNX model (fp32)", "keras": "the Keras model (fp32)"}


class Unavailable(EdgeError):
    """This contender cannot run here (backend not installed, variant absent, no Edge TPU)."""

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
    """ONNX Runtime through the device's own runner (edge.runtime_onnx: best execution provider, outputs by name)."""
    def load():
        try:
            runner = OnnxRunner(path, num_threads=threads)
        except RuntimeUnavailable as exc:
            raise Unavailable(str(exc)) from None
        except ModelError as exc:
            raise Unavailable(str(exc)) from None
        return runner.run
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
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def keras_model_path(bundle_path: Path, manifest: Manifest, explicit: str | Path | None) -> Path | None:
    """The Keras model the bundle was converted from: --keras-model, else BUNDLE/model.keras, else the
    training run named in the provenance (RUN/model.keras)."""
    candidates = [Path(explicit)] if explicit else [bundle_path / "model.keras"]
    run = (manifest.get("provenance") or {}).get("run")
    if not explicit and run:
        candidates.append(Path(run) / "model.keras")
    return next((p for p in candidates if p.is_file()), None)


def plan_contenders(bundle_path: Path, manifest: Manifest, variants: list[str], backends: list[str],
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
    make: Callable[[int], Callable]  # threads -> the contender's load()
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
                    make = functools.partial(_onnx_loader, path)
                else:
                    path = keras_model_path(bundle_path, manifest, keras_model)
                    if path is None:
                        skip(variant, backend, "no Keras model: pass --keras-model RUN/model.keras (bundles ship "
                                               "TFLite/ONNX only)")
                        continue
                    make = functools.partial(_keras_loader, path)
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
                    make = functools.partial(_litert_options_loader, path, backend=backend)
                else:
                    runtime = "ai_edge_litert" if backend == "litert" else "tflite_runtime"
                    make = functools.partial(_tflite_loader, path, variant, runtime=runtime)
            for t in threads:
                todo.append(Contender(variant, backend, t, path, make(t)))
    return todo, skipped


def bench_input(size: int, seed: int = 0) -> np.ndarray:
    """A fixed uint8 (size, size, 3) grayscale-speckle ROI: same pixels for every contender."""
    rng = np.random.default_rng(seed)
    gray = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def bench_models(contenders: list[Contender], x: np.ndarray, runs: int, warmup: int, quiet: bool = False
                 ) -> tuple[list[dict], list[dict]]:
    """Load each contender (init, first inference, warm-up), then time `runs` interleaved rounds."""
    ready, skipped = [], []
    for c in contenders:
        rss0 = rss_mb()
        t0 = time.perf_counter()
        try:
            c.infer = c.load()
            c.info["init_ms"] = ms_since(t0)
            t0 = time.perf_counter()
            c.infer(x)
            c.info["first_ms"] = ms_since(t0)
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
            warm.append(ms_since(t0))
        c.info["warmup_mean_ms"] = float(np.mean(warm)) if warm else None
        c.info["rss_delta_mb"] = rss_mb() - rss0
        c.info["peak_rss_mb"] = peak_rss_mb()
        ready.append(c)
    bar = progress(runs * len(ready), "bench", quiet)
    n = len(ready)
    for i in range(runs):
        order = ready[i % n:] + ready[:i % n] if n else []
        for c in order:
            assert c.infer is not None  # loaded above: `ready` holds only contenders that ran once
            t0 = time.perf_counter()
            c.infer(x)
            c.times_ms.append(ms_since(t0))
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
