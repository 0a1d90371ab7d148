"""The levers on the daemon's frame → stored-result path (issue 7 goal: end-to-end p50 ≤ 1.3× bare invoke),
each measured interleaved against its baseline in ONE process (round robin, rotating start), so ratios hold
on a noisy 2-core machine:

- frame PNG: cv2.imencode level 1 (before) vs `png_bytes` (zlib level 1, no row filter) vs level 0 (kept:
  on the path) vs cv2 Z_RLE; a grayscale frame stored 1-channel; the store's deferred level 0 → 1 recompress;
- ROI PNG: encoded on every analysis (before) vs derived from the stored frame on request (its read cost);
- overlay: cv2 PNG (before) vs `png_bytes` vs JPEG q90 (`jpeg_bytes`);
- CAM overlay: float blend (before) vs RGB LUT + cv2.blendLinear (kept);
- image area + ROI proposal: before vs gray once + histogram percentiles + windowed nonzero;
- SQLite: synchronous=FULL vs NORMAL (WAL);
- end to end: the committed pipeline (`--baseline-rev`, loaded from git) vs today's, with the frame stored
  uncompressed (recompressed when idle) or compressed inline, at 1 and 2 interpreter threads, each round
  with a bare invoke of the same ROI.

    nice -n 10 .venv/bin/python benchmarks/levers_pipeline.py --bundle runs/bench-models/nasnet224 \
        --runs 30 --json benchmarks/results/levers_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.bench.pipeline import _CineFrames  # noqa: E402
from edge.bench.report import machine_info  # noqa: E402
from edge.bench.stats import interleave as bench_interleave  # noqa: E402

BASELINE_REV = "ea34dac"  # the pipeline before these levers (cv2 PNGs ×3, RGB ROI search, FULL sync)
CLINICAL = {"fsh": 20.0, "volume_ml": 8.0, "edv_cm_s": 3.0}


def interleave(contenders: dict, runs: int, warmup: int = 2) -> dict:
    """edge.bench.stats.interleave, keeping the columns this table prints."""
    keep = ("p50_ms", "p90_ms", "p99_ms", "mean_ms")
    return {n: {k: round(v, 3) for k, v in st.items() if k in keep}
            for n, st in bench_interleave(contenders, runs, warmup).items()}


def load_baseline(rev: str) -> dict[str, types.ModuleType]:
    """edge/roi.py, store.py and pipeline.py as of `rev`, as modules (the old pipeline wired to the old roi)."""
    mods = {}
    for name in ("roi", "store", "pipeline"):
        src = subprocess.run(["git", "show", f"{rev}:edge/{name}.py"], cwd=ROOT, capture_output=True, text=True)
        if src.returncode != 0:
            sys.exit(f"cannot load edge/{name}.py at {rev}: {src.stderr.strip()}")
        mod = types.ModuleType(f"edge._baseline_{name}")
        mod.__package__ = "edge"
        sys.modules[mod.__name__] = mod
        exec(compile(src.stdout, f"{rev}:edge/{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    mods["pipeline"].find_image_area = mods["roi"].find_image_area
    mods["pipeline"].propose_roi = mods["roi"].propose_roi
    return mods


def stage_levers(frames: _CineFrames, base: dict, runs: int, tmp: Path) -> dict:
    from edge import cam, imaging, roi, store
    from edge.store import _recompressed_png

    frame = frames.frozen[0]
    gray_frame = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    area = roi.find_image_area(gray)
    box = roi.propose_roi(gray, area)
    view = cam.roi_view(frame, box)
    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    overlay = cam.cam_overlay(view, cam, True)
    out: dict = {"frame_size": list(frame.shape[1::-1]), "roi_view_size": list(view.shape[1::-1])}

    level0 = imaging.png_bytes(frame, level=0)
    rle = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    frame_fns = {
        "cv2 level 1 (before)": lambda: base["pipeline"].png_bytes(frame),
        "png_bytes level 1": lambda: imaging.png_bytes(frame),
        "png_bytes level 0 (kept, on the path)": lambda: imaging.png_bytes(frame, level=0),
        "deferred, off the path: recompress level 0 -> 1": lambda: _recompressed_png(level0),
        "cv2 level 1 Z_RLE": lambda: cv2.imencode(".png", bgr, rle)[1].tobytes(),
        "grayscale frame: cv2 level 1 RGB (before)": lambda: base["pipeline"].png_bytes(gray_frame),
        "grayscale frame: frame_png_bytes (1-channel)": lambda: imaging.frame_png_bytes(gray_frame),
        "colour frame: gray check (frame_png_bytes - png_bytes)": lambda: imaging.gray_if_gray(frame),
    }
    out["frame_png"] = interleave(frame_fns, runs)
    for name, fn in frame_fns.items():
        blob = fn()
        if isinstance(blob, bytes):
            out["frame_png"][name]["bytes"] = len(blob)

    st = store.ExamStore(tmp / "derive")
    exam = st.add_exam({"roi": list(box), "bundle": {"sha256": "x"}}, imaging.frame_png_bytes(frame), None,
                       imaging.png_bytes(overlay))
    roi_fns = {"encode ROI PNG on every analysis (before)": lambda: base["pipeline"].png_bytes(view),
               "derive on request (store.get_image 'roi')": lambda: st.get_image(exam["id"], "roi")}
    out["roi_png"] = interleave(roi_fns, runs)
    st.close()

    overlay_fns = {"cv2 PNG level 1 (before)": lambda: base["pipeline"].png_bytes(overlay),
                   "png_bytes level 1": lambda: imaging.png_bytes(overlay),
                   "jpeg_bytes q90 (kept)": lambda: imaging.jpeg_bytes(overlay)}
    out["overlay_encode"] = interleave(overlay_fns, runs)
    for name, fn in overlay_fns.items():
        out["overlay_encode"][name]["bytes"] = len(fn())

    cam_fns = {"float blend (before)": lambda: base["pipeline"].cam_overlay(view, cam, True),
               "RGB LUT + blendLinear (kept)": lambda: cam.cam_overlay(view, cam, True)}
    out["cam_overlay"] = interleave(cam_fns, runs)
    diff = np.abs(cam.cam_overlay(view, cam, True).astype(int) - base["pipeline"].cam_overlay(view, cam, True))
    out["cam_overlay"]["RGB LUT + blendLinear (kept)"]["max_abs_pixel_diff_vs_before"] = int(diff.max())

    def area_roi_before():
        base["roi"].propose_roi(frame, base["roi"].find_image_area(frame))

    def area_roi_after():
        g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        roi.propose_roi(g, roi.find_image_area(g))
    out["image_area_and_roi"] = interleave({"RGB, np.percentile, full-frame nonzero (before)": area_roi_before,
                                            "gray once, histogram percentile, windowed nonzero (kept)": area_roi_after},
                                           runs)

    blobs = (imaging.frame_png_bytes(frame), None, imaging.png_bytes(overlay))
    old_blobs = (base["pipeline"].png_bytes(frame), base["pipeline"].png_bytes(view),
                 base["pipeline"].png_bytes(overlay))
    stores = {}
    for name, sync in (("FULL", "FULL"), ("NORMAL", "NORMAL"), ("FULL, 3 PNGs (before)", "FULL")):
        stores[name] = store.ExamStore(tmp / f"store-{sync}-{len(stores)}")
        stores[name]._db.execute(f"PRAGMA synchronous={sync}")
    record = {"roi": list(box), "trigger": "bench", "bundle": {"sha256": "x"}, "timings": {"x": 1.0}}
    out["store"] = interleave({
        "synchronous=FULL, frame + overlay": lambda: stores["FULL"].add_exam(record, *blobs),
        "synchronous=NORMAL, frame + overlay (kept)": lambda: stores["NORMAL"].add_exam(record, *blobs),
        "synchronous=FULL, 3 PNGs (before)": lambda: stores["FULL, 3 PNGs (before)"].add_exam(record, *old_blobs),
    }, runs)
    for s in stores.values():
        s.close()
    return out


def end_to_end(frames: _CineFrames, base: dict, bundle: Path, runs: int, tmp: Path, threads: int) -> dict:
    """Before vs after (frame stored uncompressed / compressed inline), each round with a bare invoke of the same
    ROI. The deferred recompression never runs here (it waits for RECOMPRESS_IDLE_S without a new exam)."""
    from edge.pipeline import Analyzer
    from edge.preprocess import crop_roi
    from edge.store import ExamStore

    before = base["pipeline"].Analyzer(bundle, threads=threads, store=base["store"].ExamStore(tmp / f"b{threads}"))
    after = Analyzer(bundle, threads=threads, store=ExamStore(tmp / f"a{threads}"))
    inline = Analyzer(bundle, threads=threads, store=ExamStore(tmp / f"i{threads}"))
    inline.frame_png_level = 1
    inputs = [crop_roi(f, base["roi"].propose_roi(f, base["roi"].find_image_area(f)), after.input_size)
              for f in frames.frozen]
    stages: dict[str, dict[str, list[float]]] = {}
    k = [0]

    def analysis(name, analyzer):
        def run():
            exam = analyzer.analyze(frames.frozen[k[0] % len(frames.frozen)], clinical=dict(CLINICAL),
                                    trigger="freeze", source="bench")
            t = exam["timings"]
            for stage, ms in dict(t, not_invoke=t["total"] - t["invoke"]).items():
                stages.setdefault(name, {}).setdefault(stage, []).append(ms)
        return run

    def bare():
        after.runner.run(inputs[k[0] % len(inputs)])
        k[0] += 1

    res = interleave({"bare invoke": bare, "before": analysis("before", before),
                      "after": analysis("after", after),  # kept: frame level 0, recompressed when idle
                      "after, frame level 1 inline": analysis("after, frame level 1 inline", inline)}, runs)
    invoke = res["bare invoke"]["p50_ms"]
    for name, per_stage in stages.items():
        res[name]["over_bare_invoke_p50"] = round(res[name]["p50_ms"] / invoke, 3)
        res[name]["stage_p50_ms"] = {s: round(float(np.median(v[-runs:])), 2) for s, v in per_stage.items()}
        # total - invoke per run: the product's own cost, steadier than the ratio when invoke is noisy
        res[name]["not_invoke_p50_ms"] = res[name]["stage_p50_ms"].pop("not_invoke")
    for a in (before, after, inline):
        a.store.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs/bench-models/nasnet224")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", default="1,2", help="interpreter threads for the end-to-end rounds")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the 'before' pipeline")
    ap.add_argument("--skip-stages", action="store_true", help="only the end-to-end rounds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        sys.exit(f"{args.bundle}: no manifest.json (build it: benchmarks/make_bench_models.py)")
    base = load_baseline(args.baseline_rev)
    frames = _CineFrames()
    report = {"machine": machine_info(), "bundle": str(args.bundle), "runs": args.runs,
              "baseline_rev": args.baseline_rev, "frozen_frames": len(frames.frozen)}
    with tempfile.TemporaryDirectory(prefix="noa-levers-") as tmp:
        if not args.skip_stages:
            report["stages"] = stage_levers(frames, base, args.runs, Path(tmp))
        report["end_to_end"] = {f"threads={t}": end_to_end(frames, base, args.bundle, args.runs, Path(tmp), int(t))
                                for t in args.threads.split(",")}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
