"""`noa-edge train --precision` and the tf.data batches: bf16 where the CPU has it, a float32 head, a float32
saved model that `noa-edge convert` takes as it is, and batches that depend on (seed, fold, epoch, batch) only.

The quick run here is one real bf16 training (MobileNetV2, 64 px, 1 epoch, 2 folds) converted to a real
fp32 TFLite bundle; the CPU flag detection reads made-up /proc/cpuinfo texts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="host test: needs the [train] extra")

from converters.augment import augment_batch, batch_rng, epoch_order  # noqa: E402
from converters.backbone_trainer import training_batches  # noqa: E402
from converters.errors import TrainError  # noqa: E402
from converters.models import build_cam_model  # noqa: E402
from converters.precision import (  # noqa: E402
    backbone_precision,
    cpu_bf16_flags,
    export_copy,
    keras_policy,
    resolve_precision,
)
from converters.train import make_config, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAD = ("head_dense", "head_gap", "prob", "cam")


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return path


def test_auto_is_bf16_only_where_the_cpu_reports_bf16(tmp_path):
    with_amx = _cpuinfo(tmp_path, "avx512f avx512_bf16 amx_tile amx_bf16")
    assert cpu_bf16_flags(with_amx) == ["avx512_bf16", "amx_bf16"]
    assert resolve_precision("auto", with_amx) == "bf16"
    assert resolve_precision("fp32", with_amx) == "fp32"
    plain = _cpuinfo(tmp_path, "avx512f avx512_vnni")
    assert cpu_bf16_flags(plain) == [] and resolve_precision("auto", plain) == "fp32"
    assert resolve_precision("bf16", plain) == "bf16"  # asked for: emulated, but the user's call
    assert resolve_precision("auto", tmp_path / "no-such-file") == "fp32"
    assert resolve_precision("auto", with_amx, eager=True) == "fp32"  # --quick runs eagerly
    assert resolve_precision("bf16", with_amx, eager=True) == "bf16"
    # auto keeps the backbones measured slower in bf16 (NASNetMobile) in fp32; an explicit bf16 is obeyed
    assert backbone_precision("bf16", "auto", "NASNetMobile") == "fp32"
    assert backbone_precision("bf16", "auto", "ResNet50") == "bf16"
    assert backbone_precision("bf16", "bf16", "NASNetMobile") == "bf16"
    assert backbone_precision("fp32", "auto", "ResNet50") == "fp32"
    with pytest.raises(TrainError, match="--precision 'fp16': choose from auto, fp32, bf16"):
        resolve_precision("fp16")
    with pytest.raises(TrainError, match="--precision"):
        make_config(tmp_path, tmp_path / "run", "MobileNetV2", quick=True, precision="half")


def test_bf16_model_keeps_a_float32_head_and_exports_an_exact_float32_copy():
    with keras_policy("bf16"):
        model = build_cam_model("MobileNetV2", 32, seed=0)
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored
    policies = {layer.name: layer.dtype_policy.name for layer in model.layers}
    assert policies["Conv1"] == "mixed_bfloat16"
    assert all(policies[name] == "float32" for name in HEAD), policies
    head = model.get_layer("head_dense")
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(1).normal(0, 0.5, kernel.shape).astype("float32"), bias + 0.3])
    exported = export_copy(model, lambda: build_cam_model("MobileNetV2", 32, seed=0))
    assert {layer.dtype_policy.name for layer in exported.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), exported.get_weights(), strict=True))
    x = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    p16 = np.asarray(model(x, training=False)["prob"]).ravel()
    p32 = np.asarray(exported(x, training=False)["prob"]).ravel()
    assert exported(x, training=False)["prob"].dtype == tf.float32
    assert np.abs(p16 - p32).max() < 0.05  # same weights, other arithmetic
    features = {name: tf.keras.Model(m.inputs, m.get_layer("features").output) for name, m in
                (("bf16", model), ("fp32", exported))}
    assert features["bf16"](x).dtype == tf.bfloat16 and features["fp32"](x).dtype == tf.float32
    assert export_copy(exported, lambda: None) is exported  # already float32: nothing rebuilt


def test_training_batches_cover_every_epoch_and_depend_only_on_seed_fold_epoch_batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    x[..., 1] = x[..., 2] = x[..., 0]
    y = (np.arange(10) % 2).astype("float32").reshape(-1, 1)
    w = np.linspace(0.5, 1.5, 10).astype("float32")
    data, steps = training_batches(x, y, w, 4, seed=5, fold=2, epochs=3)
    batches = [tuple(np.asarray(t) for t in b) for b in data]
    assert steps == 3 and len(batches) == 9 and [len(b[0]) for b in batches[:3]] == [4, 4, 2]
    for i, (xb, yb, wb) in enumerate(batches):
        epoch, b = divmod(i, steps)
        idx = epoch_order(10, 5, 2, epoch)[b * 4:(b + 1) * 4]
        assert np.array_equal(xb, augment_batch(x[idx], batch_rng(5, 2, epoch, b))), (epoch, b)
        assert np.array_equal(yb, y[idx]) and np.array_equal(wb, w[idx])
    assert not np.array_equal(batches[0][0], batches[3][0])  # epoch 2 is not epoch 1 again
    again = [np.asarray(b[0]) for b in training_batches(x, y, w, 4, seed=5, fold=2, epochs=3)[0]]
    assert all(np.array_equal(a, b[0]) for a, b in zip(again, batches, strict=True))


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> Path:
    from converters.simulate import simulate

    base = tmp_path_factory.mktemp("bf16")
    simulate(base / "ds", n_oa=6, n_noa=6, n_controls=0, seed=3, external=0, progress=False)
    train(make_config(base / "ds", base / "run", "MobileNetV2", quick=True, progress=False, precision="bf16"))
    return base / "run"


def test_bf16_run_records_its_precision_and_saves_a_float32_model(bf16_run):
    run_json = json.loads((bf16_run / "run.json").read_text())
    assert run_json["precision"]["training"] == "bf16" and run_json["precision"]["exported_model"] == "float32"
    assert run_json["settings"]["precision"] == "bf16 (bf16)"  # resolved (requested): auto may differ per backbone
    assert run_json["precision"]["per_backbone"] == {"MobileNetV2": "bf16"}
    assert json.loads((bf16_run / "cv_report.json").read_text())["precision"]["training"] == "bf16"
    model = tf.keras.models.load_model(bf16_run / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert model.get_layer("prob").output.dtype == "float32"


def test_convert_takes_the_bf16_trained_model(bf16_run, tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "convert", str(bf16_run), "--out", str(out),
                           "--targets", "cpu", "--calibration-size", "8", "--no-int8-retry"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variants"]["fp32"]["dtype"] == "float32"
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert fidelity  # the converter compared the TFLite variants with the float32 Keras model
