"""The whole toolchain as a user runs it, through the real CLI, each stage reading only what the previous
one wrote (docs/CONTRACTS.md): simulate -> validate -> train --quick -> nomogram -> convert -> bundle
verify/info -> evaluate on the external cohort -> serve + POST /api/analyze.

Every stage is a subprocess of the installed `noa-edge` (TensorFlow stays out of the test process); the
daemon is the real server on a free port with real LiteRT. Nothing is mocked; the Edge TPU compiler and
device are absent here, so the coral target yields the int8 model and its preflight only.

Cohort: 8 OA + 8 NOA + 2 controls, external 12 patients. Smaller cohorts break the chain on purpose-built
checks: 2+2 fails training (a 2-fold training part has one patient per class, so the inner validation split
leaves one class) and 4+4 makes the 4-predictor nomogram separate perfectly (refused with a clear error);
6+6 works with seed 0, 8+8 leaves a margin. Per-step wall times are printed and written to
test-artifacts/end_to_end_times.json.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, DaemonProcess
from reference_image import assert_close_pixels, expected_model_input

pytestmark = pytest.mark.slow  # trains and converts a real (tiny) network: ~3 minutes on 2 cores

COHORT = ["--oa", "8", "--noa", "8", "--controls", "2", "--external", "12", "--seed", "0"]
BACKBONE = "NASNetMobile"  # the deployable backbone (Edge TPU friendly)
QUICK_SIZE = 64
STEP_TIMEOUT_S = 900
ARTIFACTS = ROOT / "test-artifacts"


def noa_edge() -> list[str]:
    """The installed console script next to this interpreter, else the module (same Typer app)."""
    script = Path(sys.executable).with_name("noa-edge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edge.cli"]


def quiet_env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Chain:
    """Runs CLI steps in one work folder; a failing step fails with its command, stdout and stderr."""

    def __init__(self, work: Path):
        self.work = work
        self.times: dict[str, float] = {}
        self.outputs: dict[str, subprocess.CompletedProcess] = {}

    def step(self, name: str, *args, expect_rc: int = 0) -> subprocess.CompletedProcess:
        cmd = [*noa_edge(), *[str(a) for a in args]]
        shown = " ".join(cmd)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=self.work, capture_output=True, text=True, env=quiet_env(),
                                  timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"step {name!r} timed out after {STEP_TIMEOUT_S} s: {shown}\n"
                                 f"--- stderr (tail) ---\n{(exc.stderr or b'')[-4000:]!r}") from None
        self.times[name] = round(time.perf_counter() - t0, 1)
        self.outputs[name] = proc
        assert proc.returncode == expect_rc, (
            f"step {name!r} exited {proc.returncode} (expected {expect_rc}): {shown}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-4000:]}\n--- stdout (tail) ---\n{proc.stdout[-2000:]}")
        return proc


@pytest.fixture(scope="module")
def chain(tmp_path_factory, request):
    """simulate -> validate (both cohorts) -> train --quick -> nomogram -> convert -> verify -> info -> evaluate."""
    c = Chain(tmp_path_factory.mktemp("e2e"))
    c.dataset, c.external = c.work / "dataset", c.work / "dataset" / "external"
    c.run, c.bundle, c.eval_json = c.work / "run", c.work / "bundle", c.work / "evaluation.json"

    def report_times():
        if not c.times:
            return
        lines = [f"  {k:<22} {v:7.1f} s" for k, v in c.times.items()]
        lines.append(f"  {'total':<22} {sum(c.times.values()):7.1f} s")
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line("\nend-to-end chain, wall time per step:\n" + "\n".join(lines))
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "end_to_end_times.json").write_text(json.dumps(c.times, indent=2))

    request.addfinalizer(report_times)
    c.step("simulate", "simulate", c.dataset, *COHORT, "--quiet")
    c.step("validate", "validate", c.dataset)
    c.step("validate external", "validate", c.external)
    c.step("train --quick", "train", c.dataset, "--out", c.run, "--quick", "--backbones", BACKBONE, "--quiet")
    c.step("nomogram", "nomogram", c.run, "--bootstrap", "20", "--seed", "0")
    c.step("convert", "convert", c.run, "--out", c.bundle, "--targets", "cpu,coral", "--calibration-size", "16",
           "--seed", "0")
    c.step("bundle verify", "bundle", "verify", c.bundle)
    c.step("bundle info", "bundle", "info", c.bundle)
    c.step("evaluate", "evaluate", c.bundle, c.external, "--json", c.eval_json)
    return c


def test_simulated_cohorts_validate(chain):
    dev, ext = read_csv(chain.dataset / "images.csv"), read_csv(chain.external / "images.csv")
    assert len(dev) == 2 * 18 and len(ext) == 2 * 12  # two testes per patient
    for name in ("validate", "validate external"):
        assert "valid dataset" in chain.outputs[name].stdout


def test_training_run_feeds_the_nomogram(chain):
    run = json.loads((chain.run / "run.json").read_text())
    assert run["selected_backbone"] == BACKBONE and run["input_size"] == QUICK_SIZE and run["folds"] == 2
    assert Path(run["dataset"]).resolve() == chain.dataset.resolve()
    assert (chain.run / "model.keras").is_file()
    oof = read_csv(chain.run / "oof_predictions.csv")
    groups = {p["patient_id"]: p["group"] for p in read_csv(chain.dataset / "patients.csv")}
    labelled = {r["image_id"] for r in read_csv(chain.dataset / "images.csv") if groups[r["patient_id"]] != "control"}
    assert {r["image_id"] for r in oof} == labelled  # every OA/NOA image once, no control
    assert {r["fold"] for r in oof} == {"1", "2"} and all(0.0 <= float(r["prob"]) <= 1.0 for r in oof)
    assert {r["backbone"] for r in oof} == {BACKBONE}


def test_nomogram_fits_with_warnings_only(chain):
    proc = chain.outputs["nomogram"]
    assert not [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.lower().startswith("error")], proc.stderr
    spec = json.loads((chain.run / "nomogram.json").read_text())
    assert spec["schema"] == "noa-edge.nomogram/1" and spec["placeholder"] is False
    assert [p["name"] for p in spec["predictors"]] == ["dl_logit", "fsh", "volume_ml", "edv_cm_s"]
    assert all(math.isfinite(p["coef"]) for p in spec["predictors"]) and 0.0 < spec["threshold"] < 1.0
    assert spec["n_development"] == 32
    assert (chain.run / "report.html").stat().st_size > 1000


def test_bundle_carries_the_run(chain):
    manifest = json.loads((chain.bundle / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [1, QUICK_SIZE, QUICK_SIZE, 3] and manifest["input"]["dtype"] == "uint8"
    assert {"fp32", "fp16", "int8"} <= set(manifest["variants"])
    assert manifest["default_variant"]["cpu"] == "fp32"
    assert manifest["nomogram"] == json.loads((chain.run / "nomogram.json").read_text())
    assert manifest["synthetic_demo"] is True  # a phantom dataset is flagged without --synthetic-demo
    assert manifest["provenance"]["backbone"] == BACKBONE
    assert "OK bundle" in chain.outputs["bundle verify"].stdout
    info = chain.outputs["bundle info"].stdout
    assert "SYNTHETIC DEMO" in info and "model_int8.tflite" in info and "edge tpu" in info


def test_evaluate_external_cohort(chain):
    res = json.loads(chain.eval_json.read_text())
    for key in ("auc", "auc_ci", "dl_auc", "sensitivity", "specificity", "calibration_slope", "n_patients",
                "n_images"):
        assert key in res, f"evaluate --json lacks {key!r}: {sorted(res)}"
    lo, hi = res["auc_ci"]
    assert 0.0 <= lo <= res["auc"] <= hi <= 1.0
    for key in ("dl_auc", "sensitivity", "specificity"):
        assert 0.0 <= res[key] <= 1.0, (key, res[key])
    assert math.isfinite(res["calibration_slope"])
    ext_images = read_csv(chain.external / "images.csv")
    assert res["n_images"] == len(ext_images) and res["excluded"] == {}
    assert res["n_patients"] == len(read_csv(chain.external / "patients.csv")) == 12
    manifest = json.loads((chain.bundle / "manifest.json").read_text())
    assert res["threshold"] == manifest["threshold"] and res["refit"] is False
    assert res["source_kind"] == "bundle" and "fp32" in chain.outputs["evaluate"].stderr  # scored by the fp32 variant


def test_serve_analyzes_like_the_runtime(chain):
    """The daemon's answer for one external image equals fp32 LiteRT on the shared ROI crop, plus the nomogram."""
    from converters.dataset import load_dataset
    from edge.nomogram import load_nomogram
    from edge.preprocess import crop_roi
    from edge.runtime import ModelRunner

    ds = load_dataset(chain.external)
    row = next(r for r in ds.labelled_images() if None not in (r["fsh"], r["volume_ml"], r["edv_cm_s"]))
    manifest = json.loads((chain.bundle / "manifest.json").read_text())
    runner = ModelRunner(chain.bundle / manifest["variants"]["fp32"]["file"], variant="fp32")
    frame = ds.read_image(row)
    model_input = crop_roi(frame, row["roi"], QUICK_SIZE)
    # the shared crop against the test's own numpy crop (rows y.., columns x.., luma, area resize), so a geometry
    # bug in crop_roi cannot cancel out between "host" and "device" below
    assert_close_pixels(model_input, expected_model_input(frame, row["roi"], QUICK_SIZE))
    expected_prob, _ = runner.run(model_input)

    t0 = time.perf_counter()
    daemon = DaemonProcess(chain.bundle, chain.work / "daemon-data", program=noa_edge(), threads=None,
                           log_path=chain.work / "serve.log")
    url = daemon.url
    try:
        def failure(what: str) -> str:
            return f"serve: {what}: {' '.join(daemon.args)}\n--- output (tail) ---\n{daemon.log()[-4000:]}"

        daemon.wait_ready(timeout=120)
        chain.times["serve start"] = round(time.perf_counter() - t0, 1)

        t0 = time.perf_counter()
        png = ds.image_path(row).read_bytes()
        form = {"roi": ",".join(str(v) for v in row["roi"]), "fsh": str(row["fsh"]),
                "volume_ml": str(row["volume_ml"]), "edv": str(row["edv_cm_s"])}
        resp = httpx.post(url + "/api/analyze", files={"image": (Path(row["file"]).name, png, "image/png")},
                          data=form, timeout=60)
        chain.times["serve analyze"] = round(time.perf_counter() - t0, 1)
        assert resp.status_code == 200, failure(f"POST /api/analyze -> {resp.status_code} {resp.text}")
        exam = resp.json()
        assert exam["bundle"]["variant"] == "fp32" and exam["roi_method"] == "manual"
        assert exam["roi"] == list(row["roi"])
        assert abs(exam["dl_probability"] - float(expected_prob)) <= 1e-5, (exam["dl_probability"], expected_prob)
        assert exam["nomogram_probability"] is not None and exam["basis"] == "nomogram", exam
        nomo = load_nomogram(manifest["nomogram"])
        want = nomo.predict({"dl_probability": exam["dl_probability"], "fsh": row["fsh"],
                             "volume_ml": row["volume_ml"], "edv_cm_s": row["edv_cm_s"]})["probability"]
        assert exam["nomogram_probability"] == pytest.approx(want, abs=1e-9)

        listed = httpx.get(url + "/api/exams", timeout=10).json()
        assert exam["id"] in [e["id"] for e in listed["exams"]] and listed["total"] == 1
    finally:
        daemon.stop()
