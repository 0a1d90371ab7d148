"""LiteRT vs ONNX Runtime on the demo bundle's fp32 model (the numbers behind `--runtime auto`'s choice here).

    .venv/bin/python benchmarks/runtime_select_issue16.py [--bundle firmware_assets/demo-phantom] [--rounds 2]

Works on a temporary copy of the bundle; if the bundle has no ONNX variant, `noa-edge bundle-onnx` adds one to
the copy first (the same tool the shipped bundle gets it from). Then `rounds` interleaved runs of the bench
(`noa-edge bench --variants fp32 --backends litert,onnxruntime --threads 1,2`), each giving p50 per contender
and the ratio LiteRT p50 / ONNX Runtime p50 (> 1: ONNX Runtime faster), and `--runtime auto`'s own probe
(edge.runtime_select.select with force_probe, interleaved) at 1 and 2 threads, `rounds` times each.
Writes benchmarks/results/issue16/litert_vs_ort.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.bench import run_bench  # noqa: E402
from edge.bundle import load  # noqa: E402
from edge.runtime_select import select  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(ROOT / "firmware_assets" / "demo-phantom"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--probe-runs", type=int, default=5, help="timed runs per runtime in the auto probe (serve: 5)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "issue16" / "litert_vs_ort.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="noa-edge-ort-") as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(args.bundle, copy)
        added = "onnx" not in load(copy).variants
        if added:
            subprocess.run([sys.executable, "-m", "edge.cli", "bundle-onnx", str(copy)], cwd=ROOT, check=True)
        bundle = load(copy)
        rounds = []
        for i in range(args.rounds):
            report = run_bench(copy, ["fp32"], ["litert", "onnxruntime"], [1, 2], args.runs, 5, quiet=True)
            rows = {f"{r['backend']}/t{r['threads']}": round(r["p50_ms"], 2) for r in report["results"]}
            ratio = {f"t{t}": round(rows[f"litert/t{t}"] / rows[f"onnxruntime/t{t}"], 3) for t in (1, 2)
                     if f"litert/t{t}" in rows and f"onnxruntime/t{t}" in rows}
            rounds.append({"round": i + 1, "p50_ms": rows, "litert_over_ort_p50": ratio,
                           "load_avg": report["machine"]["load_avg"], "skipped": report["skipped"]})
            print(f"round {i + 1}: p50 {rows}; LiteRT/ORT {ratio}", flush=True)
        probes = []
        for threads in (1, 2):  # serve --threads 1, and the default here (min(4, cores) = 2)
            for _ in range(args.rounds):
                sel = select(bundle, "auto", threads=threads, force_probe=True, runs=args.probe_runs)
                probes.append(dict(sel.report(), threads=threads))
                print(f"auto probe t{threads}: {sel.report()['probe_median_ms']} -> {sel.runtime}", flush=True)
        machine = report["machine"]
        folder_size = sum(f.stat().st_size for f in copy.rglob("*") if f.is_file())
    out = {"what": "LiteRT vs ONNX Runtime, demo bundle fp32, interleaved bench rounds + the auto probe",
           "command": "benchmarks/runtime_select_issue16.py " + " ".join(sys.argv[1:]),
           "bundle": {"name": bundle.name, "onnx_added_by_bundle_onnx": added,
                      "onnx_size_bytes": bundle.variants["onnx"]["size"],
                      "folder_size_bytes": folder_size},
           "settings": {"runs": args.runs, "warmup": 5, "threads": [1, 2], "rounds": args.rounds,
                        "probe_runs": args.probe_runs, "probe_threads": [1, 2]},
           "machine": machine, "rounds": rounds, "auto_probe": probes,
           "auto_choices": {f"t{t}": [p["chosen"] for p in probes if p["threads"] == t] for t in (1, 2)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
