#!/usr/bin/env bash
# Reproduce the tables in benchmarks/RESULTS.md (sections Inference backends, Pipeline, Memory and cold start,
# Why int8 is slower on x86). Host only: the Keras row and the model build need TensorFlow ([train] extra).
#   benchmarks/run_all.sh [BUNDLE]      default: a NASNetMobile 224 bench bundle built into runs/bench-models
# Takes ~15-25 min on 2 cores. Results land in benchmarks/results/*.json; compare later runs with
#   noa-edge bench ... --compare benchmarks/results/backends.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NOA=${NOA:-.venv/bin/noa-edge}
BUNDLE=${1:-runs/bench-models/nasnet224}
OUT=benchmarks/results
mkdir -p "$OUT"
if [ ! -f "$BUNDLE/manifest.json" ]; then
  "$PY" benchmarks/make_bench_models.py --backbone NASNetMobile --size 224 --out "$BUNDLE"
fi
# 1. every variant x backend x threads, interleaved in one process
"$NOA" bench --bundle "$BUNDLE" --variants fp32,fp16,int8,edgetpu \
  --backends litert,tflite-runtime,onnxruntime,keras --threads 1,2 --runs 100 --warmup 10 \
  --quiet --json "$OUT/backends.json"
# 2. the pipeline, frozen cine frame -> stored exam, per stage, interleaved with a bare invoke
"$NOA" bench --bundle "$BUNDLE" --variants fp32 --backends litert --threads 2 --runs 100 --warmup 5 \
  --pipeline --quiet --json "$OUT/pipeline.json"
# 3. a sustained live feed: the phantom cine at 15 fps for 60 s through the real capture thread
"$NOA" bench --bundle "$BUNDLE" --variants fp32 --backends litert --threads 2 --runs 5 --warmup 1 \
  --sustained 60 --fps 15 --quiet --json "$OUT/sustained.json"
# 4. memory and cold start, one fresh process per measurement
"$PY" benchmarks/cold_start.py --bundle "$BUNDLE" --threads 2 --repeats 3 --json "$OUT/cold_start.json"
# 5. the levers: XNNPACK vs built-in kernels per variant, input copies, CAM and image encoding
"$PY" benchmarks/levers.py --bundle "$BUNDLE" --runs 40 --json "$OUT/levers.json"
