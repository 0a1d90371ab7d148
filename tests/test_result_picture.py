"""The CAM picture stored with an exam is the CAM of exactly the analysed ROI, drawn for the image model's
call: recomputed here from the bundle's runtime on the test's own model input (tests/reference_image.py),
not from the pipeline's crop. A planted bug that flips the sign, draws another ROI or feeds other pixels
changes the picture a clinician looks at without changing any number."""

from __future__ import annotations

import cv2
import numpy as np

from conftest import cine_rgb
from edge.cam import cam_overlay, roi_view
from edge.pipeline import Analyzer
from edge.store import ExamStore
from reference_image import expected_model_input


def test_stored_overlay_is_the_cam_of_the_analysed_roi_for_the_image_models_call(test_bundle, demo_cine,
                                                                                     tmp_path):
    store = ExamStore(tmp_path)
    analyzer = Analyzer(test_bundle, store=store, threads=1)
    try:
        frame = cine_rgb(demo_cine, 30)
        exam = analyzer.analyze(frame, trigger="upload")
        roi = exam["roi"]
        prob, cam = analyzer.runner.run(expected_model_input(frame, roi, analyzer.input_size))
        prob = float(np.asarray(prob).reshape(-1)[0])
        assert abs(prob - exam["dl_probability"]) < 1e-3  # the same pixels went in
        view = roi_view(frame, roi)
        expected = cam_overlay(view, cam, positive=prob >= analyzer.dl_threshold)
        flipped = cam_overlay(view, cam, positive=not prob >= analyzer.dl_threshold)
        stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(store.get_image(exam["id"], "overlay"), np.uint8),
                                           cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert stored.shape == expected.shape
        err = np.abs(stored.astype(int) - expected).mean()
        err_flipped = np.abs(stored.astype(int) - flipped).mean()
        print(f"mean |stored - expected| {err:.2f}, vs the other call {err_flipped:.2f}")
        assert err < 3.0, err                      # JPEG q90 of the same picture
        assert err_flipped > 2 * err + 1.0, (err, err_flipped)  # the other call's map is visibly different
    finally:
        store.close()
