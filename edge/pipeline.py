"""Frame → result: the Analyzer chains the stages and times each one.

held frame: pixels copied and hashed once, image area + ROI proposed (edge.held_frames, edge.roi)
→ crop (edge.preprocess) → invoke (edge.runtime) → CAM overlay (edge.cam)
→ nomogram (edge.nomogram, values parsed by edge.clinical) → encode (edge.imaging) → store (edge.store).
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
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import DEMO_DISCLAIMER
from .bundle import load as load_bundle
from .bundle import sha256_file
from .cam import cam_overlay, roi_view
from .clinical import VARIABLES
from .exam import Exam
from .held_frames import TRIGGERS, HeldFrame, make_held_frame
from .imaging import frame_png_bytes, jpeg_bytes
from .nomogram import load_nomogram
from .ood import OODGuard, flagged, load_guard
from .preprocess import crop_roi
from .roi import Box
from .runtime_select import select as select_runtime

log = logging.getLogger("noa_edge.pipeline")


@contextmanager
def _stage(timings: dict, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round((time.perf_counter() - t0) * 1000.0, 3)


class Analyzer:
    """Loads the bundle once (model + nomogram) and turns frames into stored exams. Thread-safe: one
    analysis at a time (the interpreter is not re-entrant and the device has few cores)."""

    def __init__(self, bundle_path: str | Path, variant: str = "auto", threads: int | None = None, store=None,
                 runtime: str = "auto"):
        self.bundle_path = Path(bundle_path)
        self.bundle = load_bundle(self.bundle_path)  # checks schema and every sha256; BundleError names the file
        self.manifest = self.bundle.manifest
        # --runtime: a named one, or auto = the fastest installed one that meets the fidelity targets (probed)
        self.selection = select_runtime(self.bundle, runtime, variant, threads)
        self.runner, self.variant = self.selection.runner, self.selection.variant
        labels = self.manifest.get("labels", {})
        self.positive, self.negative = labels.get("positive", "NOA"), labels.get("negative", "OA")
        spec = self.manifest.get("nomogram")
        self.nomogram = (load_nomogram(spec, positive_label=self.positive, negative_label=self.negative)
                         if spec else None)
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
        self.ood, self.ood_threshold, self.ood_reason = self._ood_guard()
        self.ood_flagged = 0  # exams flagged as unlike the training data since this bundle was loaded

    def _ood_guard(self) -> tuple[OODGuard | None, float | None, str]:
        """(guard, threshold of the running variant, why inactive): edge/ood.py. A bundle without a description
        (built before the guard) still serves; /api/health says the guard is off and why."""
        guard = load_guard(self.bundle_path, self.manifest)
        if guard is None:
            return None, None, "no OOD description in this bundle"
        threshold = guard.threshold_for(self.variant)
        if threshold is None:
            return None, None, f"the bundle's OOD description has no threshold for the {self.variant} variant"
        if not getattr(self.runner, "has_features", False):
            return None, None, f"the {self.variant} model has no 'features' output"
        return guard, threshold, ""

    def ood_info(self) -> dict:
        """Whether the out-of-distribution guard is active, its threshold, and why not (for /api/health)."""
        active = self.ood is not None
        return {"active": active, "threshold": self.ood_threshold, "variant": self.variant,
                "quantile": self.ood.quantile if self.ood is not None else None,
                "message": (f"active: an image scoring above {self.ood_threshold:.1f} is flagged as unlike the "
                            "training data" if active else f"inactive: {self.ood_reason}"),
                "flagged_since_load": self.ood_flagged}

    def _ood_check(self) -> dict:
        """The exam's OOD keys: score of the last run's features and whether it is above the threshold."""
        features = getattr(self.runner, "last_features", None)
        if self.ood is None or self.ood_threshold is None or features is None:
            return {"ood": None, "ood_score": None, "ood_threshold": None}
        score = self.ood.score(features)
        return {"ood": flagged(score, self.ood_threshold), "ood_score": round(score, 3),
                "ood_threshold": round(self.ood_threshold, 3)}

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
                "runtime": runner, "ood": self.ood_info()}

    def clinical_ranges(self) -> dict[str, tuple[float, float]]:
        if self.nomogram is None:
            return {}
        return {p.source: p.range for p in self.nomogram.predictors if p.source != "dl_probability"}

    def nomogram_svg(self, exam: Exam) -> str | None:
        """The nomogram drawn with this exam's values (None when it was DL-only)."""
        if self.nomogram is None:
            return None
        if exam.get("nomogram_probability") is None:
            return self.nomogram.render_svg()
        values = dict(exam.get("inputs", {}))
        values["dl_probability"] = exam["dl_probability"]
        return self.nomogram.render_svg(values)

    # -- the job
    def analyze(self, frame_rgb: np.ndarray | None = None, roi: Box | None = None, clinical: dict | None = None,
                patient_id: str | None = None, trigger: str = "upload", source: str = "",
                extra: dict | None = None, *, held: HeldFrame | None = None, roi_method: str | None = None,
                notes: list[str] | None = None) -> Exam:
        """Run every stage on one frame and store the exam (whole or not at all). Returns the exam dict.

        `held`: the held frame to analyse (edge.held_frames): its pixels, hash, image area and proposed
        ROI were computed once when it was held, and the exam records them. Without it `frame_rgb` is held
        on the fly (bench, scripts). `roi` None: the frame's own proposal (roi_method "auto"); a given ROI
        is "manual" unless roi_method says otherwise (the web layer checks that an "auto" ROI is the
        frame's proposal). `extra` adds keys to the exam (side, context, inputs_raw, DICOM UIDs);
        `notes` are shown with the result."""
        clinical = dict(clinical or {})
        timings: dict[str, float] = {}
        t_total = time.perf_counter()
        held_before = 0.0  # ms spent holding the frame before this call (its hash, image area, ROI)
        if held is None:
            if frame_rgb is None:
                raise ValueError("analyze() needs a frame or a held frame")
            held = make_held_frame(frame_rgb, trigger if trigger in TRIGGERS else "button", source)
        else:
            held_before = float(sum(held.timings.values()))
        frame_rgb, gray, area = held.frame, held.gray, held.area
        timings.update(held.timings)  # hash, image_area, roi: paid once, when the frame was held
        with self._lock:
            if roi is None:
                roi, roi_method = held.roi, "auto"
            else:
                roi_method = roi_method or "manual"
            with _stage(timings, "crop"):
                model_input = crop_roi(gray, roi, self.input_size)  # gray in: the same pixels as from RGB
            with _stage(timings, "invoke"):
                prob, cam = self.runner.run(model_input)
                prob = float(np.asarray(prob).reshape(-1)[0])
            with _stage(timings, "ood"):
                ood = self._ood_check()
            with _stage(timings, "cam_overlay"):
                overlay = cam_overlay(roi_view(frame_rgb, roi), cam, positive=prob >= self.dl_threshold)
            with _stage(timings, "nomogram"):
                result = self._score(prob, clinical)
                result["notes"] = list(notes or []) + result["notes"]
            with _stage(timings, "encode"):
                overlay_png = jpeg_bytes(overlay)  # a picture; the frame stays lossless
                frame_png = frame_png_bytes(frame_rgb, self.frame_png_level, gray)
            exam: Exam = {
                "trigger": trigger, "source": source, "patient_id": patient_id or None,
                "frame_id": held.frame_id, "frame_sha256": held.sha256, "held_at": held.held_at,
                "frame_size": [int(frame_rgb.shape[1]), int(frame_rgb.shape[0])],
                "image_area": [int(v) for v in area], "roi": [int(v) for v in roi], "roi_method": roi_method,
                "side": None, "context": None, "inputs_raw": {},
                "inputs": {k: v for k, v in clinical.items()}, **result,
                "thresholds": {"nomogram": self.threshold if self.nomogram is not None else None,
                               "dl_only": self.dl_threshold},
                "labels": {"positive": self.positive, "negative": self.negative},
                "bundle": {"name": self.manifest.get("name"), "sha256": self.sha256,
                           "synthetic_demo": self.synthetic_demo, "variant": self.variant},
                **ood,
                **(extra or {}),
            }
            # the stored copy has every stage but "store" itself (its duration is known only after the commit)
            with _stage(timings, "store"):
                exam["timings"] = dict(timings, total=round((time.perf_counter() - t_total) * 1000.0 + held_before, 3))
                if self.store is not None:
                    exam = self.store.add_exam(exam, frame_png, None, overlay_png,  # ROI image derived on read
                                               recompress_frame=self.frame_png_level == 0)
            exam["timings"] = dict(timings, total=round((time.perf_counter() - t_total) * 1000.0 + held_before, 3))
            self.analyses += 1
            self.ood_flagged += 1 if exam.get("ood") else 0
            for k, v in exam["timings"].items():
                self.stage_totals_ms[k] = self.stage_totals_ms.get(k, 0.0) + v
        log.info("exam %s: dl=%.3f nomogram=%s label=%s ood=%s (%s, %.0f ms)", exam.get("id"), prob,
                 exam["nomogram_probability"], exam["label"], exam.get("ood"), trigger, exam["timings"]["total"])
        return exam

    def _score(self, prob: float, clinical: dict) -> dict:
        needed = [p.source for p in self.nomogram.predictors if p.source != "dl_probability"] if self.nomogram else []
        missing = [s for s in needed if s not in clinical]
        out: dict[str, Any] = {"dl_probability": prob, "nomogram_probability": None, "points": {},
                               "total_points": None, "linear_predictor": None, "notes": []}
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
               else "clinical values missing: " + ", ".join(VARIABLES[m].label if m in VARIABLES else m
                                                            for m in missing))
        out.update(threshold=self.dl_threshold, label=label, basis="dl_only",
                   notes=[f"DL-only result ({why})"])
        return out
