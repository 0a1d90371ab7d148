"""Build a latency-benchmark bundle: one CAM model, every variant the bench compares, in bundle layout.

Until the demo bundle (firmware_assets/demo-phantom) exists, and for reproducible backend tables, this
converts `converters.models.build_cam_model(BACKBONE, SIZE)` with random weights (latency does not
depend on the weights) into a folder that `edge.bundle.load` accepts:

    model_fp32.tflite  model_fp16.tflite  model_int8.tflite  model.onnx  model.keras  manifest.json

int8 is full-integer (uint8 input, representative data = random pixels), the variant an Edge TPU
compiler would take; fp16 stores float16 weights that LiteRT dequantizes on load (XNNPACK runs fp32).
The nomogram is a fixed test nomogram so `noa-edge bench --pipeline` can score.

    .venv/bin/python benchmarks/make_bench_models.py --backbone NASNetMobile --size 224 \
        --out runs/bench-models/nasnet224

Host-only (TensorFlow, tf2onnx); run it once, it takes a minute or two per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEST_PREDICTORS = [
    {"name": "dl_logit", "source": "dl_probability", "transform": "logit", "coef": 1.2,
     "label": "DL probability", "unit": "", "range": [0.001, 0.999]},
    {"name": "fsh", "source": "fsh", "transform": "identity", "coef": 0.2, "label": "Serum FSH",
     "unit": "IU/L", "range": [0, 200]},
    {"name": "volume_ml", "source": "volume_ml", "transform": "identity", "coef": -0.3,
     "label": "Testicular volume", "unit": "mL", "range": [0.5, 60]},
    {"name": "edv_cm_s", "source": "edv_cm_s", "transform": "identity", "coef": -0.5, "label": "EDV",
     "unit": "cm/s", "range": [0, 50]}]
AXES = {"dl_logit": (0.01, 0.99), "fsh": (0, 60), "volume_ml": (1, 30), "edv_cm_s": (0, 10)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(backbone: str, size: int, out: Path, variants: list[str]) -> Path:
    import numpy as np
    import tensorflow as tf

    from converters.models import build_cam_model
    from edge.bundle import finalize_manifest
    from edge.nomogram import points_scaling

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_cam_model(backbone, size, seed=0)
    model.save(out / "model.keras")
    log(f"built {backbone} {size}px ({model.count_params():,} params) in {time.perf_counter() - t0:.1f} s")

    specs = {}
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)]

    for variant in [v for v in variants if v in ("fp32", "fp16", "int8")]:
        t0 = time.perf_counter()
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        spec_input = {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
        if variant == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
        data = converter.convert()
        name = f"model_{variant}.tflite"
        (out / name).write_bytes(data)
        if variant == "int8":
            from ai_edge_litert.interpreter import Interpreter

            detail = Interpreter(model_path=str(out / name)).get_input_details()[0]
            scale, zp = detail["quantization"]
            spec_input = {"dtype": str(np.dtype(detail["dtype"])), "scale": float(scale), "zero_point": int(zp)}
        specs[variant] = {"file": name, "target": "coral" if variant == "int8" else "cpu",
                          "dtype": {"fp32": "float32", "fp16": "float16", "int8": "int8"}[variant],
                          "input": spec_input}
        log(f"{variant}: {len(data) / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")

    if "onnx" in variants:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "saved"
            model.export(str(saved), format="tf_saved_model", verbose=False)
            proc = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved),
                                   "--output", str(out / "model.onnx"), "--opset", "17"],
                                  capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"onnx: tf2onnx failed:\n{proc.stderr[-3000:]}")
        else:
            specs["onnx"] = {"file": "model.onnx", "target": "jetson", "dtype": "float32",
                             "input": {"dtype": "uint8", "scale": 1.0, "zero_point": 0}}
            log(f"onnx: {(out / 'model.onnx').stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")

    nomogram = {"schema": "noa-edge.nomogram/1", "placeholder": False, "intercept": 0.5,
                "predictors": TEST_PREDICTORS, "points": points_scaling(TEST_PREDICTORS, AXES),
                "threshold": 0.5, "threshold_method": "fixed_benchmark_fixture"}
    (out / "MODEL_CARD.md").write_text(
        f"# bench bundle\n{backbone} {size}px CAM model with RANDOM weights, for latency benchmarks only. "
        "Its probabilities mean nothing.\n")
    manifest = {
        "schema_version": 1, "name": f"bench-{backbone.lower()}-{size}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "synthetic_demo": True, "intended_use": "latency benchmarks only (random weights)",
        "labels": {"positive": "NOA", "negative": "OA"},
        "input": {"shape": [1, size, size, 3], "dtype": "uint8"},
        "outputs": {"prob": "prob", "cam": "cam"},
        "variants": specs,
        "default_variant": {"cpu": "fp32", **({"coral": "int8"} if "int8" in specs else {})},
        "nomogram": nomogram, "threshold": 0.5,
        "provenance": {"dataset": "none", "dataset_sha256": "", "run": "", "cv_auc": None,
                       "code_version": "benchmarks/make_bench_models.py", "backbone": backbone},
    }
    finalize_manifest(out, manifest)
    log(f"bundle written to {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="NASNetMobile")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-models" / "nasnet224")
    parser.add_argument("--variants", default="fp32,fp16,int8,onnx")
    args = parser.parse_args()
    build(args.backbone, args.size, args.out, [v.strip() for v in args.variants.split(",") if v.strip()])


if __name__ == "__main__":
    main()
