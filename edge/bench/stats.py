"""The numbers the bench reports, and the arithmetic on them.

One summary shape (the statistics TFLite's benchmark_model prints) for every latency, so contenders,
pipeline stages and earlier runs compare field by field. Timing is interleaved (A B C A B C …, the
starting contender rotating every round): a burst of load from another process on a shared machine then
hits every contender alike, and the ratios between them hold even when the absolute numbers drift.

Nothing here loads a model or reads a bundle, so the levers scripts in benchmarks/ use it on their own.
"""

from __future__ import annotations

import platform
import resource
import time

import numpy as np
import psutil
from tqdm import tqdm

from ..errors import EdgeError

PERCENTILES = (50, 90, 95, 99)


class BenchError(EdgeError, ValueError):
    """A bench option or input that cannot work; the message says which and why."""


def ms_since(t0: float) -> float:
    """Milliseconds since `t0` (a time.perf_counter() reading)."""
    return (time.perf_counter() - t0) * 1000.0


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
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        for n in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append(ms_since(t0))
    return {n: summarize(t) for n, t in times.items()}


def rss_mb() -> float:
    """Current resident set size (MB)."""
    return psutil.Process().memory_info().rss / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (getrusage; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if platform.system() == "Darwin" else peak * 1024 / 1e6


def progress(total: int, desc: str, quiet: bool) -> tqdm:
    """A transient progress bar over `total` inferences (none with --quiet)."""
    return tqdm(total=total, desc=desc, unit="inf", disable=quiet, leave=False)


def ratios(report: dict) -> dict:
    """The goal ratios the issue tracks, from this one interleaved run (None where a contender is missing)."""
    def p50(variant, backend):
        hits = [r for r in report.get("results", []) if r["variant"] == variant and r["backend"] == backend]
        return min(hits, key=lambda r: r["p50_ms"]) if hits else None

    out = {}
    lit, onnx = p50("fp32", "litert"), p50("fp32", "onnxruntime")
    keras_, int8 = p50("fp32", "keras"), p50("int8", "litert")
    if lit and onnx:
        out["litert_fp32_over_onnxruntime_fp32_p50"] = lit["p50_ms"] / onnx["p50_ms"]
    if lit and keras_:
        out["keras_predict_over_litert_fp32_p50"] = keras_["p50_ms"] / lit["p50_ms"]
    if lit and int8:
        out["litert_int8_over_fp32_p50"] = int8["p50_ms"] / lit["p50_ms"]
    if "pipeline" in report:
        out["pipeline_end_to_end_over_invoke_p50"] = report["pipeline"]["end_to_end_over_invoke"]
    return out


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
