"""`noa-edge bench`: latency and memory of every variant × backend × thread count, the whole
frame-to-result pipeline, and a sustained live feed — the numbers engineers pick hardware by.

Trustworthy on a noisy, shared machine: contenders are interleaved with a rotating start, each gets the
same input and its own warm-up, and whatever cannot run is listed under "skipped" with the reason.

    stats       summaries, interleaved timing, memory readings, ratios, compare with an earlier run
    contenders  the runtimes/backends timed, how each loads (host-only ones lazily), the timing loop
    pipeline    frame → stored result stage by stage, and the sustained live feed
    report      run_bench (the JSON-ready report), machine_info, the printed table, the JSON file
    cli         register(app): the `bench` command

The names below are re-exported so `from edge.bench import …` keeps working for the levers scripts.
"""

from __future__ import annotations

from .cli import register
from .contenders import (
    ALL_BACKENDS,
    ALL_VARIANTS,
    EXTRA_BACKENDS,
    FP32_ONLY_BACKENDS,
    Contender,
    Unavailable,
    bench_input,
    bench_models,
    keras_model_path,
    plan_contenders,
)
from .pipeline import ANALYZER_STAGE_NAMES, DEMO_CLINICAL, PIPELINE_STAGES, _CineFrames, bench_pipeline, bench_sustained
from .report import format_report, machine_info, run_bench, write_json
from .stats import PERCENTILES, BenchError, compare, interleave, peak_rss_mb, ratios, rss_mb, summarize

__all__ = ["ALL_BACKENDS", "ALL_VARIANTS", "ANALYZER_STAGE_NAMES", "DEMO_CLINICAL", "EXTRA_BACKENDS",
           "FP32_ONLY_BACKENDS", "PERCENTILES", "PIPELINE_STAGES", "BenchError", "Contender", "Unavailable",
           "_CineFrames", "bench_input", "bench_models", "bench_pipeline", "bench_sustained", "compare",
           "format_report", "interleave", "keras_model_path", "machine_info", "peak_rss_mb", "plan_contenders",
           "ratios", "register", "rss_mb", "run_bench", "summarize", "write_json"]
