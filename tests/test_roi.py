"""Automatic image-area and testis-ROI proposal measured against the phantom's ground-truth ROIs (IoU):
frames of the shipped cine (its sidecar holds every frame's ROI) and freshly rendered cohort screens from
both phantom scanners (different layout, tint, probe). Prints the median IoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.roi import find_image_area, iou, parse_roi, propose_roi


def cine_frames(path: Path, every: int = 6):
    import cv2

    cap = cv2.VideoCapture(str(path))
    i = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        if i % every == 0:
            yield i, cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()


def test_roi_on_cine_frames(demo_cine):
    truth = json.loads(Path(str(demo_cine) + ".json").read_text())["roi_per_frame"]
    scores = [iou(propose_roi(f, find_image_area(f)), tuple(truth[i])) for i, f in cine_frames(demo_cine)]
    print(f"\ncine: median IoU {np.median(scores):.3f} over {len(scores)} frames, min {min(scores):.3f}")
    assert np.median(scores) >= 0.85 and min(scores) >= 0.5


def _field(scanner) -> tuple[int, int, int, int]:
    """The B-mode image area the phantom drew (converters/bmode.py compose_screen), in screen pixels."""
    ox, oy = scanner.origin
    return (ox, oy, int(round(scanner.width_mm * scanner.px_per_mm)), int(round(scanner.depth_mm * scanner.px_per_mm)))


def _inside(box, area) -> bool:
    x, y, w, h = box
    ax, ay, aw, ah = area
    return x >= ax and y >= ay and x + w <= ax + aw and y + h <= ay + ah


def test_auto_roi_inside_the_image_area_on_every_cine_frame(demo_cine):
    """Issue 12: the automatic ROI ran onto the depth ruler (40 % of the cine's frames before the fix). Every
    frame: the image area is the drawn field (not the ruler, focus marker, text or border line) and the ROI
    lies inside it."""
    from converters.bmode import SCANNERS

    sidecar = json.loads(Path(str(demo_cine) + ".json").read_text())
    field = _field(SCANNERS["development"])  # the scanner phantom_cine.write_cine renders with
    frames = list(cine_frames(demo_cine, every=1))
    assert len(frames) == sidecar["frames"] == len(sidecar["roi_per_frame"])
    outside = []
    for i, f in frames:
        area = find_image_area(f)
        roi = propose_roi(f, area)
        assert _inside(area, field) and iou(area, field) > 0.98, (i, area, field)
        if not _inside(roi, field):
            outside.append((i, roi))
    print(f"\ncine: {len(frames) - len(outside)}/{len(frames)} automatic ROIs inside the image area {field}")
    assert outside == []


def test_roi_on_rendered_cohort_screens_both_scanners():
    from converters.bmode import SCANNERS
    from converters.phantom import render_image, sample_cohort

    scores = []
    for cohort in ("development", "external"):
        rows = sample_cohort(3, 3, 0, seed=11, cohort=cohort).images[:6]
        for row in rows:
            screen, truth = render_image(row, 11, cohort)
            area = find_image_area(screen)
            x, y, w, h = truth
            ax, ay, aw, ah = area
            assert ax <= x and ay <= y and ax + aw >= x + w and ay + ah >= y + h  # field contains the testis
            assert aw * ah < 0.8 * screen.shape[0] * screen.shape[1]  # UI chrome and text dropped
            roi = propose_roi(screen, area)
            assert _inside(roi, _field(SCANNERS[cohort])), (cohort, roi)  # never on the ruler, text or margins
            scores.append(iou(roi, truth))
    print(f"\nrendered screens: median IoU {np.median(scores):.3f} over {len(scores)}, min {min(scores):.3f}")
    assert np.median(scores) >= 0.85


def test_blank_frame_falls_back_to_centre():
    frame = np.zeros((300, 400, 3), np.uint8)
    assert find_image_area(frame) == (0, 0, 400, 300)
    x, y, w, h = propose_roi(frame)
    assert (x, y, w, h) == (80, 60, 240, 180)


@pytest.mark.parametrize("text,words", [("1,2,3", "x,y,w,h"), ("a,b,c,d", "x,y,w,h"), ("0,0,4,4", "too small"),
                                        ("390,290,20,20", "outside"), ("-1,0,50,50", "outside")])
def test_parse_roi_errors(text, words):
    with pytest.raises(ValueError, match=words):
        parse_roi(text, (300, 400, 3))
