"""The levers behind the goals, each measured interleaved against its baseline in one process:

- interpreter: default (XNNPACK delegate) vs `experimental_default_delegate_latest_features` vs built-in
  kernels only (no XNNPACK), for fp32 / fp16 / int8 at 1 and 2 threads — why int8 is slower on x86;
- input copy: `set_tensor` (one copy) vs writing into the interpreter's own input buffer;
- the pipeline's non-model stages on a phantom cine frame: ROI crop/resize, CAM overlay at the ROI size vs
  upsampled to ≥ 224 px, and the exam images: PNG level 3 (today) vs level 1 vs JPEG q90.

    .venv/bin/python benchmarks/levers.py --bundle runs/bench-models/nasnet224 --runs 40 \
        --json benchmarks/results/levers.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.bench.contenders import bench_input  # noqa: E402
from edge.bench.report import machine_info  # noqa: E402
from edge.bench.stats import interleave  # noqa: E402


def interpreter_levers(bundle: Path, manifest: dict, runs: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    size = manifest["input"]["shape"][1]
    x = bench_input(size)[None]
    fns = {}
    for variant in ("fp32", "fp16", "int8"):
        spec = manifest["variants"].get(variant)
        if not spec:
            continue
        for threads in (1, 2):
            for mode, kw in (("xnnpack", {}),
                             ("xnnpack-latest", {"experimental_default_delegate_latest_features": True}),
                             ("builtin", {"experimental_op_resolver_type":
                                          OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES})):
                interp = Interpreter(model_path=str(bundle / spec["file"]), num_threads=threads, **kw)
                interp.allocate_tensors()
                idx = interp.get_input_details()[0]["index"]

                def run(interp=interp, idx=idx):
                    interp.set_tensor(idx, x)
                    interp.invoke()
                fns[f"{variant}/{mode}/t{threads}"] = run
    return interleave(fns, runs)


def copy_levers(bundle: Path, manifest: dict, runs: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    spec = manifest["variants"]["fp32"]
    size = manifest["input"]["shape"][1]
    x = bench_input(size)
    interp = Interpreter(model_path=str(bundle / spec["file"]), num_threads=2)
    interp.allocate_tensors()
    idx = interp.get_input_details()[0]["index"]
    view = interp.tensor(idx)

    def set_tensor():
        interp.set_tensor(idx, x[None])

    def write_in_place():
        view()[0][...] = x

    return interleave({"set_tensor": set_tensor, "write_into_input_buffer": write_in_place}, runs * 10)


def stage_levers(size: int, runs: int) -> dict:
    from edge.cam import CAM_SIZE_MIN, cam_overlay
    from edge.preprocess import crop_roi
    from edge.roi import find_image_area, propose_roi

    cap = cv2.VideoCapture(str(ROOT / "edge" / "static" / "demo_cine.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 30)
    ok, bgr = cap.read()
    cap.release()
    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    area = find_image_area(frame)
    x, y, w, h = propose_roi(frame, area)
    roi_rgb = frame[y:y + h, x:x + w]
    scale = max(1.0, CAM_SIZE_MIN / max(1, min(w, h)))
    roi_big = cv2.resize(roi_rgb, (round(w * scale), round(h * scale))) if scale > 1 else roi_rgb
    cam = np.random.default_rng(0).standard_normal((7, 7)).astype(np.float32)
    bgr_frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    fns = {
        "image_area": lambda: find_image_area(frame),
        "roi_proposal": lambda: propose_roi(frame, area),
        "crop_roi": lambda: crop_roi(frame, (x, y, w, h), size),
        "cam_overlay_roi_size": lambda: cam_overlay(roi_rgb, cam, True),
        f"cam_overlay_upsampled_{roi_big.shape[1]}x{roi_big.shape[0]}": lambda: cam_overlay(roi_big, cam, True),
        "frame_png_level3_with_rgb2bgr": lambda: cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                                             [cv2.IMWRITE_PNG_COMPRESSION, 3]),
        "frame_png_level1": lambda: cv2.imencode(".png", bgr_frame, [cv2.IMWRITE_PNG_COMPRESSION, 1]),
        "frame_png_level0": lambda: cv2.imencode(".png", bgr_frame, [cv2.IMWRITE_PNG_COMPRESSION, 0]),
        "frame_jpeg_q90": lambda: cv2.imencode(".jpg", bgr_frame, [cv2.IMWRITE_JPEG_QUALITY, 90]),
    }
    out = interleave(fns, runs)
    out["_shapes"] = {"frame": list(frame.shape), "roi": [w, h], "overlay": list(roi_big.shape[1::-1])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "runs" / "bench-models" / "nasnet224")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    out = {"machine": machine_info(), "bundle": str(args.bundle)}
    for name, fn in (("interpreter", lambda: interpreter_levers(args.bundle, manifest, args.runs)),
                     ("input_copy", lambda: copy_levers(args.bundle, manifest, args.runs)),
                     ("stages", lambda: stage_levers(manifest["input"]["shape"][1], args.runs))):
        out[name] = fn()
        print(f"\n{name} (interleaved, ms)")
        for k, s in out[name].items():
            if not k.startswith("_"):
                print(f"  {k:40s} p50 {s['p50_ms']:8.3f}  p90 {s['p90_ms']:8.3f}  mean {s['mean_ms']:8.3f}")
        sys.stdout.flush()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
