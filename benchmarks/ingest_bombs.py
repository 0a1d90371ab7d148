"""Peak memory and time of the device's image decoder on hostile inputs (issue 18), before and after.

Each input is decoded by `edge.imaging.decode_image_bytes` (the upload path; the DICOM SCP and the folder
use the same decoding) in a fresh Python process; the process's peak RSS comes from wait4's rusage.
`--before-ref REF` also runs the code of that git revision (exported read-only with `git archive`).

    .venv/bin/python benchmarks/ingest_bombs.py --before-ref HEAD

prints a table and writes benchmarks/results/ingest_bombs.json. Numbers, not assertions: the tests
(tests/test_decode_limits.py) check the refusals, this script measures what they cost.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_decode_limits import many_frame_dicom, png_bomb  # noqa: E402  (the bombs the tests use)

RESULTS = ROOT / "benchmarks" / "results" / "ingest_bombs.json"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from edge.imaging import decode_image_bytes
data = open(sys.argv[1], "rb").read()
t1 = time.perf_counter()
try:
    frame = decode_image_bytes(data, sys.argv[2])
    outcome = f"decoded {frame.shape[1]}x{frame.shape[0]}"
except BaseException as exc:
    outcome = f"refused: {type(exc).__name__}: {str(exc)[:120]}"
print(json.dumps({"outcome": outcome, "decode_s": round(time.perf_counter() - t1, 3)}))
"""


def jpeg_cine(frames: int, width: int = 1024, height: int = 768) -> bytes:
    """A US Multi-frame JPEG baseline cine (the issue's 3.4 MB, 200-frame object): speckle-free frames
    with a moving bar, so each frame is a small JPEG and the whole cine is a few MB."""
    encoded = []
    for i in range(frames):
        img = np.full((height, width, 3), 60, np.uint8)
        img[:, (i * 5) % width: (i * 5) % width + 40] = 200
        encoded.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", height, width, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def inputs() -> dict[str, tuple[str, bytes]]:
    frame = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8))[1].tobytes()
    return {"png 800x600 (a normal frame)": ("frame.png", frame),
            "png 20000x20000": ("bomb.png", png_bomb(20000, 20000)),
            "png 40000x30000": ("huge.png", png_bomb(40000, 30000)),
            "dicom jpeg 200 frames 1024x768": ("cine200.dcm", jpeg_cine(200)),
            "dicom native 5000 frames 64x64": ("cine5000.dcm", many_frame_dicom(5000, 64))}


def run_one(code_dir: Path, path: Path, name: str, timeout: float = 300) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), name], cwd=code_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    out = proc.stdout.read().strip().splitlines()
    result = json.loads(out[-1]) if out and out[-1].startswith("{") else {"outcome": f"crashed (status {status})"}
    result.update(peak_rss_mb=round(usage.ru_maxrss / 1024, 1), wall_s=round(time.perf_counter() - start, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-ref", help="also measure this git revision (e.g. HEAD)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"after": ROOT}
        if args.before_ref:
            before = tmp / "before"
            before.mkdir()
            archive = subprocess.run(["git", "archive", args.before_ref, "edge"], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            trees = {"before": before, "after": ROOT}
        rows = []
        for label, (name, data) in inputs().items():
            path = tmp / name
            path.write_bytes(data)
            for tree, code_dir in trees.items():
                result = run_one(code_dir, path, name)
                rows.append({"input": label, "bytes": len(data), "code": tree, **result})
                print(f"{label:34s} {len(data) / 1e6:6.2f} MB  {tree:6s} peak RSS {result['peak_rss_mb']:8.1f} MB  "
                      f"decode {result.get('decode_s', float('nan')):7.3f} s  {result['outcome'][:90]}", flush=True)
    report = {"benchmark": "ingest_bombs", "command": "benchmarks/ingest_bombs.py"
              + (f" --before-ref {args.before_ref}" if args.before_ref else ""),
              "method": "edge.imaging.decode_image_bytes in a fresh process per input; peak RSS from wait4 rusage",
              "cpu_count": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
