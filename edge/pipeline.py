"""Frame → result: image area + ROI → crop → LiteRT invoke → CAM overlay → nomogram → store.

Every stage is timed with time.perf_counter and the timings (ms) are returned and stored with the exam,
so the page, the API and the benchmarks all report the same numbers.

Hot-path choices (measured in benchmarks/levers_pipeline.py, see benchmarks/RESULTS.md "## Pipeline"):
the frame is converted to gray once and every ROI stage works on that; the frame is stored as an
uncompressed PNG (deflate level 0, ~2 ms) and the store recompresses it losslessly (level 1) once the daemon
is idle; the ROI image is not stored (the store derives it from the frame + ROI on request); the CAM
overlay, only a picture, is a JPEG (q90), still under the exam key `overlay_png` (readers decode by
content: Pillow, cv2, browsers).
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from . import DEMO_DISCLAIMER
from .bundle import sha256_file
from .preprocess import crop_roi
from .roi import Box, find_image_area, propose_roi

log = logging.getLogger("noa_edge.pipeline")

LAMBERT = 0.71                      # validated ultrasound volume coefficient (0.52 underestimates ~31%)
CLINICAL_FIELDS = {                 # form field -> (nomogram source, label, unit, fallback plausible range)
    "fsh": ("fsh", "Serum FSH", "IU/L", (0.0, 200.0)),
    "volume_ml": ("volume_ml", "Testicular volume", "mL", (0.5, 60.0)),
    "edv": ("edv_cm_s", "EDV", "cm/s", (0.0, 50.0)),
}
DIMENSION_RANGE_CM = (0.3, 8.0)
CAM_SIZE_MIN = 224                  # overlay is drawn at least this big so the page shows detail


class InputError(ValueError):
    """A user input (image, ROI, lab value) the daemon refuses; `field` names the form field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def decode_image_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """PNG/JPEG/BMP/TIFF or DICOM bytes -> uint8 RGB; InputError says why not."""
    from .preprocess import to_rgb_uint8

    if not data:
        raise InputError("image", f"{name}: the file is empty")
    if len(data) > 132 and data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom")):
        from .dicom_io import decode_dicom_bytes

        try:
            frames = decode_dicom_bytes(data, name)
        except Exception as exc:
            raise InputError("image", f"{name}: not a decodable DICOM image ({exc})") from None
        if not frames:
            raise InputError("image", f"{name}: DICOM file holds no image frames")
        return frames[len(frames) // 2]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError("image", f"{name}: not a readable image (PNG, JPEG or DICOM expected)")
    if img.shape[0] < 32 or img.shape[1] < 32:
        raise InputError("image", f"{name}: image is {img.shape[1]}×{img.shape[0]} pixels; at least 32×32 needed")
    return to_rgb_uint8(img)


def parse_clinical(form: dict, ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """Form values (strings or numbers; missing/empty = not given) -> clean floats keyed by nomogram source.

    Volume comes either as volume_ml or as length/width/height in cm (Lambert: 0.71·L·W·H); the formula
    used is recorded. Raises InputError for the first bad field, naming field, value, unit and range."""
    ranges = ranges or {}
    clean: dict = {}

    def number(field: str, label: str, unit: str, lo: float, hi: float):
        raw = form.get(field)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        try:
            value = float(str(raw).strip().replace(",", "."))
        except ValueError:
            raise InputError(field, f"{label}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(field, f"{label}: {raw!r} is not a finite number")
        if not lo <= value <= hi:
            raise InputError(field, f"{label} = {value:g} {unit} is outside the plausible range {lo:g}–{hi:g} {unit}")
        return value

    for field, (source, label, unit, fallback) in CLINICAL_FIELDS.items():
        lo, hi = ranges.get(source, fallback)
        value = number(field, label, unit, lo, hi)
        if value is not None:
            clean[source] = value
    dims = {f: number(f, f"Testis {f.split('_')[0]}", "cm", *DIMENSION_RANGE_CM)
            for f in ("length_cm", "width_cm", "height_cm")}
    given = [f for f, v in dims.items() if v is not None]
    if given and "volume_ml" in clean:
        raise InputError("volume_ml", "give either the testicular volume in mL or length/width/height in cm, not both")
    if given and len(given) < 3:
        missing = ", ".join(f for f in dims if dims[f] is None)
        raise InputError(missing.split(",")[0], f"testis dimensions: {missing} missing (need length, width and height in cm)")
    if len(given) == 3:
        volume = LAMBERT * dims["length_cm"] * dims["width_cm"] * dims["height_cm"]
        lo, hi = ranges.get("volume_ml", CLINICAL_FIELDS["volume_ml"][3])
        if not lo <= volume <= hi:
            raise InputError("length_cm", f"volume from dimensions 0.71·L·W·H = {volume:.1f} mL is outside the "
                                          f"plausible range {lo:g}–{hi:g} mL")
        clean["volume_ml"] = round(volume, 3)
        clean["volume_formula"] = "lambert_0.71"
        clean.update({k: v for k, v in dims.items()})
    elif "volume_ml" in clean:
        clean["volume_formula"] = "entered"
    return clean


@contextmanager
def _stage(timings: dict, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round((time.perf_counter() - t0) * 1000.0, 3)


def _png_chunk(tag: bytes, data: bytes) -> list[bytes]:
    """The chunk's parts, joined once by the caller (the IDAT of a stored frame is ~1.4 MB: no extra copies)."""
    return [struct.pack(">I", len(data)), tag, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))]


def png_bytes(image: np.ndarray, level: int = 1) -> bytes:
    """uint8 RGB (H, W, 3) or gray (H, W) -> lossless PNG bytes.

    Written directly with zlib (row filter "none", deflate `level`): on an 800×600 cine frame ~3× faster
    than cv2.imencode at level 1 for ~7 % more bytes, no RGB→BGR copy, and zlib releases the GIL, so it
    can run beside the model invoke."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"png_bytes needs uint8 gray (H, W) or RGB (H, W, 3), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else 3
    raw = np.empty((h, w * channels + 1), np.uint8)
    raw[:, 0] = 0  # filter type "none" on every row
    raw[:, 1:] = img.reshape(h, w * channels)
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", *_png_chunk(b"IHDR", header),
                     *_png_chunk(b"IDAT", zlib.compress(raw.data, level)), *_png_chunk(b"IEND", b"")])


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB -> JPEG bytes (for pictures only, never for the stored frame: that stays lossless)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def gray_if_gray(rgb: np.ndarray, gray: np.ndarray | None = None) -> np.ndarray:
    """The 1-channel frame when all three channels are equal (a true grayscale frame: DICOM, PNG export),
    else the RGB frame unchanged. A sparse sample is checked first so colour frames exit at once.
    `gray`: the frame's cv2 RGB2GRAY if the caller has it (that conversion returns the channel value
    exactly when R = G = B, so one comparison against it decides)."""
    if rgb.ndim == 2:
        return rgb
    sample = rgb[::31, ::31]
    if not (np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2])):
        return rgb
    if gray is None:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if cv2.norm(rgb, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), cv2.NORM_INF) == 0:
        return gray
    return rgb


def frame_png_bytes(frame_rgb: np.ndarray, level: int = 1, gray: np.ndarray | None = None) -> bytes:
    """The stored frame: lossless PNG, 1-channel when the frame is grayscale (a third of the bytes and
    time; PNG readers give RGB back: Pillow .convert("RGB"), cv2.IMREAD_COLOR, browsers)."""
    return png_bytes(gray_if_gray(frame_rgb, gray), level)


def roi_view(frame: np.ndarray, roi: Box) -> np.ndarray:
    """The ROI as shown on the page and under the CAM: the crop, bilinear-upscaled so its short side is
    at least CAM_SIZE_MIN. Also how the store derives the ROI image from a stored frame."""
    x, y, w, h = (int(v) for v in roi)
    view = frame[y:y + h, x:x + w]
    scale = max(1.0, CAM_SIZE_MIN / max(1, min(w, h)))
    if scale > 1.0:
        view = cv2.resize(view, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
    return view


_JET_RGB = np.ascontiguousarray(
    cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, :, ::-1])


def cam_overlay(roi_rgb: np.ndarray, cam: np.ndarray, positive: bool, alpha: float = 0.4) -> np.ndarray:
    """Class activation map of the predicted class (ReLU, max-normalised), bilinear-upsampled onto the ROI
    and blended as a JET heatmap. For an OA call the map is negated: regions arguing for OA light up.
    JET comes from an RGB lookup table and cv2.blendLinear weights per pixel: no float copies of the ROI."""
    cam = np.asarray(cam, np.float32).squeeze()
    if cam.ndim != 2:
        raise ValueError(f"cam output has shape {cam.shape}, expected 2-D")
    cam = cam if positive else -cam
    cam = np.maximum(cam, 0.0)
    cam = cam / cam.max() if cam.max() > 0 else cam
    h, w = roi_rgb.shape[:2]
    heat = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), _JET_RGB)
    weight = alpha * heat  # cool regions stay the plain image
    return cv2.blendLinear(np.ascontiguousarray(roi_rgb), colour, 1.0 - weight, weight)


def choose_variant(bundle, wanted: str = "auto") -> str:
    """--variant auto: the Edge TPU variant when the bundle has one and libedgetpu loads, else the
    bundle's cpu default (fp32 on x86, where int8 is slower under XNNPACK). A named variant must exist."""
    if wanted and wanted != "auto":
        return bundle.choose_variant("cpu", wanted)
    if "edgetpu" in bundle.variants and _edgetpu_present():
        return "edgetpu"
    return bundle.choose_variant("cpu")


def _edgetpu_present() -> bool:
    import ctypes

    from .runtime import edgetpu_library

    try:
        ctypes.CDLL(edgetpu_library())
        return True
    except OSError:
        return False


class Analyzer:
    """Loads the bundle once (model + nomogram) and turns frames into stored exams. Thread-safe: one
    analysis at a time (the interpreter is not re-entrant and the device has few cores)."""

    def __init__(self, bundle_path: str | Path, variant: str = "auto", threads: int | None = None, store=None):
        from .bundle import load as load_bundle
        from .nomogram import load_nomogram

        self.bundle_path = Path(bundle_path)
        self.bundle = load_bundle(self.bundle_path)  # checks schema and every sha256; BundleError names the file
        self.manifest = self.bundle.manifest
        self.variant = choose_variant(self.bundle, variant)
        self.runner = self.bundle.runner(variant=self.variant, num_threads=threads)
        labels = self.manifest.get("labels", {})
        self.positive, self.negative = labels.get("positive", "NOA"), labels.get("negative", "OA")
        spec = self.manifest.get("nomogram")
        self.nomogram = load_nomogram(spec, positive_label=self.positive, negative_label=self.negative) if spec else None
        self.threshold = float(self.manifest.get("threshold", self.nomogram.threshold if self.nomogram else 0.5))
        self.dl_threshold = float(self.manifest.get("dl_threshold", 0.5))
        self.input_size = int(self.manifest["input"]["shape"][1])
        self.sha256 = sha256_file(self.bundle_path / "manifest.json")  # pins every file via their sha256s
        self.synthetic_demo = bool(self.manifest.get("synthetic_demo", False))
        self.store = store
        self._lock = threading.Lock()
        # 0: the frame is stored uncompressed and recompressed by the store when idle; 1: compressed inline
        self.frame_png_level = 0
        self.analyses = 0
        self.stage_totals_ms: dict[str, float] = {}

    # -- what the page and /api/health show
    def info(self) -> dict:
        runner = self.runner.info()
        return {"name": self.manifest.get("name"), "path": str(self.bundle_path), "sha256": self.sha256,
                "synthetic_demo": self.synthetic_demo, "disclaimer": DEMO_DISCLAIMER if self.synthetic_demo else "",
                "intended_use": self.manifest.get("intended_use", ""), "input_size": self.input_size,
                "threshold": self.threshold, "labels": {"positive": self.positive, "negative": self.negative},
                "nomogram": None if self.nomogram is None else {
                    "placeholder": self.nomogram.placeholder,
                    "predictors": [{"name": p.name, "source": p.source, "label": p.label, "unit": p.unit,
                                    "range": list(p.range)} for p in self.nomogram.predictors]},
                "runtime": runner}

    def clinical_ranges(self) -> dict[str, tuple[float, float]]:
        if self.nomogram is None:
            return {}
        return {p.source: p.range for p in self.nomogram.predictors if p.source != "dl_probability"}

    def nomogram_svg(self, exam: dict) -> str | None:
        """The nomogram drawn with this exam's values (None when it was DL-only)."""
        if self.nomogram is None:
            return None
        if exam.get("nomogram_probability") is None:
            return self.nomogram.render_svg()
        values = dict(exam.get("inputs", {}))
        values["dl_probability"] = exam["dl_probability"]
        return self.nomogram.render_svg(values)

    # -- the job
    def analyze(self, frame_rgb: np.ndarray, roi: Box | None = None, clinical: dict | None = None,
                patient_id: str | None = None, trigger: str = "upload", source: str = "",
                extra: dict | None = None) -> dict:
        """Run every stage on one frame and store the exam (whole or not at all). Returns the exam dict."""
        clinical = dict(clinical or {})
        timings: dict[str, float] = {}
        t_total = time.perf_counter()
        with self._lock:
            with _stage(timings, "image_area"):
                gray = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY) if frame_rgb.ndim == 3 else frame_rgb
                area = find_image_area(gray)
            with _stage(timings, "roi"):
                roi_method = "manual" if roi is not None else "auto"
                if roi is None:
                    roi = propose_roi(gray, area)
            with _stage(timings, "crop"):
                model_input = crop_roi(gray, roi, self.input_size)  # gray in: the same pixels as from RGB
            with _stage(timings, "invoke"):
                prob, cam = self.runner.run(model_input)
                prob = float(np.asarray(prob).reshape(-1)[0])
            with _stage(timings, "cam_overlay"):
                overlay = cam_overlay(roi_view(frame_rgb, roi), cam, positive=prob >= self.dl_threshold)
            with _stage(timings, "nomogram"):
                result = self._score(prob, clinical)
            with _stage(timings, "encode"):
                overlay_png = jpeg_bytes(overlay)  # a picture; the frame stays lossless
                frame_png = frame_png_bytes(frame_rgb, self.frame_png_level, gray)
            exam = {
                "trigger": trigger, "source": source, "patient_id": patient_id or None,
                "frame_size": [int(frame_rgb.shape[1]), int(frame_rgb.shape[0])],
                "image_area": [int(v) for v in area], "roi": [int(v) for v in roi], "roi_method": roi_method,
                "inputs": {k: v for k, v in clinical.items()}, **result,
                "bundle": {"name": self.manifest.get("name"), "sha256": self.sha256,
                           "synthetic_demo": self.synthetic_demo, "variant": self.variant},
                **(extra or {}),
            }
            # the stored copy has every stage but "store" itself (its duration is known only after the commit)
            with _stage(timings, "store"):
                exam["timings"] = dict(timings, total=round((time.perf_counter() - t_total) * 1000.0, 3))
                if self.store is not None:
                    exam = self.store.add_exam(exam, frame_png, None, overlay_png,  # ROI image derived on read
                                               recompress_frame=self.frame_png_level == 0)
            exam["timings"] = dict(timings, total=round((time.perf_counter() - t_total) * 1000.0, 3))
            self.analyses += 1
            for k, v in exam["timings"].items():
                self.stage_totals_ms[k] = self.stage_totals_ms.get(k, 0.0) + v
        log.info("exam %s: dl=%.3f nomogram=%s label=%s (%s, %.0f ms)", exam.get("id"), prob,
                 exam["nomogram_probability"], exam["label"], trigger, exam["timings"]["total"])
        return exam

    def _score(self, prob: float, clinical: dict) -> dict:
        needed = [p.source for p in self.nomogram.predictors if p.source != "dl_probability"] if self.nomogram else []
        missing = [s for s in needed if s not in clinical]
        out = {"dl_probability": prob, "nomogram_probability": None, "points": {}, "total_points": None,
               "linear_predictor": None, "notes": []}
        if self.nomogram is not None and not missing:
            values = {s: clinical[s] for s in needed}
            values["dl_probability"] = prob
            res = self.nomogram.predict(values)
            out.update(nomogram_probability=res["probability"], points=res["points"],
                       total_points=res["total_points"], linear_predictor=res["lp"], notes=res["notes"],
                       threshold=res["threshold"], label=res["label"], basis="nomogram")
            return out
        label = self.positive if prob >= self.dl_threshold else self.negative
        why = ("the bundle has no nomogram" if self.nomogram is None
               else "clinical values missing: " + ", ".join(missing))
        out.update(threshold=self.dl_threshold, label=label, basis="dl_only",
                   notes=[f"DL-only result ({why})"])
        return out
