"""`noa-edge simulate --cine PATH`: a short scan video as an ultrasound cart's video output shows it.

The probe slides over one phantom testis (the speckle moves with the tissue because the scatterer field
is fixed and only the probe window moves), with a few frozen stretches where the sonographer pressed
FREEZE: consecutive identical screens, which the device's freeze detector must find. A sidecar JSON
(PATH + ".json") lists the frozen frame ranges and the testis ROI of every frame, for tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converters.bmode import SCANNERS, Scene, acquire, compose_screen
from converters.errors import PhantomError

CODECS = {".avi": "MJPG", ".mp4": "mp4v"}  # both written and read back by opencv-python-headless here


def freeze_plan(n_frames: int) -> list[tuple[int, int]]:
    """Frozen stretches [start, end) — two of them, about 1.3 s and 1 s at 15 fps."""
    a = (int(n_frames * 0.30), int(n_frames * 0.30) + max(2, n_frames // 6))
    b = (int(n_frames * 0.70), int(n_frames * 0.70) + max(2, n_frames // 8))
    return [a, (b[0], min(b[1], n_frames))]


def write_cine(path: Path, seed: int = 0, image_signal: float = 1.0, seconds: float = 8.0, fps: int = 15,
               severity: float = 2.5, progress: bool = True) -> Path:
    """Render the scan video to `path` (.avi MJPG or .mp4 mp4v) and its sidecar JSON; returns `path`."""
    import cv2
    from tqdm import tqdm

    path = Path(path)
    codec = CODECS.get(path.suffix.lower())
    if codec is None:
        raise PhantomError(f"--cine {path}: use a .avi (MJPG) or .mp4 (mp4v) file name")
    if seconds <= 0 or fps <= 0:
        raise PhantomError("cine length and frame rate must be positive")
    path.parent.mkdir(parents=True, exist_ok=True)
    scanner = SCANNERS["development"]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, 0xC1E]))
    travel_mm = 24.0
    wide = scanner.width_mm + travel_mm
    k = image_signal
    scene = Scene(cx=wide / 2.0, cz=17.0, a=21.0, b=9.5, tilt=0.03, echogenicity=float(np.exp(-k * 0.09 * severity)),
                  texture=0.03 + k * 0.035 * severity,
                  patches=[(rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.5), 0.12, 0.25, 0.3 + 0.1 * k * severity)
                           for _ in range(3)],
                  microliths=[(rng.uniform(-0.7, 0.7), rng.uniform(-0.5, 0.5)) for _ in range(2)])
    bmode = acquire(scene, scanner, rng, width_mm=wide)  # one fixed tissue, the probe moves over it

    n = max(2, int(round(seconds * fps)))
    frozen = freeze_plan(n)
    frozen_at = {i for a, b in frozen for i in range(a, b)}
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), scanner.screen)
    if not writer.isOpened():
        raise PhantomError(f"OpenCV cannot write {codec} video to {path}")
    rois, last = [], None
    for i in tqdm(range(n), desc="cine", unit="frame", disable=not progress):
        if i in frozen_at and last is not None:
            screen, roi = last
            screen = screen.copy()
            cv2.putText(screen, "FROZEN", (680, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (80, 200, 255), 2, cv2.LINE_AA)
        else:
            offset = travel_mm / 2.0 * (1.0 + np.sin(2.0 * np.pi * i / n * 1.5 - np.pi / 2))
            screen, roi = compose_screen(bmode, scene, scanner, "R", 0.0, caliper=False,
                                         frame_label=f"LIVE  #{i:04d}", x_offset_mm=float(offset))
            # Live frames: a little electronic/display noise, so no two live frames are identical.
            ox, oy = scanner.origin
            h, w = int(scanner.depth_mm * scanner.px_per_mm), int(scanner.width_mm * scanner.px_per_mm)
            area = screen[oy: oy + h, ox: ox + w].astype(np.int16)
            area += rng.integers(-3, 4, size=area.shape[:2], dtype=np.int16)[:, :, None]
            screen[oy: oy + h, ox: ox + w] = np.clip(area, 0, 255).astype(np.uint8)
            last = (screen, roi)
        rois.append([int(v) for v in roi])
        writer.write(cv2.cvtColor(screen, cv2.COLOR_RGB2BGR))
    writer.release()

    cap = cv2.VideoCapture(str(path))
    read = 0
    while cap.read()[0]:
        read += 1
    cap.release()
    if read != n:
        raise PhantomError(f"wrote {n} frames to {path} but OpenCV reads back {read}")
    sidecar = {"video": path.name, "codec": codec, "fps": fps, "frames": n, "screen": list(scanner.screen),
               "frozen": [list(r) for r in frozen], "roi_per_frame": rois, "seed": seed,
               "synthetic": True}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar) + "\n", encoding="utf-8")
    return path
