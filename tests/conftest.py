"""Shared fixtures. `test_bundle`: a small real firmware bundle (MobileNetV2 CAM model at 96 px, TFLite fp32,
real nomogram) built once per session in a subprocess (TensorFlow stays out of the test process) and
cached in pytest's cache directory, keyed by the builder's source, so reruns are fast."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_BUNDLE_SIZE = 96

_BUILD = textwrap.dedent(r'''
    import hashlib, json, sys, datetime
    from pathlib import Path
    import numpy as np
    import tensorflow as tf
    from converters.models import build_cam_model
    from edge.nomogram import points_scaling
    from edge.bundle import finalize_manifest

    out, size = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    model = build_cam_model("MobileNetV2", size, seed=0)
    # a few steps on noise so prob is not a constant 0.5 for every image
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, size, size, 3), dtype=np.uint8)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype("float32")
    model.compile(optimizer="adam", loss={"prob": "binary_crossentropy"})
    model.fit(x, {"prob": y}, epochs=1, batch_size=8, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    data = converter.convert()
    (out / "model_fp32.tflite").write_bytes(data)

    sys.path.insert(0, "benchmarks")
    from make_bench_models import AXES, TEST_PREDICTORS  # the one fixed test nomogram (bench models share it)
    nomogram = {"schema": "noa-edge.nomogram/1", "placeholder": False, "intercept": 0.5,
                "predictors": TEST_PREDICTORS, "points": points_scaling(TEST_PREDICTORS, AXES),
                "threshold": 0.5, "threshold_method": "fixed_test_fixture"}
    (out / "MODEL_CARD.md").write_text("# test bundle\nTiny MobileNetV2 CAM model fitted on noise, for tests only.\n")
    manifest = {
        "schema_version": 1, "name": "test-bundle", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "synthetic_demo": True, "intended_use": "tests only",
        "labels": {"positive": "NOA", "negative": "OA"},
        "input": {"shape": [1, size, size, 3], "dtype": "uint8"},
        "outputs": {"prob": "prob", "cam": "cam"},
        "variants": {"fp32": {"file": "model_fp32.tflite", "target": "cpu", "dtype": "float32",
                              "input": {"dtype": "uint8", "scale": 1.0, "zero_point": 0}}},
        "default_variant": {"cpu": "fp32"},
        "nomogram": nomogram, "threshold": 0.5,
        "provenance": {"dataset": "noise", "dataset_sha256": "", "run": "", "cv_auc": None, "code_version": "test"},
    }
    finalize_manifest(out, manifest)  # the bundle writer: sizes, sha256s, nomogram and manifest digests
    print("built", out)
''')


@pytest.fixture(scope="session")
def test_bundle(request) -> Path:
    """Path to a small real bundle (fp32 TFLite, nomogram, synthetic_demo true)."""
    shared = (ROOT / "benchmarks" / "make_bench_models.py").read_text()
    key = hashlib.sha256((_BUILD + shared + str(TEST_BUNDLE_SIZE)).encode()).hexdigest()[:12]
    out = Path(request.config.cache.mkdir("noa-edge-test-bundle")) / key
    if not (out / "manifest.json").is_file():
        proc = subprocess.run([sys.executable, "-c", _BUILD, str(out), str(TEST_BUNDLE_SIZE)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"building the test bundle failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return out


# ------------------------------------------------------------------------------------- daemon helpers
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """`noa-edge serve` in a subprocess on a free port (the real CLI, the real server)."""

    def __init__(self, bundle: Path, data_dir: Path, source: str = "none", extra: list[str] | None = None,
                 log_path: Path | None = None, program: list[str] | None = None, threads: int | None = 1,
                 runtime: str | None = "litert"):
        """program: how to call noa-edge (default `python -m edge.cli`; the end-to-end test uses the installed
        script); threads None leaves the daemon's own default. runtime: LiteRT unless `extra` names one or
        runtime is None (= serve's own `auto`): a bundle with an ONNX variant (`bundle-onnx`) lets auto's timed
        probe may pick ONNX Runtime (|Δprob| ~1e-6) on a loaded machine, so a test comparing the daemon with
        LiteRT would depend on a race. `auto` itself is tested in tests/test_runtime_onnx.py."""
        import os

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [*(program or [sys.executable, "-m", "edge.cli"]), "serve", "--bundle", str(bundle),
                     "--data-dir", str(data_dir), "--source", source, "--port", str(self.port),
                     *(["--threads", str(threads)] if threads else []), *(extra or [])]
        if runtime and "--runtime" not in self.args:
            self.args += ["--runtime", runtime]
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.log_path = log_path or (Path(data_dir) / f"daemon-{self.port}.log")
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90.0) -> DaemonProcess:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="session")
def demo_cine() -> Path:
    from edge.capture import demo_cine_path

    return demo_cine_path()


def cine_rgb(cine: Path, index: int):
    """Frame `index` of a video file as uint8 RGB (the tests' one reader of the demo cine)."""
    import cv2

    cap = cv2.VideoCapture(str(cine))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok, f"{cine}: no frame {index}"
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def poll(check, timeout: float = 10.0, every: float = 0.05):
    """The first truthy value of check() within `timeout` s, else its last (falsy) value: the tests' one way
    to wait on a condition (never sleep-then-read)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return check()


def wait_until(check, what: str, timeout: float = 90.0, every: float = 0.1):
    """poll(), failing the test with what was awaited when it never came."""
    value = poll(check, timeout, every)
    if not value:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return value


@pytest.fixture(scope="module")
def client(daemon):
    """An HTTP client on the module's `daemon` fixture (each daemon test module defines its own daemon)."""
    import httpx

    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        yield c


# ------------------------------------------------------------------------------------- DICOM objects
def us_dicom_bytes(pixels, photometric: str = "MONOCHROME2", sop_class=None, **attrs) -> bytes:
    """An uncompressed ultrasound DICOM object with known pixels; (H, W) or (frames, H, W), uint8 or uint16.
    sop_class defaults to US Image / US Multi-frame Image Storage by the array's shape."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    sop_class = sop_class or (UltrasoundMultiFrameImageStorage if pixels.ndim == 3 else UltrasoundImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, "US"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "GOLDEN", generate_uid(), generate_uid()
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
