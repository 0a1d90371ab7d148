"""`--runtime auto`: at start, run the fastest runtime that is installed AND whose variant meets the bundle's
fidelity targets, chosen by a short timed probe, not by belief (on this x86 CPU ONNX Runtime ran the demo
model faster than LiteRT; on a Pi or a Coral the order differs).

Candidates (one per runtime): litert and tflite-runtime on the bundle's cpu variant (or --variant), edgetpu
on the edgetpu variant (only when libedgetpu loads), onnxruntime on the onnx variant. A candidate is skipped,
with the reason kept, when its runtime is not installed, the bundle lacks its variant, or the variant misses
its fidelity targets (fidelity.json: every check under variants.<v>.targets must be ok; fp32 is the
reference; a float32 variant without targets must agree with the reference within FLOAT_MAX_DPROB).
Each remaining one is loaded, warmed once and timed `runs` times on the same fixed ROI, interleaved with the
others; the lowest median wins (ties: the order of RUNTIME_ORDER). The report (choice, medians, skips) goes to
the log and /api/health; `noa-edge bench --select` writes the choice into the device config.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle, BundleError
from .errors import EdgeError
from .runtime import (
    RUNTIME_ALIASES,
    RUNTIME_CHOICES,
    ModelError,
    ModelRunner,
    RuntimeUnavailable,
    edgetpu_library,
    normalize_runtime,
)
from .runtime_onnx import OnnxRunner

log = logging.getLogger("noa_edge.runtime")

RUNTIME_ORDER = ("edgetpu", "litert", "onnxruntime", "tflite-runtime")  # tie-break only
MODULES = {"litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime", "onnxruntime": "onnxruntime",
           "edgetpu": None}
FLOAT_MAX_DPROB = 1e-3  # a float32 re-export (ONNX) of the fp32 model: the limit fp16 has (fidelity.TARGETS)
PROBE_RUNS = 5


class SelectionError(EdgeError, RuntimeError):
    """No runtime can run this bundle here (every candidate skipped); the message lists why each was."""


@dataclass
class Selection:
    """The runner to use and why: what /api/health shows under `runtime_selection`."""

    runner: ModelRunner | OnnxRunner
    runtime: str
    variant: str
    requested: str
    probe_ms: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    runs: int = 0
    reason: str = ""

    def report(self) -> dict:
        return {"requested": self.requested, "chosen": self.runtime, "variant": self.variant,
                "probe_median_ms": {k: round(v, 3) for k, v in self.probe_ms.items()}, "probe_runs": self.runs,
                "skipped": dict(self.skipped), "reason": self.reason}


def _installed(runtime: str) -> bool:
    module = MODULES[runtime]
    if module is None:  # edgetpu: a TFLite interpreter plus the libedgetpu delegate
        return _installed("litert") or _installed("tflite-runtime")
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _edgetpu_present() -> bool:
    try:
        ctypes.CDLL(edgetpu_library())
        return True
    except OSError:
        return False


def fidelity_problem(bundle: Bundle, variant: str) -> str | None:
    """None when `variant` meets the bundle's fidelity targets, else why not (one line)."""
    if variant == "fp32":
        return None  # the reference every other variant is measured against
    fidelity = bundle.fidelity() or {}
    records = fidelity.get("variants") or {}
    key = variant if variant in records or variant != "edgetpu" else "int8"  # edgetpu is compiled from int8
    entry = records.get(key)
    if not isinstance(entry, dict):
        return f"fidelity.json has no measurement of the {variant} variant"
    checks = entry.get("targets") or {}
    if not checks:
        dtype = (bundle.variants.get(variant) or {}).get("dtype")
        value = entry.get("max_abs_dprob")
        if dtype == "float32" and isinstance(value, (int, float)):
            checks = {"max_abs_dprob": {"value": value, "limit": FLOAT_MAX_DPROB, "ok": value <= FLOAT_MAX_DPROB}}
        else:
            return f"fidelity.json sets no target for the {variant} variant"
    failed = [f"{k} {c.get('value')!r} vs limit {c.get('limit')!r}" for k, c in checks.items()
              if not (isinstance(c, dict) and c.get("ok") is True)]
    return f"{variant} misses its fidelity targets ({'; '.join(failed)})" if failed else None


def candidates(bundle: Bundle, variant: str = "auto", runtimes=RUNTIME_ORDER) -> tuple[list[tuple[str, str]],
                                                                                        dict[str, str]]:
    """[(runtime, variant)] worth probing, and {runtime: why skipped}."""
    todo, skipped = [], {}
    cpu_variant = bundle.choose_variant("cpu", None if variant == "auto" else variant)
    for runtime in runtimes:
        if not _installed(runtime):
            skipped[runtime] = f"not installed (python module {MODULES[runtime] or 'ai_edge_litert/tflite_runtime'})"
            continue
        if runtime == "onnxruntime":
            wanted = "onnx"
        elif runtime == "edgetpu":
            wanted = "edgetpu"
        else:
            wanted = cpu_variant
        if variant not in ("auto", wanted):
            skipped[runtime] = f"runs the {wanted} variant, not --variant {variant}"
            continue
        if wanted not in bundle.variants:
            skipped[runtime] = f"the bundle has no {wanted} variant"
            continue
        if runtime == "edgetpu" and not _edgetpu_present():
            skipped[runtime] = f"no Edge TPU delegate ({edgetpu_library()} does not load)"
            continue
        problem = fidelity_problem(bundle, wanted)
        if problem:
            skipped[runtime] = problem
            continue
        todo.append((runtime, wanted))
    return todo, skipped


def decide(probe_ms: dict[str, float]) -> str:
    """The runtime with the lowest probe median (ties: RUNTIME_ORDER)."""
    if not probe_ms:
        raise SelectionError("no runtime was probed")
    rank = {r: i for i, r in enumerate(RUNTIME_ORDER)}
    return min(probe_ms, key=lambda r: (probe_ms[r], rank.get(r, len(rank))))


def probe_input(size: int) -> np.ndarray:
    """A fixed speckle ROI (the same for every candidate)."""
    gray = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def probe(runners: dict, x: np.ndarray, runs: int = PROBE_RUNS) -> dict[str, float]:
    """Median ms of `runs` warm inferences per runner, interleaved (one run of each in turn, the first one
    rotating), after one warm-up each: a burst of load on a shared CPU then hits every candidate alike."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        runners[n].run(x)
    for i in range(runs):
        for n in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            runners[n].run(x)
            times[n].append((time.perf_counter() - t0) * 1000.0)
    return {n: float(statistics.median(t)) for n, t in times.items()}


def select(bundle: Bundle, runtime: str = "auto", variant: str = "auto", threads: int | None = None,
           runs: int = PROBE_RUNS, force_probe: bool = False) -> Selection:
    """The runner for `--runtime` (a named one loads directly; `auto` probes the candidates, unless only one
    is left and not `force_probe`). $NOA_EDGE_RUNTIME names the runtime for `auto` (as it always did)."""
    runtime = normalize_runtime(runtime)
    env = os.environ.get("NOA_EDGE_RUNTIME", "")
    if runtime == "auto" and (env in RUNTIME_CHOICES or env in RUNTIME_ALIASES):
        runtime = normalize_runtime(env)
    if runtime != "auto":
        runner = bundle.runner(variant=None if variant == "auto" else variant, num_threads=threads, runtime=runtime)
        return Selection(runner, runtime, runner.variant, runtime, reason=f"--runtime {runtime}")
    todo, skipped = candidates(bundle, variant)
    if len(todo) == 1 and not force_probe:  # nothing to compare: no probe, no start-up cost
        name, var = todo[0]
        runner = bundle.runner(variant=var, num_threads=threads, runtime=name)
        sel = Selection(runner, name, var, "auto", skipped=skipped,
                        reason="the only installed runtime whose variant meets the fidelity targets")
        _log(sel)
        return sel
    x = probe_input(bundle.input_size)
    loaded = {}
    for name, var in todo:
        try:
            runner = bundle.runner(variant=var, num_threads=threads, runtime=name)
            runner.run(x)
            loaded[name] = runner
        except (RuntimeUnavailable, ModelError, BundleError, OSError, RuntimeError, ValueError) as exc:
            skipped[name] = f"failed to load or run: {exc}"
    medians = probe(loaded, x, runs) if loaded else {}
    if not medians:
        raise SelectionError("no runtime can run bundle " + bundle.name + ": " +
                             "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    chosen = decide(medians)
    sel = Selection(loaded[chosen], chosen, loaded[chosen].variant, "auto", medians, skipped, runs,
                    f"lowest median of {runs} interleaved warm runs among installed runtimes whose variant meets the "
                    "fidelity targets")
    _log(sel)
    return sel


def _log(sel: Selection) -> None:
    probes = ", ".join(f"{k} {v:.1f} ms" for k, v in sel.probe_ms.items()) or "no probe"
    skips = "; ".join(f"{k}: {v}" for k, v in sel.skipped.items()) or "none"
    log.info("runtime auto -> %s (%s variant): %s [%s]; skipped: %s", sel.runtime, sel.variant, sel.reason,
             probes, skips)


__all__ = ["RUNTIME_CHOICES", "Selection", "SelectionError", "candidates", "decide", "fidelity_problem", "probe",
           "select"]
