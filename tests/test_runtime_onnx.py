"""ONNX Runtime on the device and `--runtime auto` (edge/runtime_onnx.py, edge/runtime_select.py), for real:
the ONNX variant is made by the real host tool (`noa-edge bundle-onnx`, tf2onnx in a subprocess) from the test
bundle's fp32 TFLite, run by real ONNX Runtime and compared with real LiteRT; the daemon serves with
`--runtime onnxruntime`; the auto probe times both. The decision logic is also checked on given numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tomllib

from conftest import ROOT, DaemonProcess, cine_rgb
from edge.bundle import Bundle, load, verify
from edge.runtime import ModelRunner, normalize_runtime
from edge.runtime_onnx import PROVIDER_ORDER, OnnxRunner, choose_providers
from edge.runtime_select import FLOAT_MAX_DPROB, SelectionError, candidates, decide, fidelity_problem, select

ONNX_LIMIT = 1e-3  # converters.bundle_onnx.ONNX_MAX_DPROB: the fidelity target the variant is written under


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def onnx_bundle(test_bundle, tmp_path_factory) -> Path:
    """A copy of the test bundle with an ONNX variant added by `noa-edge bundle-onnx`."""
    out = tmp_path_factory.mktemp("onnx") / "bundle"
    shutil.copytree(test_bundle, out)
    proc = _cli("bundle-onnx", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model.onnx added" in proc.stdout
    return out


def _rois(size: int, n: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_bundle_onnx_records_a_verified_variant_with_its_fidelity(onnx_bundle):
    assert verify(onnx_bundle) == []
    bundle = load(onnx_bundle)
    spec = bundle.variants["onnx"]
    assert spec["file"] == "model.onnx" and spec["input"] == {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
    assert set(spec["outputs"]) >= {"prob", "cam"}
    fid = bundle.fidelity()["variants"]["onnx"]
    assert fid["targets"]["max_abs_dprob"]["ok"] is True and fid["max_abs_dprob"] <= ONNX_LIMIT
    assert fidelity_problem(bundle, "onnx") is None
    added_by = bundle.manifest["provenance"]["onnx"]  # which code added the variant
    assert added_by["tool"] == "noa-edge bundle-onnx" and added_by["code_version"].startswith("noa-edge ")


def test_onnx_runtime_equals_tflite_fp32_within_the_target(onnx_bundle):
    bundle = load(onnx_bundle)
    ort = bundle.runner(runtime="onnxruntime")
    lite = bundle.runner(runtime="litert")
    assert isinstance(ort, OnnxRunner) and ort.variant == "onnx" and isinstance(lite, ModelRunner)
    assert ort.input_shape == lite.input_shape and ort.cam_shape == lite.cam_shape
    assert ort.info()["runtime"] == "onnxruntime" and ort.info()["providers"][0] == "CPUExecutionProvider"
    for roi in _rois(bundle.input_size):
        p_ort, cam_ort = ort.run(roi)
        p_lite, cam_lite = lite.run(roi)
        assert abs(p_ort - p_lite) <= ONNX_LIMIT
        np.testing.assert_allclose(cam_ort, cam_lite, atol=1e-3, rtol=1e-3)
        outs = ort.run_all(roi)  # every output by name, as ModelRunner.run_all
        assert set(outs) == set(lite.run_all(roi)) and abs(float(outs["prob"].reshape(-1)[0]) - p_ort) < 1e-7
    with pytest.raises(ValueError, match="ROI must be uint8"):
        ort.run(_rois(bundle.input_size)[0].astype(np.float32))


def test_runtime_names_and_mismatched_variant_are_clear(onnx_bundle):
    assert normalize_runtime("ai_edge_litert") == "litert" and normalize_runtime("tflite_runtime") == "tflite-runtime"
    with pytest.raises(ValueError, match="choose one of auto, litert, tflite-runtime, onnxruntime, edgetpu"):
        normalize_runtime("tensorrt")
    with pytest.raises(ValueError, match="runs the bundle's onnx variant"):
        load(onnx_bundle).runner(variant="fp32", runtime="onnxruntime")


def test_provider_order_is_tensorrt_then_cuda_then_cpu():
    assert PROVIDER_ORDER[0] == "TensorrtExecutionProvider"
    every = ["CPUExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers(every) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == ["CUDAExecutionProvider",
                                                                                  "CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


# --------------------------------------------------------------------------------------------- auto
def test_decision_picks_the_fastest_measured_runtime():
    assert decide({"litert": 80.0, "onnxruntime": 60.0}) == "onnxruntime"
    assert decide({"litert": 50.0, "onnxruntime": 60.0, "tflite-runtime": 55.0}) == "litert"
    assert decide({"onnxruntime": 40.0, "litert": 40.0}) == "litert"  # a tie: the documented order
    with pytest.raises(SelectionError):
        decide({})


def _fake_bundle(tmp_path: Path, onnx_fidelity: dict | None) -> Bundle:
    """A Bundle object (not verified: only candidates() reads it) with fp32 + onnx variants and a fidelity.json."""
    if onnx_fidelity is not None:
        (tmp_path / "fidelity.json").write_text(json.dumps({"variants": {"onnx": onnx_fidelity}}))
    manifest = {"name": "fake", "input": {"shape": [1, 8, 8, 3]}, "default_variant": {"cpu": "fp32"},
                "variants": {"fp32": {"file": "m.tflite", "dtype": "float32"},
                             "onnx": {"file": "model.onnx", "dtype": "float32"},
                             "fp16": {"file": "h.tflite", "dtype": "float16"}}}
    return Bundle(tmp_path, manifest)  # type: ignore[arg-type]


def test_auto_skips_a_variant_that_misses_its_fidelity_target(tmp_path):
    bad = {"max_abs_dprob": 0.02, "targets": {"max_abs_dprob": {"value": 0.02, "limit": 1e-3, "ok": False}}}
    todo, skipped = candidates(_fake_bundle(tmp_path, bad))
    assert ("litert", "fp32") in todo and all(r != "onnxruntime" for r, _ in todo)
    assert "misses its fidelity targets" in skipped["onnxruntime"] and "0.02" in skipped["onnxruntime"]


def test_auto_fidelity_rules(tmp_path):
    good = _fake_bundle(tmp_path, {"max_abs_dprob": 2e-7, "targets": {"max_abs_dprob": {"value": 2e-7, "ok": True,
                                                                                           "limit": 1e-3}}})
    assert fidelity_problem(good, "onnx") is None and fidelity_problem(good, "fp32") is None
    assert "no measurement of the fp16" in fidelity_problem(good, "fp16")
    # an ONNX variant from `noa-edge convert` (no targets): a float32 re-export must agree within FLOAT_MAX_DPROB
    (tmp_path / "fidelity.json").write_text(json.dumps({"variants": {"onnx": {"max_abs_dprob": 5 * FLOAT_MAX_DPROB,
                                                                              "targets": {}}}}))
    assert "misses its fidelity targets" in fidelity_problem(good, "onnx")
    (tmp_path / "fidelity.json").unlink()
    todo, skipped = candidates(good)
    assert [r for r, _ in todo] == ["litert"] and "no measurement of the onnx" in skipped["onnxruntime"]
    todo, skipped = candidates(good, variant="fp16")  # a named variant: only runtimes that run it
    assert "not --variant fp16" in skipped["onnxruntime"]


def test_auto_probes_both_for_real_and_runs_the_faster(onnx_bundle):
    sel = select(load(onnx_bundle), "auto", threads=1, runs=3)
    report = sel.report()
    assert set(report["probe_median_ms"]) == {"litert", "onnxruntime"} and report["probe_runs"] == 3
    medians = report["probe_median_ms"]
    assert sel.runtime == min(medians, key=medians.get) and report["chosen"] == sel.runtime
    assert sel.variant == ("onnx" if sel.runtime == "onnxruntime" else "fp32")
    assert "not installed" in report["skipped"]["tflite-runtime"] and "edgetpu" in report["skipped"]
    assert "fidelity" in report["reason"]


def test_bench_select_writes_the_choice_into_the_device_config(onnx_bundle, tmp_path):
    config = tmp_path / "noa-edge.toml"
    config.write_text('[serve]\nport = 8090\n')
    proc = _cli("bench", "--bundle", str(onnx_bundle), "--select", "--runs", "3", "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chosen = proc.stdout.split("selected: ")[1].split(" ")[0]
    assert chosen in ("litert", "onnxruntime") and "litert" in proc.stdout and "onnxruntime" in proc.stdout
    table = tomllib.loads(config.read_text())["serve"]
    assert table == {"port": 8090, "runtime": chosen}


# --------------------------------------------------------------------------------------------- daemon
def test_serve_with_onnxruntime_analyses_end_to_end(onnx_bundle, demo_cine, tmp_path):
    import cv2

    png = cv2.imencode(".png", cv2.cvtColor(cine_rgb(demo_cine, 30), cv2.COLOR_RGB2BGR))[1].tobytes()
    d = DaemonProcess(onnx_bundle, tmp_path / "data", extra=["--runtime", "onnxruntime", "--no-auto"]).wait_ready()
    try:
        with httpx.Client(base_url=d.url, timeout=60) as c:
            health = c.get("/api/health").json()
            assert health["runtime"]["runtime"] == "onnxruntime" and health["runtime"]["variant"] == "onnx"
            assert health["runtime_selection"]["chosen"] == "onnxruntime"
            assert health["runtime_selection"]["requested"] == "onnxruntime"
            r = c.post("/api/analyze", files={"image": ("f.png", png, "image/png")}, data={"fsh": "18", "volume_ml":
                                                                                          "9", "edv": "2"})
            assert r.status_code == 200, r.text
            exam = r.json()
    finally:
        d.stop()
    assert exam["bundle"]["variant"] == "onnx" and exam["basis"] == "nomogram"
    # the same held frame and ROI through LiteRT fp32 gives the same probability (within the target)
    from edge.held_frames import make_held_frame
    from edge.preprocess import crop_roi

    held = make_held_frame(cine_rgb(demo_cine, 30), "upload")
    x = crop_roi(held.gray, tuple(exam["roi"]), load(onnx_bundle).input_size)
    assert abs(load(onnx_bundle).runner(runtime="litert").run(x)[0] - exam["dl_probability"]) <= ONNX_LIMIT


def test_serve_rejects_an_unknown_runtime(test_bundle, tmp_path):
    proc = _cli("serve", "--bundle", str(test_bundle), "--data-dir", str(tmp_path), "--source", "none",
                "--runtime", "tensorrt", timeout=120)
    assert proc.returncode == 2 and "--runtime 'tensorrt': choose one of" in proc.stderr


# --------------------------------------------------------------------------------------------- demo bundle
@pytest.mark.slow
def test_demo_bundle_copy_with_onnx_matches_litert(tmp_path):
    """The shipped demo bundle (a temporary copy), ONNX added by the tool if it has none yet: ORT = LiteRT fp32
    on phantom-cine ROIs within the target."""
    copy = tmp_path / "demo"
    shutil.copytree(ROOT / "firmware_assets" / "demo-phantom", copy)
    if "onnx" not in load(copy).variants:
        proc = _cli("bundle-onnx", str(copy), timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    bundle = load(copy)
    assert fidelity_problem(bundle, "onnx") is None
    total = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    assert total <= 60 * 1024 * 1024, f"demo bundle with ONNX is {total / 1e6:.1f} MB, over the 60 MB budget"
    ort, lite = bundle.runner(runtime="onnxruntime"), bundle.runner(runtime="litert")
    from converters.bundle_onnx import fidelity_rois

    for roi in fidelity_rois(bundle.input_size, n_cine=6, n_noise=2):
        assert abs(ort.run(roi)[0] - lite.run(roi)[0]) <= ONNX_LIMIT
        if lite.has_features:  # the OOD guard's input, by name, through both runtimes
            assert ort.has_features and np.abs(ort.last_features - lite.last_features).max() <= 1e-3
    if "ood" in bundle.manifest:  # the guard stays on under ONNX Runtime, with fp32's threshold
        from edge.pipeline import Analyzer

        assert bundle.manifest["ood"]["thresholds"]["onnx"] == bundle.manifest["ood"]["thresholds"]["fp32"]
        analyzer = Analyzer(copy, runtime="onnxruntime")
        assert analyzer.variant == "onnx" and analyzer.ood_info()["active"] is True
