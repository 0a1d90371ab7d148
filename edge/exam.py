"""The exam: what one analysis produced, as the store keeps it and the API, pages and exports read it.

A TypedDict, not a class: the exam is stored as JSON and returned as JSON, so the dict is the honest
shape; this type names its keys for the reader and for mypy. `total=False` because an exam grows along
the path (the pipeline fills the result, the store adds id/uid/created, `with_images` adds the bytes).
"""

from __future__ import annotations

from typing import Any, TypedDict


class ExamBundle(TypedDict, total=False):
    name: str | None
    sha256: str
    synthetic_demo: bool
    variant: str


class Exam(TypedDict, total=False):
    id: int                              # store row id (added by the store)
    uid: str                             # stable unique id (added by the store)
    created: str                         # ISO-8601 UTC (added by the store)
    trigger: str                         # upload | button | freeze | folder | dicom
    source: str                          # the capture source's description, or "upload"
    patient_id: str | None               # optional, local only, never logged
    frame_id: str                        # the held frame analysed (edge.held_frames)
    frame_sha256: str                    # sha256 of its uint8 RGB (H, W, 3) pixels, C order
    held_at: str                         # when the frame was held (ISO-8601, local time with offset)
    frame_trigger: str                   # how the frame was held: user | upload | freeze | folder | dicom | button
    side: str | None                     # L | R (which testis), when known
    context: str | None                  # form | patient_context | None: where the clinical values came from
    inputs_raw: dict[str, Any]           # the clinical values as typed
    thresholds: dict[str, float | None]  # {"nomogram", "dl_only"}: the bundle's two cut-offs
    labels: dict[str, str]               # {"positive", "negative"}
    frame_size: list[int]                # [width, height] of the analysed frame
    image_area: list[int]                # [x, y, w, h] of the B-mode image area
    roi: list[int]                       # [x, y, w, h] drawn on exactly the analysed frame
    roi_method: str                      # auto | manual
    inputs: dict[str, Any]               # clinical values keyed by nomogram source (edge.clinical)
    dl_probability: float
    nomogram_probability: float | None   # None: DL-only (no nomogram, or clinical values missing)
    points: dict[str, float]
    total_points: float | None
    linear_predictor: float | None
    threshold: float
    label: str                           # the bundle's positive or negative label
    basis: str                           # nomogram | dl_only
    notes: list[str]
    ood: bool | None                     # True: the image is unlike the training data (edge/ood.py); None: no guard
    ood_score: float | None              # min over classes of the squared Mahalanobis distance of the features
    ood_threshold: float | None          # the bundle's threshold for the variant that ran
    bundle: ExamBundle
    timings: dict[str, float]            # ms per pipeline stage + total
    study_instance_uid: str              # when the frame came over DICOM
    sop_instance_uid: str
    modality: str
    frame_png: bytes                     # only with_images=True
    overlay_png: bytes                   # only with_images=True
