"""The bench report: one JSON-ready dict per run (machine, settings, results, pipeline, sustained, skipped,
ratios), the table printed from it, and the JSON file written from it.

Every report carries the machine it ran on (CPU, SIMD flags, cores, load, runtime versions), because a
latency means nothing without it and `--compare` sets runs from different days side by side.
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

from ..bundle import BundleError
from ..bundle import load as load_bundle
from .contenders import ALL_BACKENDS, ALL_VARIANTS, EXTRA_BACKENDS, bench_input, bench_models, plan_contenders
from .pipeline import bench_pipeline, bench_sustained
from .stats import BenchError, ratios


def _dist_version(name: str) -> str | None:
    """The installed version of a distribution, None where it is absent (never guessed from imports)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU model, SIMD flags, cores, load, and the versions of everything that runs a model."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
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
    physical, total_mem = psutil.cpu_count(logical=False), psutil.virtual_memory().total / 1e9
    affinity: int | None
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


def run_bench(bundle: str | Path, variants: list[str], backends: list[str], threads: list[int], runs: int,
              warmup: int, pipeline: bool = False, sustained: float | None = None, fps: float = 15.0,
              keras_model: str | Path | None = None, cine: str | Path | None = None, quiet: bool = False) -> dict:
    """The whole bench as one JSON-ready dict: machine, results, pipeline, sustained, skipped."""
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
        b = load_bundle(bundle)
    except BundleError as exc:
        raise BenchError(str(exc)) from None
    report: dict[str, Any] = {"machine": machine_info(), "bundle": {"name": b.name, "path": str(b.path),
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


def format_report(report: dict) -> str:
    """The human table: machine, per-contender latency, pipeline stages, sustained feed, ratios, skipped."""
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
                      f"{pipe['frame_size'][0]}x{pipe['frame_size'][1]} → ROI {pipe['input_size']} px, "
                      f"{pipe['runs']} runs",
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
        lines += ["", "ratios (same interleaved run): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in report["summary"].items())]
    if report["skipped"]:
        lines += ["", "skipped:"]
        for s in report["skipped"]:
            what = "/".join(str(s[k]) for k in ("variant", "backend", "threads", "stage") if k in s)
            lines.append(f"  {what}: {s['reason']}")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    """The whole report, indented, for --compare and benchmarks/results/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
