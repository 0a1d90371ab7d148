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


def test_roi_on_rendered_cohort_screens_both_scanners():
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
            scores.append(iou(propose_roi(screen, area), truth))
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
