"""Which weights cost fp16 its precision? Round one slice of a bundle's fp32 model to fp16 at a time.

    python benchmarks/fp16_sensitivity.py firmware_assets/demo-phantom runs/demo-224/dataset --rois 60

Prints max/mean |dprob| against the fp32 TFLite model for: every constant tensor rounded (what the TFLite
converter's fp16 does), each of 8 slices of the tensors in graph order rounded alone, and the first k
tensors kept fp32 (what converters/fp16_weights.py ships). Evidence for the kept-fp32 stem; no TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.convert import crop_rows  # noqa: E402
from converters.dataset import load_dataset  # noqa: E402
from converters.fp16_weights import constant_float_tensors, fp16_round, tflite_probs  # noqa: E402
from converters.tflite_flatbuffer import read_tflite  # noqa: E402
from edge.bundle import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("dataset")
    parser.add_argument("--rois", type=int, default=60, help="ROIs, spread over the dataset's images")
    parser.add_argument("--slices", type=int, default=8)
    args = parser.parse_args()

    bundle = load(args.bundle)
    size = int(bundle.manifest["input"]["shape"][1])
    fp32 = (Path(args.bundle) / bundle.variants["fp32"]["file"]).read_bytes()
    data = load_dataset(args.dataset)
    rows = data.images[:: max(1, len(data.images) // args.rois)][: args.rois]
    x = crop_rows(data, rows, size, "crop ROIs", progress=False)
    reference = tflite_probs(fp32, x)
    model = read_tflite(fp32)
    order = constant_float_tensors(model)
    graph = model.subgraphs[0]
    n_weights = [len(model.buffers[graph.tensors[i].buffer].data) // 4 for i in order]

    def report(label: str, rounded: list[int]) -> None:
        diff = np.abs(tflite_probs(fp16_round(fp32, rounded)[0], x) - reference)
        print(f"{label:48s} max|dprob| {diff.max():.2e}  mean {diff.mean():.2e}")

    print(f"{args.bundle}: {len(order)} constant tensors, {sum(n_weights)} weights, {len(x)} ROIs at {size} px")
    report("all tensors fp16 (the converter's fp16)", order)
    for j, part in enumerate(np.array_split(np.arange(len(order)), args.slices)):
        weights = sum(n_weights[k] for k in part)
        report(f"slice {j}: tensors {part[0]}-{part[-1]} only ({weights} weights)", [order[k] for k in part])
    for keep in (1, 2, 5, 20):
        report(f"first {keep} kept fp32 ({sum(n_weights[:keep])} weights)", order[keep:])


if __name__ == "__main__":
    main()
