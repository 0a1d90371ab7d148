"""`noa-edge train --precision auto|fp32|bf16`: the arithmetic a training run uses, and the fp32 model it exports.

bf16 is Keras' `mixed_bfloat16` policy: layers compute in bfloat16, variables (and so every saved weight) stay
float32, and the classification head (`head_*`, `prob`, `cam`, built with dtype float32 in converters/models.py)
computes in float32. On CPUs with AVX512-BF16 or AMX (flags `avx512_bf16` / `amx_bf16` in /proc/cpuinfo)
oneDNN runs bf16 convolutions and matrix products natively; elsewhere bf16 is emulated and slower, so `auto`
picks bf16 only where those flags are present, and not for a backbone measured slower in bf16 even there
(`AUTO_FP32_BACKBONES`: NASNetMobile). The exported model is always float32 (`export_copy`): the
converter, its fidelity checks and every device variant take the same graph whatever the training precision.
Measured on this project's host: benchmarks/precision_bench.py, benchmarks/RESULTS.md "## Training precision".
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from converters.errors import TrainError

PRECISIONS = ("auto", "fp32", "bf16")
KERAS_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Measured on this project's AMX host (benchmarks/results/issue15/precision*.json, 224 px, TF 2.21): ResNet50
# trains ~2x faster in bf16, NASNetMobile ~1.7x slower (its depthwise-separable convolutions gain nothing
# from AMX and every one of its ~190 BatchNormalization layers adds two casts). 'auto' keeps these in fp32.
AUTO_FP32_BACKBONES = ("NASNetMobile",)


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bf16 flags (avx512_bf16, amx_bf16) this CPU reports; [] when none or no /proc/cpuinfo."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [f for f in BF16_FLAGS if f in flags]


def resolve_precision(choice: str, cpuinfo: str | Path = "/proc/cpuinfo", eager: bool = False) -> str:
    """'auto' | 'fp32' | 'bf16' -> 'fp32' | 'bf16'. 'auto': bf16 where the CPU has native bf16, else fp32;
    and fp32 for an eager run (`--quick`): op by op, the casts around every layer cost more than bf16 saves
    (one --quick run of two backbones on the shared host: 183 s in bf16, 141 s in fp32)."""
    choice = (choice or "auto").strip().lower()
    if choice not in PRECISIONS:
        raise TrainError(f"--precision {choice!r}: choose from {', '.join(PRECISIONS)}")
    if choice == "auto":
        return "bf16" if cpu_bf16_flags(cpuinfo) and not eager else "fp32"
    return choice


def backbone_precision(precision: str, requested: str, backbone: str) -> str:
    """The precision one backbone trains in: `precision` (the run's resolved one), except that 'auto' keeps
    fp32 for backbones measured slower in bf16 on a bf16 CPU (AUTO_FP32_BACKBONES)."""
    if precision == "bf16" and (requested or "auto").strip().lower() == "auto" and backbone in AUTO_FP32_BACKBONES:
        return "fp32"
    return precision


@contextlib.contextmanager
def keras_policy(precision: str):
    """Layers built inside take the precision's Keras dtype policy; the previous global policy comes back."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def export_copy(model, rebuild):
    """A float32 model with `model`'s trained weights. `rebuild()` builds the same architecture (called
    under the float32 policy); mixed-precision variables are float32 already, so the copy is exact."""
    if all(_policy_name(layer) == "float32" for layer in model.layers):
        return model
    with keras_policy("fp32"):
        fp32 = rebuild()
    weights = model.get_weights()
    if len(weights) != len(fp32.weights):
        raise TrainError(f"float32 copy of {model.name}: {len(fp32.weights)} weights, trained model has {len(weights)}")
    fp32.set_weights(weights)
    return fp32


def _policy_name(layer) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "name", "float32")
