"""Issue 17 measurement: site recalibration of a frozen bundle, checked on INDEPENDENT cohorts from the same
(other) scanner. For each method (auto, intercept, slope, refit): `noa-edge recalibrate` on the site cohort, then
`noa-edge evaluate` of the parent and of the new bundle on each evaluation cohort (device runtime, no refit).

    noa-edge simulate runs/issue17/site-seed1 --oa 1 --noa 1 --controls 0 --external 100 --seed 1
    noa-edge simulate runs/issue17/site-seed2 --oa 1 --noa 1 --controls 0 --external 100 --seed 2
    python benchmarks/recalibration_check.py --parent firmware_assets/demo-phantom \
        --site runs/issue17/site-seed1/external \
        --eval runs/demo-phantom/dataset/external --eval runs/issue17/site-seed2/external \
        --out benchmarks/results/issue17/recalibration_check.json
(runs/demo-phantom/dataset/external is the demo's own external cohort: `noa-edge simulate runs/demo-phantom/dataset
--seed 0`; only the external cohorts of the seed-1/2 runs are used.)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.bundle_docs import code_version  # noqa: E402
from converters.evaluate import evaluate  # noqa: E402
from converters.recalibrate import recalibrate  # noqa: E402

KEYS = ("calibration_slope", "slope_ci", "calibration_in_the_large", "citl_ci", "auc", "auc_ci", "brier",
        "sensitivity", "specificity", "threshold")


def summary(res: dict) -> dict:
    return {**{k: res[k] for k in KEYS}, "patient_auc": res["patient"]["auc"], "n_images": res["n_images"],
            "n_patients": res["n_patients"], "n_events": res["n_events"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", default="firmware_assets/demo-phantom")
    ap.add_argument("--site", required=True)
    ap.add_argument("--eval", action="append", required=True, dest="evals")
    ap.add_argument("--methods", default="auto,intercept,slope,refit")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "code_version": code_version(),
              "parent": args.parent, "site": args.site, "evaluation_cohorts": args.evals, "methods": {}}
    result["parent_on_eval"] = {ev: summary(evaluate(args.parent, ev, progress=False)) for ev in args.evals}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            rep = recalibrate(args.parent, args.site, Path(tmp) / method, method=method, progress=False)
            entry = {"chosen": rep["method"], "reason": rep["method_reason"], "closed_test": rep["closed_test"],
                     "updates": rep["updates"], "site_before": {k: rep["before"][k] for k in KEYS},
                     "site_after_apparent": {k: rep["after"][k] for k in KEYS}, "cohort": rep["cohort"],
                     "notes": rep["notes"], "on_eval": {}}
            for ev in args.evals:
                entry["on_eval"][ev] = summary(evaluate(Path(tmp) / method, ev, progress=False))
            result["methods"][method] = entry
            print(f"{method}: chose {rep['method']}; " + "; ".join(
                f"{Path(ev).parent.name}/{Path(ev).name}: slope {result['parent_on_eval'][ev]['calibration_slope']:.2f}"
                f" -> {e['calibration_slope']:.2f}, CITL {result['parent_on_eval'][ev]['calibration_in_the_large']:.2f}"
                f" -> {e['calibration_in_the_large']:.2f}" for ev, e in entry["on_eval"].items()), flush=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
