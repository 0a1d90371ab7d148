"""`noa-edge convert` end to end on a real NASNetMobile (64 px, untrained backbone with a spread head),
every variant loaded in the real LiteRT interpreter and compared with Keras; Edge TPU preflight on
the real NASNetMobile int8 graph. TensorFlow runs only in subprocesses (the CLI and the run builder).

The Edge TPU compiler is x86 + apt-only and absent here, so one test puts a fake `edgetpu_compiler`
on PATH that prints a recorded-format log: it checks our parsing and the bundle wiring, not the TPU.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from converters.convert import ConvertError, split_rois
from converters.edgetpu_preflight import format_report, parse_compiler_log, preflight, run_compiler
from converters.fp16_weights import choose_fp16_keep, fp16_round, fp16_weights
from converters.tflite_flatbuffer import read_tflite
from edge.bundle import load
from edge.runtime import ModelRunner

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "firmware_assets" / "demo-phantom"
SIZE = 64

MAKE_RUN = textwrap.dedent(r'''
    import json, sys
    from pathlib import Path
    import numpy as np
    from converters.models import build_cam_model
    from converters.dataset import load_dataset
    from converters.simulate import simulate
    from edge.preprocess import crop_roi

    ds_path, run, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    simulate(ds_path, n_oa=12, n_noa=12, n_controls=2, seed=3, external=0, progress=False)
    run.mkdir(parents=True)
    ds = load_dataset(ds_path)
    rows = ds.labelled_images()
    x = np.stack([crop_roi(ds.read_image(r), r["roi"], size) for r in rows])
    model = build_cam_model("NASNetMobile", size, seed=0)
    # Untrained backbone: scale the head so probabilities span (0, 1) instead of sitting at 0.5,
    # which makes the Keras-vs-TFLite comparisons below able to fail.
    p = np.asarray(model(x, training=False)["prob"]).ravel().astype(np.float64)
    logit = np.log(p) - np.log1p(-p)
    k = 1.5 / max(float(logit.std()), 1e-6)
    head = model.get_layer("head_dense")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * k, (bias - logit.mean()) * k])
    model.save(run / "model.keras")
    json.dump({"dataset": str(ds_path), "dataset_sha256": "test", "input_size": size,
               "backbones": ["NASNetMobile"], "selected_backbone": "NASNetMobile", "seed": 0},
              open(run / "run.json", "w"))
    out = model(x[:8], training=False)
    np.savez(run / "reference.npz", x=x[:8], prob=np.asarray(out["prob"]), cam=np.asarray(out["cam"]))
''')


def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("convert")
    ds, run, out = base / "dataset", base / "run", base / "bundle"
    proc = subprocess.run([sys.executable, "-c", MAKE_RUN, str(ds), str(run), str(SIZE)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = _cli("convert", str(run), "--out", str(out), "--targets", "cpu,coral,jetson",
                "--calibration-size", "16", "--no-int8-retry")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    ref = np.load(run / "reference.npz")
    return {"run": run, "bundle": out, "x": ref["x"], "prob": ref["prob"].ravel(), "cam": ref["cam"],
            "log": proc.stdout}


@pytest.mark.slow  # converts a real network
def test_bundle_has_every_variant_and_verifies(converted):
    bundle = load(converted["bundle"])
    assert set(bundle.variants) == {"fp32", "fp16", "int8", "onnx"}
    assert bundle.manifest["input"] == {**bundle.manifest["input"], "shape": [1, SIZE, SIZE, 3], "dtype": "uint8"}
    assert bundle.manifest["default_variant"] == {"cpu": "fp32", "coral": "int8", "jetson": "fp16"}
    # int8 takes raw pixels too: its input quantization was set to identity
    assert bundle.variants["int8"]["input"] == {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
    assert bundle.manifest["nomogram"]["placeholder"] is True  # this run has no nomogram.json
    assert "PLACEHOLDER" in bundle.manifest["threshold_source"]
    assert bundle.synthetic_demo is True  # phantom dataset
    times = bundle.manifest["conversion"]["times_s"]
    assert {"convert_fp32_s", "convert_fp16_s", "convert_int8_s", "convert_onnx_s"} <= set(times)
    for name in ("MODEL_CARD.md", "README.md", "fidelity.json", "edgetpu_preflight.json", "ood.npz"):
        assert name in bundle.manifest["files"]
    assert set(bundle.manifest["ood"]["thresholds"]) == {"fp32", "fp16", "int8"}  # issue 15: the OOD guard
    assert "trtexec --onnx=model.onnx --fp16 --saveEngine" in (converted["bundle"] / "README.md").read_text()
    assert "edgetpu_compiler -s" in converted["log"]  # exact command printed when the compiler is absent


# (max, mean) |Δprob| against Keras on the 8 reference ROIs. The targets (converters/fidelity.py: fp16 max 1e-3,
# int8 mean 0.02, |ΔAUC| 0.01, agreement 0.98) are asserted on the demo bundle (test_demo_bundle_meets_fidelity_
# targets) and their judging at the limit below. This fixture is an untrained 64 px NASNet whose fp16 rung and int8
# ranges come from 16 calibration ROIs: measured here fp16 max 1.0-1.5e-3 / mean 3-7e-4, int8 max 0.09-0.12 /
# mean 0.04. Bounds: fp16 2x its target (mean at the target), int8 4x; the old 0.05 / 0.35 let anything through.
VARIANT_TOLERANCE = {"fp32": (1e-4, 1e-5), "fp16": (2e-3, 1e-3), "int8": (0.25, 0.08)}


@pytest.mark.slow  # converts a real network
@pytest.mark.parametrize("variant", list(VARIANT_TOLERANCE))
def test_every_tflite_variant_in_litert_matches_keras(converted, variant):
    runner = load(converted["bundle"]).runner(variant=variant)
    assert runner.runtime == "ai_edge_litert"
    probs, cams = zip(*(runner.run(roi) for roi in converted["x"]), strict=True)
    probs, cams = np.array(probs), np.stack(cams)
    assert cams.shape == converted["cam"].shape and cams.dtype == np.float32
    dprob = np.abs(probs - converted["prob"])
    max_tol, mean_tol = VARIANT_TOLERANCE[variant]
    assert dprob.max() <= max_tol and dprob.mean() <= mean_tol, (variant, dprob.max(), dprob.mean())
    if variant == "fp32":
        assert np.allclose(cams, converted["cam"], atol=1e-3)
    # the probabilities really vary, so the comparison above can fail
    assert converted["prob"].std() > 0.05


@pytest.mark.slow  # converts a real network
def test_fidelity_report_judges_each_variant_by_its_own_numbers(converted):
    """fidelity.json's verdicts follow from its numbers (this untrained fixture misses its fp16 and int8 targets
    and must say so), and the fp16 ladder stopped at the first rung within half the target on its ROIs, going
    past a rung only when it missed (here it runs out of rungs: 2.2e-3 measured on the last)."""
    from converters.fidelity import TARGETS_FIDELITY, meets_targets
    from converters.fp16_weights import KEEP_LADDER

    fid = load(converted["bundle"]).fidelity()
    for variant in ("fp16", "int8"):
        entry = fid["variants"][variant]
        assert entry["targets"] == meets_targets(variant, entry), variant
    half = TARGETS_FIDELITY["fp16"]["max_abs_dprob"] / 2
    tried = [t["calibration_max_abs_dprob"] for t in fid["fp16_choice"]["tried"]]
    assert all(t > half for t in tried[:-1]) and (tried[-1] <= half or len(tried) == len(KEEP_LADDER)), tried


@pytest.mark.slow  # converts a real network
def test_outputs_are_found_by_name_even_without_signature(converted, tmp_path):
    import flatbuffers

    from converters.tflite_flatbuffer import schema as _schema

    path = converted["bundle"] / "model_int8.tflite"
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    graph = model.subgraphs[0]
    # issue 15: a third output, the pooled features of the OOD guard (converters/tflite_features.py)
    assert sorted(graph.tensors[i].name.decode() for i in graph.outputs) == ["cam", "features", "prob"]
    # drop the signature (as some runtimes/compilers do) and swap the output order: names still win
    model.signatureDefs = []
    graph.outputs = list(reversed(list(graph.outputs)))
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    stripped = tmp_path / "stripped.tflite"
    stripped.write_bytes(bytes(builder.Output()))
    a = ModelRunner(path, variant="int8").run(converted["x"][0])
    b = ModelRunner(stripped, variant="int8").run(converted["x"][0])
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


CONVERTER_FP16 = textwrap.dedent(r'''
    import sys
    import keras
    from converters.tflite_export import convert_tflite, finalize_tflite, frozen_function
    model = keras.models.load_model(sys.argv[1], compile=False)
    size = int(model.inputs[0].shape[1])
    buf, _ = finalize_tflite(convert_tflite(frozen_function(model, size, "uint8"), "fp16"), raw_pixel_input=True)
    open(sys.argv[2], "wb").write(buf)
''')


def _outputs(buf: bytes, x, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(buf)
    runner = ModelRunner(path, variant="fp32")
    probs, cams = zip(*(runner.run(roi) for roi in x), strict=True)
    return np.array(probs), np.stack(cams)


@pytest.mark.slow  # converts a real network
def test_fp16_rewrite_reproduces_the_converters_fp16_and_fp32_at_the_ends(converted, tmp_path):
    """keep 0 tensors = the TFLite converter's own fp16 output for output; keep all = the fp32 model."""
    reference = tmp_path / "converter_fp16.tflite"
    proc = subprocess.run([sys.executable, "-c", CONVERTER_FP16, str(converted["run"] / "model.keras"),
                           str(reference)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fp32 = (converted["bundle"] / "model_fp32.tflite").read_bytes()
    x = converted["x"]
    ours, info = fp16_weights(fp32, keep_fp32=0)
    assert info["kept_tensors"] == 0 and info["fp16_tensors"] > 100
    p_ours, c_ours = _outputs(ours, x, tmp_path, "ours.tflite")
    p_conv, c_conv = _outputs(reference.read_bytes(), x, tmp_path, "conv.tflite")
    assert np.array_equal(p_ours, p_conv) and np.array_equal(c_ours, c_conv)
    assert len(ours) < 0.55 * len(fp32)
    p32, _ = _outputs(fp32, x, tmp_path, "fp32.tflite")
    assert not np.array_equal(p_ours, p32)  # fp16 rounding really changed something
    everything, info = fp16_weights(fp32, keep_fp32=10**6)
    assert info["fp16_tensors"] == 0
    assert np.array_equal(_outputs(everything, x, tmp_path, "all32.tflite")[0], p32)


@pytest.mark.slow  # converts a real network
def test_fp16_keep_choice_stops_at_the_first_rung_within_target(converted):
    fp32 = (converted["bundle"] / "model_fp32.tflite").read_bytes()
    x = converted["x"][:4]
    _, lax = choose_fp16_keep(fp32, x, max_abs_dprob=1.0, ladder=(0, 2))
    assert [t["kept_tensors"] for t in lax["tried"]] == [0] and lax["kept_tensors"] == 0
    _, strict = choose_fp16_keep(fp32, x, max_abs_dprob=0.0, ladder=(0, 2))
    assert [t["kept_tensors"] for t in strict["tried"]] == [0, 2] and strict["kept_tensors"] == 2
    assert strict["kept_weights"] > 0


@pytest.mark.slow  # converts a real network
def test_fp16_rewrite_refuses_bad_input(converted):
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        fp16_weights(b"PK\x03\x04 this is a zip, not a model")
    fp32 = (converted["bundle"] / "model_fp32.tflite").read_bytes()
    graph_input = read_tflite(fp32).subgraphs[0].inputs[0]
    with pytest.raises(ValueError, match="not constant float32 weights"):
        fp16_round(fp32, [graph_input])


@pytest.mark.slow  # converts a real network
def test_bundle_fp16_records_what_it_kept_in_fp32(converted):
    from converters.fp16_weights import constant_float_tensors

    bundle = load(converted["bundle"])
    kept = bundle.variants["fp16"]["kept_fp32"]
    choice = bundle.fidelity()["fp16_choice"]
    assert choice["tried"] and choice["kept_tensors"] == kept["kept_tensors"]
    model = read_tflite((converted["bundle"] / "model_fp16.tflite").read_bytes())
    assert len(constant_float_tensors(model)) == kept["kept_tensors"]  # the rest are fp16 + DEQUANTIZE


@pytest.mark.slow  # converts a real network
def test_onnx_matches_keras(converted):
    import onnxruntime as ort

    session = ort.InferenceSession(str(converted["bundle"] / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == ["cam", "prob"]
    out = dict(zip(names, session.run(None, {"image": converted["x"][:1]}), strict=True))
    assert abs(float(out["prob"].ravel()[0]) - converted["prob"][0]) < 1e-4


@pytest.mark.slow  # converts a real network
def test_fidelity_json_shape(converted):
    fid = json.loads((converted["bundle"] / "fidelity.json").read_text())
    assert fid["n_rois"] > 0 and fid["n_calibration_rois"] >= 16
    for variant in ("fp32", "fp16", "int8", "onnx"):
        entry = fid["variants"][variant]
        assert {"auc", "delta_auc", "agreement", "mean_abs_dprob", "max_abs_dprob", "cam_r"} <= set(entry)
    assert fid["variants"]["fp32"]["max_abs_dprob"] < 1e-4
    assert "PLACEHOLDER" in fid["threshold_basis"]
    assert len(fid["int8_attempts"]) == 1  # --no-int8-retry


@pytest.mark.slow  # converts a real network
def test_edgetpu_preflight_on_real_nasnet_graph(converted):
    report = preflight(converted["bundle"] / "model_int8.tflite")
    assert report["passes"], format_report(report)
    # NASNetMobile's Cropping2D -> STRIDED_SLICE (strides 1) and ZeroPadding2D -> PAD (spatial only) map
    found = report["strided_slice_and_pad"]
    assert found["STRIDED_SLICE"] and found["PAD"]
    for op in found["STRIDED_SLICE"]:
        assert op["options"]["strides"] == [1, 1, 1, 1] and op["placement"] == "tpu"
    for op in found["PAD"]:
        assert op["options"]["paddings"][:2] == [0, 0] and op["placement"] == "tpu"
    assert report["op_counts"]["QUANTIZE"]["tpu"] == 1 and "CAST" not in report["op_counts"]
    assert [op["op"] for op in report["cpu_ops"]] == ["DEQUANTIZE", "DEQUANTIZE"]
    assert len(report["ops"]) == report["ops_total"] > 500


@pytest.mark.slow  # converts a real network
def test_preflight_flags_float_graph_from_first_op(converted):
    # the fp32 model (uint8 input + CAST) is what a naive int8 conversion also starts with
    report = preflight(converted["bundle"] / "model_fp32.tflite")
    assert not report["passes"]
    assert report["cpu_ops"][0]["op"] == "CAST" and report["ops_tpu"] == 0


FAKE_COMPILER = """#!/bin/sh
# stands in for the x86-only Edge TPU compiler: prints its log format, copies the model
out=.; while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2;; -s) shift;; *) shift;; esac; done
model="$1"; base=$(basename "$model" .tflite)
cp "$model" "$out/${base}_edgetpu.tflite"
cat <<EOF
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1523 ms.

Input model: $model
Input size: 5.01MiB
Output model: $out/${base}_edgetpu.tflite
Output size: 5.32MiB
On-chip memory used for caching model parameters: 5.12MiB
On-chip memory remaining for caching model parameters: 1.75MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 571
Operation log: $out/${base}_edgetpu.log

@NOT_ALL_MAPPED@
Number of operations that will run on Edge TPU: 569
Number of operations that will run on CPU: 2

Operator                       Count      Status

CONV_2D                        197        Mapped to Edge TPU
DEQUANTIZE                     2          Operation is working on an unsupported data type
STRIDED_SLICE                  4          Mapped to Edge TPU
EOF
"""
FAKE_COMPILER = FAKE_COMPILER.replace("@NOT_ALL_MAPPED@", "Model successfully compiled but not all operations are "
                                      "supported by the Edge TPU. A percentage of the model will instead run on "
                                      "the CPU, which is slower.")


@pytest.mark.slow  # converts a real network
def test_compiler_log_is_parsed_with_a_stand_in_compiler(converted, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "edgetpu_compiler"
    fake.parent.mkdir()
    fake.write_text(FAKE_COMPILER)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "model_int8.tflite"
    model.write_bytes((converted["bundle"] / "model_int8.tflite").read_bytes())
    result = run_compiler(model, tmp_path)
    assert result["available"] and result["returncode"] == 0
    assert result["output"] == "model_int8_edgetpu.tflite"
    assert result["subgraphs"] == 1 and result["ops_tpu"] == 569 and result["ops_cpu"] == 2
    assert result["on_chip_memory"] == "5.12MiB" and result["off_chip_memory"] == "0.00B"
    assert {"op": "STRIDED_SLICE", "count": 4, "status": "Mapped to Edge TPU"} in result["ops"]


def test_compiler_absent_gives_the_exact_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_compiler(tmp_path / "model_int8.tflite", tmp_path)
    assert result == {**result, "available": False, "command": "edgetpu_compiler -s -o . model_int8.tflite"}


def test_parse_compiler_log_without_cpu_ops():
    parsed = parse_compiler_log("Edge TPU Compiler version 16.0\nNumber of Edge TPU subgraphs: 2\n"
                                "Total number of operations: 10\n")
    assert parsed["subgraphs"] == 2 and parsed["ops_total"] == 10 and parsed["ops_cpu"] is None


def test_split_rois_keeps_patients_apart_and_is_stratified():
    rows = [{"patient_id": f"P{p}", "label": int(p < 30), "image_id": f"P{p}_{s}"} for p in range(90) for s in "LR"]
    cal, held = split_rois(rows, 60, seed=1)
    assert {r["patient_id"] for r in cal}.isdisjoint({r["patient_id"] for r in held})
    assert len(cal) + len(held) == len(rows) and 60 <= len(cal) <= 64
    assert sum(r["label"] for r in cal) == 20  # 1/3 NOA in the data, 1/3 in calibration
    assert split_rois(rows, 60, seed=1) == (cal, held)
    assert split_rois(rows, 60, seed=2) != (cal, held)


@pytest.mark.parametrize("args,expected", [
    (["convert", "/nonexistent/run", "--out", "{tmp}/b"], "run folder not found"),
    (["convert", "{tmp}", "--out", "{tmp}/b"], "model.keras: missing"),
    (["convert", "{tmp}", "--out", "{tmp}/b", "--targets", "cpu,tpu"], "--targets cpu,tpu: choose from"),
])
def test_convert_bad_input_is_one_clear_line(tmp_path, args, expected):
    proc = _cli(*[a.format(tmp=tmp_path) for a in args], timeout=120)
    assert proc.returncode == 1
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_convert_refuses_to_overwrite_a_non_bundle_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConvertError, match="not empty"):
        from converters.convert import convert

        convert(tmp_path, tmp_path / "out")


DEMO_BUILT = pytest.mark.skipif(not (DEMO / "fidelity.json").is_file(),
                                reason="demo bundle firmware_assets/demo-phantom not built yet")


@DEMO_BUILT
def test_demo_bundle_meets_fidelity_targets():
    bundle = load(DEMO)
    assert bundle.synthetic_demo and not bundle.nomogram.get("placeholder")
    assert bundle.manifest["input"]["shape"] == [1, 224, 224, 3]
    assert {"fp32", "fp16", "int8"} <= set(bundle.variants)
    # the house budget; ONNX is added on a device that wants it (`noa-edge bundle-onnx`), not shipped
    assert sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file()) <= 40 * 1024 * 1024
    fid = bundle.fidelity()
    assert fid["n_rois"] >= 200
    assert fid["variants"]["fp32"]["max_abs_dprob"] <= 1e-4
    fp16 = fid["variants"]["fp16"]
    assert fp16["max_abs_dprob"] <= 1e-3 and fp16["agreement"] >= 0.99
    int8 = fid["variants"]["int8"]
    assert abs(int8["delta_auc"]) <= 0.01 and int8["cam_r"] >= 0.9


# A measured miss of the shipped demo bundle (see its MODEL_CARD.md and benchmarks/RESULTS.md): kept as a
# strict xfail so it turns into a failure the day a rebuilt bundle meets the targets (then drop the marker).
@DEMO_BUILT
@pytest.mark.xfail(strict=True, reason="224 px demo int8: best of 4 post-training attempts has mean|Δprob| "
                                       "0.023 > 0.02 and agreement 0.977 < 0.98 (ΔAUC +0.009 meets)")
def test_demo_bundle_int8_agreement_and_mean_dprob_targets():
    int8 = load(DEMO).fidelity()["variants"]["int8"]
    assert int8["agreement"] >= 0.98 and int8["mean_abs_dprob"] <= 0.02


def test_nomogram_decisions_use_clinical_values_and_need_all_of_them():
    from converters.fidelity import nomogram_decisions

    nomogram = {"intercept": -1.0, "threshold": 0.5, "predictors": [
        {"source": "dl_probability", "transform": "logit", "coef": 1.0, "range": [0.001, 0.999]},
        {"source": "fsh", "transform": "identity", "coef": 0.2, "range": [0, 200]}]}
    rows = [{"fsh": 1.0}, {"fsh": 20.0}]
    probs = np.array([0.5, 0.5])
    # lp = -1 + 0 + 0.2*fsh: 1 IU/L -> negative, 20 IU/L -> positive
    assert nomogram_decisions(nomogram, probs, rows).tolist() == [False, True]
    # probabilities 1 and 0 are clipped to the range (logit ±6.9), not infinite
    assert nomogram_decisions(nomogram, np.array([1.0, 0.0]), rows).tolist() == [True, False]
    assert nomogram_decisions(nomogram, probs, [{"fsh": 1.0}, {"fsh": None}]) is None


def test_fidelity_targets_are_the_documented_ones_and_judged_at_the_limit():
    """fp16 max|Δprob| ≤ 1e-3; int8 |ΔAUC| ≤ 0.01, agreement ≥ 0.98, mean|Δprob| ≤ 0.02 (issue 5, MODEL_CARD)."""
    from converters.fidelity import TARGETS_FIDELITY, meets_targets

    assert TARGETS_FIDELITY == {"fp16": {"max_abs_dprob": 1e-3},
                                "int8": {"abs_delta_auc": 0.01, "agreement": 0.98, "mean_abs_dprob": 0.02}}
    assert meets_targets("fp16", {"max_abs_dprob": 1e-3})["max_abs_dprob"]["ok"]
    assert not meets_targets("fp16", {"max_abs_dprob": 1.01e-3})["max_abs_dprob"]["ok"]
    at_limit = {"delta_auc": -0.01, "agreement": 0.98, "mean_abs_dprob": 0.02}
    assert all(c["ok"] for c in meets_targets("int8", at_limit).values())
    for key, worse in (("delta_auc", 0.0101), ("agreement", 0.979), ("mean_abs_dprob", 0.0201)):
        checks = meets_targets("int8", {**at_limit, key: worse})
        assert [k for k, c in checks.items() if not c["ok"]] == [{"delta_auc": "abs_delta_auc"}.get(key, key)]
    assert not meets_targets("int8", {**at_limit, "delta_auc": None})["abs_delta_auc"]["ok"]  # one class: no AUC
