"""`noa-edge train`: folds by patient, out-of-fold coverage, resume, Grad-CAM equivalence, bad inputs.

One real quick run (MobileNetV2 + NASNetMobile, 64 px, 1 epoch, 2 folds, eager) on a tiny phantom cohort is
shared by the tests of this module; nothing is mocked except a missing [train] extra.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from converters.augment import augment_batch, batch_rng, epoch_order
from converters.train import TrainError, make_config, train
from converters.train_data import inner_validation_split, make_folds

BACKBONES = "MobileNetV2,NASNetMobile"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from converters.simulate import simulate

    out = tmp_path_factory.mktemp("phantom") / "tiny"
    simulate(out, n_oa=6, n_noa=6, n_controls=1, seed=3, external=0, progress=False)
    return out


@pytest.fixture(scope="module")
def quick_run(cohort, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("runs") / "quick"
    report = train(make_config(cohort, run, BACKBONES, quick=True, progress=False))
    return run, report


def _oof(run: Path) -> list[dict]:
    with open(run / "oof_predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _copy_dataset(src: Path, dst: Path, keep_patient=lambda row: True) -> Path:
    shutil.copytree(src, dst)
    with open(src / "patients.csv", newline="") as f:
        patients = list(csv.DictReader(f))
    keep = {p["patient_id"] for p in patients if keep_patient(p)}
    for name in ("patients.csv", "images.csv"):
        with open(src / name, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r["patient_id"] in keep]
            fields = reader.fieldnames
        with open(dst / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return dst


def _cli(args: list[str]):
    import typer

    from converters.cli import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, args)


# ------------------------------------------------------------------------------------------ splits
def test_folds_never_share_a_patient_and_are_stratified():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"P{i:03d}" for i in range(60)], rng.integers(1, 3, 60))
    patient_label = {f"P{i:03d}": int(i % 3 != 0) for i in range(60)}
    labels = np.array([patient_label[g] for g in groups])
    fold_of = make_folds(labels, groups, 5, seed=1)
    assert set(fold_of) == {0, 1, 2, 3, 4}
    for g in set(groups):
        assert len(set(fold_of[groups == g])) == 1, f"patient {g} in two folds"
    for k in range(5):
        assert 0 < labels[fold_of == k].mean() < 1
        fit, val = inner_validation_split(np.flatnonzero(fold_of != k), labels, groups, seed=1, fold=k + 1)
        assert not set(groups[fit]) & set(groups[val]) and not set(groups[val]) & set(groups[fold_of == k])
        assert len(fit) + len(val) == int((fold_of != k).sum())
    assert np.array_equal(fold_of, make_folds(labels, groups, 5, seed=1))  # seeded
    assert not np.array_equal(fold_of, make_folds(labels, groups, 5, seed=2))


def test_too_few_patients_for_the_folds_is_caught_before_training():
    groups = np.array(["A", "B", "C", "D", "E", "F", "G"])
    labels = np.array([1, 1, 0, 0, 0, 0, 0])
    with pytest.raises(TrainError, match="only 2 NOA patients for 3 folds"):
        make_folds(labels, groups, 3, seed=0)


def test_inner_split_with_one_class_left_is_a_clear_error():
    # 1 OA patient in the training part: no inner split can hold OA on both sides
    groups = np.array(["A", "B", "C", "D"])
    labels = np.array([1, 1, 1, 0])
    with pytest.raises(TrainError, match="fold 1: the training part has 3 NOA and 1 OA"):
        inner_validation_split(np.arange(4), labels, groups, seed=0, fold=1)
    # 2 + 2 is the smallest that splits, with both classes on both sides
    fit, val = inner_validation_split(np.arange(4), np.array([1, 1, 0, 0]), groups, seed=0, fold=1)
    assert set(np.array([1, 1, 0, 0])[fit]) == {0, 1} == set(np.array([1, 1, 0, 0])[val])


def test_augmentation_is_seeded_grey_and_varies_by_epoch():
    rois = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    rois[..., 1] = rois[..., 2] = rois[..., 0]
    a = augment_batch(rois, batch_rng(0, 1, 0, 0))
    b = augment_batch(rois, batch_rng(0, 1, 0, 0))
    c = augment_batch(rois, batch_rng(0, 1, 1, 0))
    assert a.dtype == np.uint8 and a.shape == rois.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(a[..., 0], a[..., 2])
    assert sorted(epoch_order(10, 0, 1, 0)) == list(range(10))
    # a resumed fold sees the same batches; the next epoch a different order
    assert np.array_equal(epoch_order(50, 0, 1, 0), epoch_order(50, 0, 1, 0))
    assert not np.array_equal(epoch_order(50, 0, 1, 0), epoch_order(50, 0, 1, 1))


@pytest.mark.parametrize("options,message", [
    ({"folds": 1}, "--folds must be >= 2"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"input_size": 31}, "--input-size must be >= 32"),
    ({"patience": -1}, "--patience must be >= 0"),
    ({"max_images": 3}, "--max-images must be >= 4"),
    ({"learning_rate": 1.5}, "--learning-rate must be in"),
    ({"backbones": " , "}, "--backbones is empty"),
    ({"backbones": "VGG16"}, "--backbones"),
    ({"backbones": "NASNetMobile,MobileNetV2", "weights": "/no/such.h5"}, "fits one backbone only"),
    ({"backbones": "NASNetMobile", "weights": "MobileNetV2=/no/such.h5"}, "not in --backbones"),
])
def test_make_config_refuses_bad_options_by_name(tmp_path, options, message):
    with pytest.raises(TrainError, match=re.escape(message)):
        make_config(tmp_path, tmp_path / "run", **options)


# --------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # trains a real network
def test_quick_run_writes_the_contract(quick_run, cohort):
    run, report = quick_run
    meta = json.loads((run / "run.json").read_text())
    for key in ("dataset", "dataset_sha256", "input_size", "backbones", "selected_backbone", "seed", "versions",
                "wall_s"):
        assert key in meta
    assert meta["input_size"] == 64 and meta["backbones"] == BACKBONES.split(",")
    assert meta["selected_backbone"] == report["selected_backbone"] in BACKBONES.split(",")
    best = max(report["backbones"], key=lambda b: report["backbones"][b]["pooled"]["image"]["auc"])
    assert report["selected_backbone"] == best
    for b in BACKBONES.split(","):
        m = report["backbones"][b]["pooled"]["image"]
        assert 0 <= m["auc"] <= 1 and "sensitivity" in m and "specificity" in m
        assert report["backbones"][b]["pooled"]["patient"]["n"] == report["cohort"]["patients"]
    html = (run / "cv_report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert json.loads((run / "cv_report.json").read_text())["selected_backbone"] == meta["selected_backbone"]
    pngs = sorted(p.name for p in (run / "gradcam").glob("*.png"))
    assert pngs and any(n.startswith("NOA_") for n in pngs) and any(n.startswith("OA_") for n in pngs)
    assert (run / "train.log").read_text().count("epoch 1/1") >= 2 * 2 + 1


@pytest.mark.slow  # trains a real network
def test_cv_table_prints_one_row_per_backbone_and_marks_the_selected(quick_run):
    import subprocess
    import sys

    run, report = quick_run
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "benchmarks/cv_table.py", str(run)], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first_table = out.stdout.split("| backbone", 1)[1].split("\n\n", 1)[0]  # the paired-test table follows it
    rows = [line for line in first_table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(report["backbones"])
    k = len(report["backbones"])
    assert out.stdout.count("| p (Holm) |") == 1 and len(report["paired_backbone_tests"]["tests"]) == k * (k - 1) // 2
    selected = report["selected_backbone"]
    auc = report["backbones"][selected]["pooled"]["image"]["auc"]
    assert any(r.startswith(f"| **{selected}** | {auc:.3f}") for r in rows)
    bad = subprocess.run([sys.executable, "benchmarks/cv_table.py", str(run / "gradcam")], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "usage" in bad.stderr


@pytest.mark.slow  # trains a real network
def test_oof_covers_every_image_once_per_backbone_and_folds_split_patients(quick_run, cohort):
    run, _ = quick_run
    with open(cohort / "patients.csv", newline="") as f:
        group = {p["patient_id"]: p["group"] for p in csv.DictReader(f)}
    with open(cohort / "images.csv", newline="") as f:
        expected = {r["image_id"] for r in csv.DictReader(f) if group[r["patient_id"]] != "control"}
    rows = _oof(run)
    assert list(rows[0]) == ["image_id", "patient_id", "group", "label", "backbone", "fold", "prob"]
    for b in BACKBONES.split(","):
        mine = [r for r in rows if r["backbone"] == b]
        ids = [r["image_id"] for r in mine]
        assert len(ids) == len(set(ids)) and set(ids) == expected  # once each, controls excluded
        fold_of_patient = {}
        for r in mine:
            assert fold_of_patient.setdefault(r["patient_id"], r["fold"]) == r["fold"], "patient in two folds"
            assert r["label"] == ("1" if r["group"] == "NOA" else "0")
            assert 0 <= float(r["prob"]) <= 1
        # every fold model predicted only patients it never trained or validated on
        for k in (1, 2):
            rec = json.loads((run / "folds" / b / f"fold{k}.json").read_text())
            tested = {r["patient_id"] for r in mine if r["fold"] == str(k)}
            assert set(rec["test_patients"]) == tested
            assert not tested & set(rec["val_patients"])
            assert rec["n_fit"] + rec["n_val"] + rec["n_test"] == len(expected)


@pytest.mark.slow  # trains a real network
def test_resume_skips_finished_folds_and_retrains_only_a_missing_one(quick_run, cohort):
    run, _ = quick_run
    outputs = sorted((run / "folds").rglob("fold*.*")) + [run / "model.keras"]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    train(make_config(cohort, run, BACKBONES, quick=True, progress=False))
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    log = (run / "train.log").read_text().split("noa-edge train")[-1]
    assert log.count("done before, skipped") == 2 * 2 + 1 and "epoch 1/1" not in log

    selected = json.loads((run / "run.json").read_text())["selected_backbone"]
    (run / "folds" / "MobileNetV2" / "fold2.json").unlink()
    report = train(make_config(cohort, run, BACKBONES, quick=True, progress=False))
    log = (run / "train.log").read_text().split("noa-edge train")[-1]
    assert "MobileNetV2 fold 2/2 epoch 1/1" in log and "MobileNetV2 fold 1/2 epoch" not in log
    assert "NASNetMobile fold 1/2: done before" in log and "NASNetMobile fold 2/2: done before" in log
    changed = {str(p.relative_to(run)) for p in outputs if p.stat().st_mtime_ns != before[p]}
    expected = {"folds/MobileNetV2/fold2.json", "folds/MobileNetV2/fold2.npz"}
    if report["selected_backbone"] != selected:  # the retrained fold may change the winner; then the final model
        expected.add("model.keras")
    assert changed == expected


@pytest.mark.slow  # trains a real network
def test_resume_refuses_a_run_made_with_other_settings(quick_run, cohort):
    run, _ = quick_run
    with pytest.raises(TrainError, match="other settings.*input_size"):
        train(make_config(cohort, run, BACKBONES, quick=True, input_size=72, progress=False))


# ------------------------------------------------------------------------------------- Grad-CAM
def _pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _check_cam_is_grad_cam(model, images):
    from converters.gradcam import gradient_grad_cam

    cam = np.asarray(model.predict(images, verbose=0)["cam"])
    grad, _ = gradient_grad_cam(model, images)
    assert cam.shape == grad.shape and cam.shape[1] * cam.shape[2] >= 4
    shuffled = np.random.default_rng(0).permutation(cam.shape[1] * cam.shape[2])
    for c, g in zip(cam, grad, strict=True):
        assert _pearson(c, g) >= 0.99
        assert np.polyfit(g.ravel(), c.ravel(), 1)[0] > 0  # positive scale
        assert _pearson(c.ravel()[shuffled], g.ravel()) < 0.99  # the check can fail


@pytest.mark.slow  # trains a real network
def test_saved_model_cam_equals_gradient_grad_cam(quick_run):
    import tensorflow as tf

    run, _ = quick_run
    model = tf.keras.models.load_model(run / "model.keras")
    images = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    out = model.predict(images, verbose=0)
    assert set(out) == {"prob", "cam"} and out["prob"].shape == (4, 1)
    _check_cam_is_grad_cam(model, images)
    bn = [layer.momentum for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert bn and max(bn) <= 0.9  # ImageNet-length momenta (0.9997) leave inference statistics untrained


def test_cam_equals_gradient_grad_cam_on_a_larger_map():
    from converters.models import build_cam_model

    model = build_cam_model("NASNetMobile", 128, seed=2)  # 4x4 feature map; the paper's winner
    rng = np.random.default_rng(2)
    head = model.get_layer("head_dense")
    w, b = head.get_weights()
    head.set_weights([rng.normal(0, 1, w.shape).astype("float32"), b + 0.3])  # a non-trivial head
    images = rng.integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    images[:, 30:70, 50:100] = 255  # structure so the maps are not flat
    _check_cam_is_grad_cam(model, images)


# ------------------------------------------------------------------------------------ bad inputs
def _assert_clean_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in result.output, result.output


def test_cli_empty_dataset(cohort, tmp_path):
    empty = _copy_dataset(cohort, tmp_path / "empty", keep_patient=lambda p: False)
    _assert_clean_error(_cli(["train", str(empty), "--out", str(tmp_path / "r"), "--quick", "--quiet"]),
                        "images.csv", "no image rows")


def test_cli_controls_only_is_empty_for_the_task(cohort, tmp_path):
    ds = _copy_dataset(cohort, tmp_path / "controls", keep_patient=lambda p: p["group"] == "control")
    _assert_clean_error(_cli(["train", str(ds), "--out", str(tmp_path / "r"), "--quick", "--quiet"]),
                        "no NOA or OA")


def test_cli_one_class_only(cohort, tmp_path):
    ds = _copy_dataset(cohort, tmp_path / "noa", keep_patient=lambda p: p["group"] == "NOA")
    _assert_clean_error(_cli(["train", str(ds), "--out", str(tmp_path / "r"), "--quick", "--quiet"]),
                        "one class only", "NOA")


def test_cli_fold_without_positives(cohort, tmp_path):
    _assert_clean_error(_cli(["train", str(cohort), "--out", str(tmp_path / "r"), "--quick", "--folds", "8",
                              "--max-images", "100", "--quiet"]),
                        "only 6 NOA patients for 8 folds", "no positives")
    assert not (tmp_path / "r" / "folds").exists()


def test_cli_missing_weights_file_and_hub_weights(cohort, tmp_path):
    _assert_clean_error(_cli(["train", str(cohort), "--out", str(tmp_path / "r"), "--quick", "--backbones",
                              "NASNetMobile", "--weights", str(tmp_path / "nope.h5")]),
                        "weights file not found", "nope.h5")
    # --weights imagenet is no longer refused outright: Keras cache or download, offline one line naming the
    # file and the folder (tests/test_imagenet_weights.py, with the network cut there)
    _assert_clean_error(_cli(["train", str(cohort), "--out", str(tmp_path / "r"), "--quick", "--backbones",
                              "VGG16"]), "unknown backbone")


def test_cli_train_extra_missing(cohort, tmp_path, monkeypatch):
    import converters.train as train_module
    from converters import TrainExtraMissing

    def missing(module="tensorflow"):
        raise TrainExtraMissing(f"this command needs the [train] extra ({module} is not installed): "
                                "run  pip install -e '.[train]'")

    monkeypatch.setattr(train_module, "require_train_extra", missing)
    _assert_clean_error(_cli(["train", str(cohort), "--out", str(tmp_path / "r"), "--quick"]),
                        "[train] extra", "pip install")
