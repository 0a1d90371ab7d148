"""What holding a frame adds to an analysis (issue 12): the copy + sha256 of the pixels, once per frame.

Every analysed frame is first held (edge/held_frames.py): copied (the source may reuse its buffer), hashed
(frame_sha256) and given its own image area + ROI proposal. The area and ROI were computed by the pipeline
before too; the copy and the hash are the new cost. Prints medians over the shipped cine's frames.

    .venv/bin/python benchmarks/held_frame_cost.py [--runs 200]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import cv2
import numpy as np

from edge.capture import demo_cine_path
from edge.held_frames import make_held_frame


def frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(demo_cine_path()))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def median_ms(fn, items, runs: int) -> float:
    times = []
    for i in range(runs):
        item = items[i % len(items)]
        t0 = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    runs = ap.parse_args().runs
    cine = frames()
    for f in cine[:10]:  # warm-up
        make_held_frame(f, "user")
    h, w = cine[0].shape[:2]
    sha = median_ms(lambda f: hashlib.sha256(f.data).hexdigest(), cine, runs)
    copy = median_ms(lambda f: np.array(f, copy=True), cine, runs)
    holds = [make_held_frame(cine[i % len(cine)], "user").timings for i in range(runs)]
    stage = {k: statistics.median(t[k] for t in holds) for k in holds[0]}
    print(f"{len(cine)} cine frames {w}x{h} RGB, {runs} runs, medians:")
    print(f"  sha256 of the pixels      {sha:6.2f} ms")
    print(f"  copy of the pixels        {copy:6.2f} ms")
    print(f"  hold: copy + hash         {stage['hash']:6.2f} ms   (new per analysis)")
    print(f"  hold: image area          {stage['image_area']:6.2f} ms   (was in the pipeline before)")
    print(f"  hold: ROI proposal        {stage['roi']:6.2f} ms   (was in the pipeline before)")


if __name__ == "__main__":
    main()
