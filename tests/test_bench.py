"""`noa-edge bench` on a small real bundle: the JSON report's shape, that its numbers are positive and
consistent, that skipped backends are reported with a reason, and that bad options get a clear error.

Real parts: the LiteRT interpreter on the conftest MobileNetV2 bundle, ONNX Runtime on a small ONNX model
built here with onnx.helper (so the onnxruntime contender is exercised without TensorFlow), the real
pipeline (Analyzer + SQLite store + FastAPI page) and the real capture thread for --sustained.
Nothing here asserts a speed: that is for benchmarks/.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TEST_BUNDLE_SIZE
from edge.bench.stats import compare, summarize

RESULT_KEYS = ("variant", "backend", "threads", "init_ms", "first_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
               "p50_ms", "p90_ms", "p95_ms", "p99_ms", "fps", "peak_rss_mb")


def _onnx_cam_model(path: Path, size: int) -> None:
    """image uint8 (N,S,S,3) -> prob (N,1), cam (N,h,w): cast, 4×4 average pool, channel mean, sigmoid."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    h = size // 4
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["xt"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("ReduceMean", ["pooled", "axis1"], ["cam_raw"], keepdims=0),
        helper.make_node("Mul", ["cam_raw", "scale"], ["cam"]),
        helper.make_node("ReduceMean", ["cam", "axes12"], ["logit"], keepdims=0),
        helper.make_node("Unsqueeze", ["logit", "axis1"], ["logit2"]),
        helper.make_node("Sigmoid", ["logit2"], ["prob"]),
    ]
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255.0])]
    graph = helper.make_graph(
        nodes, "cam", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", h, h]),
         helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def bench_bundle(test_bundle, tmp_path_factory) -> Path:
    """The conftest bundle (fp32 TFLite) plus an ONNX variant, re-sealed with the bundle writer."""
    from edge.bundle import finalize_manifest

    out = tmp_path_factory.mktemp("bench") / "bundle"
    shutil.copytree(test_bundle, out)
    _onnx_cam_model(out / "model.onnx", TEST_BUNDLE_SIZE)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["variants"]["onnx"] = {"file": "model.onnx", "target": "jetson", "dtype": "float32",
                                    "input": {"dtype": "uint8", "scale": 1.0, "zero_point": 0}}
    finalize_manifest(out, manifest)
    return out


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "bench", "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(bench_bundle, tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench-json") / "bench.json"
    proc = run_cli("--bundle", str(bench_bundle), "--variants", "fp32,int8,edgetpu",
                   "--backends", "litert,tflite-runtime,onnxruntime,keras", "--threads", "1,2",
                   "--runs", "6", "--warmup", "2", "--pipeline", "--sustained", "3", "--fps", "15",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_results_schema_and_consistency(report):
    data, _ = report
    assert {"machine", "results", "skipped", "pipeline"} <= set(data)
    assert data["machine"]["cpu"] and data["machine"]["logical_cores"] >= 1
    assert data["machine"]["versions"]["ai-edge-litert"]
    pairs = {(r["backend"], r["variant"], r["threads"]) for r in data["results"]}
    assert pairs == {("litert", "fp32", 1), ("litert", "fp32", 2), ("onnxruntime", "fp32", 1),
                     ("onnxruntime", "fp32", 2)}, pairs
    for r in data["results"]:
        for key in RESULT_KEYS[3:]:
            assert _positive(r[key]), (r["backend"], key, r[key])
        assert r["min_ms"] <= r["mean_ms"] <= r["max_ms"]
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["runs"] == 6
        assert r["fps"] == pytest.approx(1000.0 / r["mean_ms"])
        assert r["std_ms"] >= 0
    ratio = data["summary"]["litert_fp32_over_onnxruntime_fp32_p50"]
    assert _positive(ratio)


def test_skipped_backends_are_listed_with_reasons(report):
    data, stdout = report
    skipped = {(s["variant"], s["backend"]): s["reason"] for s in data["skipped"]}
    ran = {(r["variant"], r["backend"]) for r in data["results"]}
    for variant in ("fp32", "int8", "edgetpu"):
        for backend in ("litert", "tflite-runtime", "onnxruntime", "keras"):
            assert (variant, backend) in ran or (variant, backend) in skipped, (variant, backend)
    assert "no int8 variant" in skipped[("int8", "litert")]
    assert "no edgetpu variant" in skipped[("edgetpu", "litert")]
    assert "Keras model" in skipped[("fp32", "keras")]            # the bundle ships no model.keras
    assert "not applicable" in skipped[("int8", "onnxruntime")]
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        assert "not installed" in skipped[("fp32", "tflite-runtime")]
    assert "skipped:" in stdout and "not installed" in stdout or ("fp32", "tflite-runtime") in ran


def test_pipeline_stages_and_end_to_end(report):
    pipe = report[0]["pipeline"]
    for stage in ("decode", "image_area", "roi", "preprocess", "invoke", "cam", "nomogram", "store", "render"):
        s = pipe["stages"][stage]
        assert _positive(s["p50_ms"]) and s["p50_ms"] <= s["p99_ms"], (stage, s)
    e2e = pipe["end_to_end"]
    assert _positive(e2e["p50_ms"]) and e2e["p50_ms"] <= e2e["p99_ms"]
    # every end-to-end run contains one invoke, CAM and store, so it is never shorter than the fastest of them
    for stage in ("invoke", "cam", "store"):
        assert e2e["min_ms"] >= pipe["stages"][stage]["min_ms"], stage
    assert _positive(pipe["invoke_p50_ms"])
    assert pipe["end_to_end_over_invoke"] == pytest.approx(e2e["p50_ms"] / pipe["invoke_p50_ms"])


def test_sustained_feed(report):
    sus = report[0]["sustained"]
    assert sus["frames_delivered"] > 0 and sus["frames_dropped"] >= 0
    assert sus["frames_delivered"] + sus["frames_dropped"] <= 15 * sus["seconds"] + 2
    assert sus["cpu_percent_of_one_core"] > 0
    assert len(sus["memory_over_time"]) >= 2 and all(m > 0 for _, m in sus["memory_over_time"])
    # the shipped cine freezes at frame 27 (1.8 s); 8 still frames later the detector fires and the exam is stored
    assert sus["freezes_detected"] >= 1 and sus["analyses"] >= 1
    assert sus["freeze_to_result"]["p50_ms"] > 0


def test_compare_prints_ratios(report, tmp_path, bench_bundle):
    data, _ = report
    text = compare(data, data)
    assert "p50 1.00×" in text and "end to end" in text
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    proc = run_cli("--bundle", str(bench_bundle), "--variants", "fp32", "--backends",
                   "litert,litert-builtin,litert-latest", "--threads", "1", "--runs", "3", "--warmup", "1",
                   "--compare", str(old))
    assert proc.returncode == 0, proc.stderr
    assert "compare vs earlier run" in proc.stdout and "fp32   litert         t1: p50" in proc.stdout
    # the interpreter-option levers ran too, and are reported as new rather than silently compared
    assert "fp32/litert-builtin/t1: not in the earlier run" in proc.stdout
    assert "fp32/litert-latest/t1: not in the earlier run" in proc.stdout


def test_summarize_matches_numpy():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s["min_ms"], s["max_ms"], s["mean_ms"], s["p50_ms"]) == (1.0, 4.0, 2.5, 2.5)
    assert s["std_ms"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["p99_ms"] == pytest.approx(np.percentile([1, 2, 3, 4], 99))
    assert s["fps"] == pytest.approx(400.0)


@pytest.mark.parametrize("args, words", [
    (["--variants", "fp64"], "unknown fp64"),
    (["--backends", "tensorrt"], "unknown tensorrt"),
    (["--threads", "two"], "comma list of integers"),
    (["--threads", "0"], "positive integers"),
    (["--runs", "0"], "--runs must be"),
    (["--compare", "/nonexistent/old.json"], "not a bench JSON report"),
])
def test_bad_options_are_refused_clearly(bench_bundle, args, words):
    proc = run_cli("--bundle", str(bench_bundle), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_missing_or_tampered_bundle_is_refused(bench_bundle, tmp_path):
    proc = run_cli("--bundle", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "not a folder" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad"
    shutil.copytree(bench_bundle, bad)
    with open(bad / "model.onnx", "ab") as fh:
        fh.write(b"x")
    proc = run_cli("--bundle", str(bad), "--backends", "onnxruntime")
    assert proc.returncode == 2 and "model.onnx" in proc.stderr and "Traceback" not in proc.stderr
