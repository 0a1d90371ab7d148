#!/usr/bin/env bash
# `make firmware`: regenerate the shipped demo bundle firmware_assets/demo-phantom from the seed.
#   phantom cohort (default sizes, fixed seed) -> NASNetMobile at INPUT_SIZE px (patient-grouped 5-fold CV + final
#   model) -> nomogram -> convert (fp32 + fp16 for cpu, int8 for coral, then the out-of-distribution guard:
#   converters/ood_fit.py) -> verify. An older bundle gets the guard without retraining:
#   noa-edge bundle-ood firmware_assets/demo-phantom runs/demo-phantom/dataset
# The shipped demo stays within the house's 40 MB budget, so it carries no ONNX variant; a device that wants
# --runtime onnxruntime|auto adds one from the fp32 TFLite with `noa-edge bundle-onnx BUNDLE` (+17 MB).
# Long: about 70 min on 2 cores (training 57 min at 224 px, conversion 10-13 min with all int8 retries). Every step resumes or is skipped if its output exists,
# except the conversion, which always rewrites the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
NOA=${NOA:-.venv/bin/noa-edge}
SEED=${SEED:-0}
# The shipped bundle: 224 px (the paper's input), at most 10 epochs per fold, patience 3 on the inner val AUC.
INPUT_SIZE=${INPUT_SIZE:-224}
EPOCHS=${EPOCHS:-10}
PATIENCE=${PATIENCE:-3}
WORK=${WORK:-runs/demo-phantom}
OUT=${OUT:-firmware_assets/demo-phantom}
BUDGET_BYTES=$((40 * 1024 * 1024))
export PYTHONHASHSEED=0 TF_DETERMINISTIC_OPS=1 TF_CUDNN_DETERMINISTIC=1

if [ ! -f "$WORK/dataset/dataset.json" ]; then
  "$NOA" simulate "$WORK/dataset" --seed "$SEED" --quiet
fi
if [ ! -f "$WORK/run/model.keras" ]; then
  "$NOA" train "$WORK/dataset" --out "$WORK/run" --backbones NASNetMobile --input-size "$INPUT_SIZE" \
    --epochs "$EPOCHS" --patience "$PATIENCE" --seed "$SEED"
fi
if [ ! -f "$WORK/run/nomogram.json" ]; then
  "$NOA" nomogram "$WORK/run" --seed "$SEED"
fi
"$NOA" convert "$WORK/run" --out "$OUT" --name demo-phantom --targets cpu,coral --seed "$SEED" \
  --calibration-size 200 --synthetic-demo --overwrite
"$NOA" bundle verify "$OUT"
"$NOA" bundle info "$OUT"
size=$(du -sb "$OUT" | cut -f1)
echo "demo bundle: $size bytes (budget $BUDGET_BYTES)"
if [ "$size" -gt "$BUDGET_BYTES" ]; then
  echo "error: $OUT is larger than 40 MB" >&2
  exit 1
fi
