"""Memory and cold start, each in a fresh process (so nothing earlier inflates the figures):

1. per variant / backend: process start → model loaded → first result, RSS after load and after the
   first inference, peak RSS (getrusage) — `python -c` child running edge.runtime.ModelRunner (or
   onnxruntime), timed from the parent's Popen to the child's "first result" line;
2. the daemon: `noa-edge serve --source none` from Popen → /api/health answers → first POST /api/analyze
   result (a phantom cine frame with clinical values), and the daemon's RSS after load, after the first
   analysis and after N more (psutil on the child's pid).

    .venv/bin/python benchmarks/cold_start.py --bundle runs/bench-models/nasnet224 --repeats 3 \
        --json benchmarks/results/cold_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

CHILD = r"""
import sys, time, resource, os
t_import = time.perf_counter()
import numpy as np, psutil
backend, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
rss = lambda: psutil.Process().memory_info().rss / 1e6
base = rss()
if backend == "onnxruntime":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    size = s.get_inputs()[0].shape[1]
    run = lambda x: s.run(None, {s.get_inputs()[0].name: x[None]})
else:
    from edge.runtime import ModelRunner
    m = ModelRunner(path, num_threads=threads)
    size = m.input_shape[1]
    run = m.run
loaded = rss()
x = np.full((size, size, 3), 128, np.uint8)
run(x)
t = os.times()
print("FIRST", (t.user + t.system) * 1000.0, flush=True)
first = rss()
for _ in range(20):
    run(x)
import json
print(json.dumps({"rss_base_mb": base, "rss_loaded_mb": loaded, "rss_first_mb": first, "rss_after_21_mb": rss(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6}), flush=True)
"""


def child_first_result(backend: str, model: Path, threads: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-c", CHILD, backend, str(model), str(threads)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    first, cpu_first = None, None
    for line in proc.stdout:
        if line.startswith("FIRST"):
            first = (time.perf_counter() - t0) * 1000.0
            cpu_first = float(line.split()[1])
        elif line.startswith("{"):
            mem = json.loads(line)
    proc.wait()
    if first is None or proc.returncode != 0:
        raise RuntimeError(f"{backend} {model.name}: child failed (rc {proc.returncode})")
    return {"start_to_first_result_ms": first, "cpu_ms_to_first_result": cpu_first, **mem}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cine_frame_png(index: int = 30) -> bytes:
    cap = cv2.VideoCapture(str(ROOT / "edge" / "static" / "demo_cine.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise RuntimeError("cannot read the phantom cine")
    return cv2.imencode(".png", frame)[1].tobytes()


def daemon_cold_start(bundle: Path, threads: int | None, analyses: int) -> dict:
    port = free_port()
    png = cine_frame_png()
    with tempfile.TemporaryDirectory(prefix="noa-cold-") as data:
        cmd = [str(Path(PY).parent / "noa-edge"), "serve", "--bundle", str(bundle), "--source", "none",
               "--port", str(port), "--data-dir", data]
        if threads:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            health_ms = None
            while time.perf_counter() - t0 < 60:
                try:
                    if httpx.get(url + "/api/health", timeout=1.0).status_code == 200:
                        health_ms = (time.perf_counter() - t0) * 1000.0
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {proc.returncode}")
                time.sleep(0.02)
            if health_ms is None:
                raise RuntimeError("daemon did not answer /api/health within 60 s")
            ps = psutil.Process(proc.pid)
            rss_loaded = ps.memory_info().rss / 1e6
            cpu = ps.cpu_times()
            cpu_health = (cpu.user + cpu.system) * 1000.0
            form = {"fsh": "18", "volume_ml": "9", "edv": "2.5"}
            r = httpx.post(url + "/api/analyze", files={"image": ("frame.png", png, "image/png")}, data=form,
                           timeout=60)
            r.raise_for_status()
            first_ms = (time.perf_counter() - t0) * 1000.0
            cpu = ps.cpu_times()
            cpu_first = (cpu.user + cpu.system) * 1000.0
            rss_first = ps.memory_info().rss / 1e6
            totals = []
            for _ in range(analyses):
                t1 = time.perf_counter()
                r = httpx.post(url + "/api/analyze", files={"image": ("frame.png", png, "image/png")}, data=form,
                               timeout=60)
                r.raise_for_status()
                totals.append((time.perf_counter() - t1) * 1000.0)
            rss_after = ps.memory_info().rss / 1e6
            health = httpx.get(url + "/api/health", timeout=5).json()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"start_to_health_ms": health_ms, "start_to_first_result_ms": first_ms,
            "cpu_ms_to_health": cpu_health, "cpu_ms_to_first_result": cpu_first,
            "rss_loaded_mb": rss_loaded, "rss_after_first_mb": rss_first,
            f"rss_after_{analyses + 1}_analyses_mb": rss_after,
            "http_analyze_p50_ms": statistics.median(totals) if totals else None,
            "variant": health["bundle"]["runtime"]["variant"], "threads": health["bundle"]["runtime"]["num_threads"]}


def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out.update({k: v for k, v in runs[0].items() if not isinstance(v, (int, float))})
    out["repeats"] = len(runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "runs" / "bench-models" / "nasnet224")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--analyses", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    out = {"bundle": str(args.bundle), "threads": args.threads, "cpu_count": os.cpu_count(),
           "load_avg": os.getloadavg(), "processes": {}, "daemon": None}
    jobs = [(v, "litert", args.bundle / s["file"]) for v, s in manifest["variants"].items()
            if s["file"].endswith(".tflite")]
    if "onnx" in manifest["variants"]:
        jobs.append(("fp32", "onnxruntime", args.bundle / manifest["variants"]["onnx"]["file"]))
    for variant, backend, path in jobs:
        runs = [child_first_result(backend, path, args.threads) for _ in range(args.repeats)]
        out["processes"][f"{variant}/{backend}"] = median_of(runs)
        r = out["processes"][f"{variant}/{backend}"]
        print(f"{variant:5s} {backend:12s} start→first {r['start_to_first_result_ms']:7.0f} ms "
              f"(CPU {r['cpu_ms_to_first_result']:5.0f} ms)  RSS base "
              f"{r['rss_base_mb']:5.0f}  loaded {r['rss_loaded_mb']:5.0f}  after 21 {r['rss_after_21_mb']:5.0f}  "
              f"peak {r['peak_rss_mb']:5.0f} MB", flush=True)
    runs = [daemon_cold_start(args.bundle, args.threads, args.analyses) for _ in range(args.repeats)]
    d = out["daemon"] = median_of(runs)
    print(f"daemon ({d['variant']}, {d['threads']} threads): start→/api/health {d['start_to_health_ms']:.0f} ms "
          f"(CPU {d['cpu_ms_to_health']:.0f} ms), start→first result {d['start_to_first_result_ms']:.0f} ms "
          f"(CPU {d['cpu_ms_to_first_result']:.0f} ms); RSS loaded {d['rss_loaded_mb']:.0f} MB, "
          f"after first {d['rss_after_first_mb']:.0f} MB, after {args.analyses + 1} "
          f"{d[f'rss_after_{args.analyses + 1}_analyses_mb']:.0f} MB; "
          f"HTTP analyze p50 {d['http_analyze_p50_ms']:.0f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
