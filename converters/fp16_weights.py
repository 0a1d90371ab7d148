"""fp16-weight TFLite with the graph's first few constant tensors kept in fp32.

Why not the converter's own fp16 mode: it rounds *every* float constant to an 11-bit mantissa. In our
models the in-graph pixel scaling (x / 127.5 - 1) is folded into the stem convolution, so that conv
multiplies raw 0..255 pixels by small weights and cancels the result against a large bias; rounding both
to fp16 breaks the cancellation. Measured on the 160 px demo model (60 ROIs): rounding all 560 constant
tensors gave max |dprob| 2.7e-3; rounding all but the stem conv's weights and bias (896 numbers, 3.5 kB
more) gave 4.0e-4. Rounding to an 11-bit mantissa with unlimited exponent range gave the same 2.7e-3, so
it is precision, not fp16's range.

The file format is the one the converter writes (fp16 constant -> DEQUANTIZE -> fp32 tensor, DEQUANTIZE
ops first), which XNNPACK, the GPU delegate and TensorRT-minded tools already read; the kept tensors simply
stay fp32 constants. `choose_fp16_keep` picks how many leading tensors to keep from a short ladder, on the
calibration ROIs (never the held-out ones the fidelity report uses).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from converters.tflite_flatbuffer import builtin_code, pack, read_tflite, schema

KEEP_LADDER = (0, 2, 5, 10, 20, 40, 80)


def _is_constant(model, tensor) -> bool:
    data = model.buffers[tensor.buffer].data
    return data is not None and len(data) > 0


def constant_float_tensors(model) -> list[int]:
    """Indices of float32 constant tensors of subgraph 0, ordered by the first operator that reads them."""
    tfl = schema()
    graph = model.subgraphs[0]
    first_use: dict[int, int] = {}
    for k, op in enumerate(graph.operators):
        for i in op.inputs:
            if i >= 0 and i not in first_use:
                first_use[i] = k
    found = [i for i, t in enumerate(graph.tensors)
             if t.type == tfl.TensorType.FLOAT32 and _is_constant(model, t) and i in first_use]
    return sorted(found, key=lambda i: (first_use[i], i))


def fp16_weights(fp32_tflite: bytes, keep_fp32: int = 0) -> tuple[bytes, dict]:
    """Rewrite an fp32 TFLite flatbuffer with fp16 weights, except the first `keep_fp32` constant float
    tensors in graph order. Returns the flatbuffer and {"kept_tensors", "kept_weights", "fp16_tensors"}."""
    model = read_tflite(fp32_tflite)
    return _rewrite(model, constant_float_tensors(model)[keep_fp32:], len(fp32_tflite))


def fp16_round(fp32_tflite: bytes, rounded: list[int]) -> tuple[bytes, dict]:
    """Store the given constant float tensors (indices) as fp16 + DEQUANTIZE; the others stay fp32."""
    return _rewrite(read_tflite(fp32_tflite), rounded, len(fp32_tflite))


def _rewrite(model, rounded: list[int], size_hint: int) -> tuple[bytes, dict]:
    tfl = schema()
    graph = model.subgraphs[0]
    order = constant_float_tensors(model)
    not_weights = sorted(set(rounded) - set(order))
    if not_weights:
        raise ValueError(f"tensors {not_weights[:5]} are not constant float32 weights")
    rounded_set = set(rounded)
    kept = [i for i in order if i not in rounded_set]

    deq = tfl.BuiltinOperator.DEQUANTIZE
    codes = model.operatorCodes
    opcode = next((k for k, c in enumerate(codes) if builtin_code(c) == deq and c.version == 3), None)
    if opcode is None:  # version 3 = fp16 input (what the converter writes for fp16 weights)
        code = tfl.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = deq, deq, 3
        codes.append(code)
        opcode = len(codes) - 1

    dequantize_ops = []
    for index in rounded:
        tensor = graph.tensors[index]
        values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=np.float32)
        half = tfl.BufferT()
        half.data = np.frombuffer(values.astype(np.float16).tobytes(), dtype=np.uint8)
        model.buffers.append(half)
        source = tfl.TensorT()
        source.shape, source.shapeSignature = tensor.shape, tensor.shapeSignature
        source.type, source.buffer = tfl.TensorType.FLOAT16, len(model.buffers) - 1
        source.name = (tensor.name or b"") + b"_fp16"
        graph.tensors.append(source)
        tensor.buffer = 0  # buffer 0 is the empty sentinel: the tensor is now computed, not stored
        op = tfl.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode, [len(graph.tensors) - 1], [index]
        dequantize_ops.append(op)
    graph.operators = dequantize_ops + list(graph.operators)

    used = {t.buffer for sg in model.subgraphs for t in sg.tensors}
    for b, buffer in enumerate(model.buffers):  # drop fp32 copies nothing points at any more
        if b not in used and buffer.data is not None:
            buffer.data = None
    out = pack(model, size_hint)
    sizes = [len(model.buffers[graph.tensors[i].buffer].data) // 4 for i in kept]
    return out, {"kept_tensors": len(kept), "kept_weights": int(sum(sizes)),
                                     "fp16_tensors": len(rounded)}


def tflite_probs(buf: bytes, x: np.ndarray) -> np.ndarray:
    """DL probability per ROI through the device wrapper (edge.runtime.ModelRunner)."""
    from edge.runtime import ModelRunner

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(buf)
        runner = ModelRunner(path, variant="fp32", num_threads=2)
        return np.array([runner.run(roi)[0] for roi in x], dtype=np.float64)


def choose_fp16_keep(fp32_tflite: bytes, x_calibration: np.ndarray, max_abs_dprob: float,
                     ladder=KEEP_LADDER) -> tuple[bytes, dict]:
    """The fewest kept-fp32 tensors (from `ladder`) whose fp16 model stays within half the target
    max |dprob| of the fp32 model on the calibration ROIs; the last rung if none does.
    Returns the flatbuffer and {"kept_tensors", "kept_weights", "fp16_tensors", "tried": [...]}."""
    reference = tflite_probs(fp32_tflite, x_calibration)
    tried = []
    for keep in ladder:
        buf, info = fp16_weights(fp32_tflite, keep)
        worst = float(np.abs(tflite_probs(buf, x_calibration) - reference).max())
        tried.append({"kept_tensors": info["kept_tensors"], "kept_weights": info["kept_weights"],
                      "calibration_max_abs_dprob": worst})
        if worst <= max_abs_dprob / 2:
            break
    return buf, {**info, "tried": tried, "rule": f"fewest leading tensors kept fp32 with max|dprob| <= "
                                                   f"{max_abs_dprob / 2:g} on {len(x_calibration)} calibration ROIs"}
