"""The `features` output: the pooled backbone features (the vector the head's Dense weights multiply), added
to a finished .tflite by a flatbuffer edit, so new bundles and shipped ones (no retraining) get the same.

The out-of-distribution guard (converters/ood_fit.py, edge/ood.py) scores these features. Where they are:
walk back from `prob` through the single-input tail ops (DEQUANTIZE, LOGISTIC, MEAN, RESHAPE...) to the head
op, a FULLY_CONNECTED or a 1x1 CONV_2D. Our CAM head (converters/models.py) applies the Dense weights to the
feature map as a 1x1 convolution (that gives `cam`) and averages it (that gives the logit), so the graph never
holds the pooled vector itself: then one MEAN over H and W of the head's input feature map is added (same
reducer options and, for int8, the same quantization as the feature map: a mean stays inside its range),
inserted right after the op that makes the feature map, so on the Edge TPU it stays inside the one TPU
partition. With a FULLY_CONNECTED head its [1, C] input is the output as it is. No existing op or tensor
changes: `prob` and `cam` stay bit-identical (tests/test_ood_features.py checks it on every variant).
"""

from __future__ import annotations

import numpy as np

from converters.errors import ConvertError
from converters.tflite_flatbuffer import builtin_code, pack, read_tflite, schema

FEATURES = "features"
TAIL_OPS = ("DEQUANTIZE", "QUANTIZE", "LOGISTIC", "MEAN", "RESHAPE", "SQUEEZE")


def _name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name or "")


def _op_name(tfl, model, op) -> str:
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(builtin_code(model.operatorCodes[op.opcodeIndex]), "?")


def output_index(graph, name: str) -> int | None:
    """The graph output tensor called `name` (None if none)."""
    hits = [i for i in graph.outputs if _name(graph.tensors[i]) == name]
    return int(hits[0]) if hits else None


def head_input(model) -> tuple[int, str]:
    """(tensor index, head op) of the tensor the head multiplies by its Dense weights: walk back from `prob`."""
    tfl = schema()
    graph = model.subgraphs[0]
    prob = output_index(graph, "prob")
    if prob is None:
        raise ConvertError("the model has no output tensor named 'prob' (finalize the names first)")
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    tensor = prob
    for _ in range(16):
        op = producer.get(tensor)
        if op is None:
            break
        kind = _op_name(tfl, model, op)
        if kind in ("FULLY_CONNECTED", "CONV_2D"):
            return int(op.inputs[0]), kind
        if kind not in TAIL_OPS:
            break
        tensor = int(op.inputs[0])
    raise ConvertError("cannot find the model head (a FULLY_CONNECTED or 1x1 CONV_2D) behind 'prob'")


def add_features(model) -> bool:
    """Add the `features` output ([1, C], pooled) to the unpacked model (schema.ModelT) in place: a graph
    output, named `features` and listed in every signature. False if it is there already."""
    tfl = schema()
    graph = model.subgraphs[0]
    if output_index(graph, FEATURES) is not None:
        return False
    source, kind = head_input(model)
    shape = [int(v) for v in graph.tensors[source].shape]
    if kind == "FULLY_CONNECTED" or len(shape) == 2:
        index = source
    elif len(shape) == 4:
        index = _add_mean(tfl, model, graph, source, shape)
    else:
        raise ConvertError(f"head input has shape {shape}: expected [1, C] or [1, H, W, C]")
    graph.tensors[index].name = FEATURES
    graph.outputs = [int(i) for i in graph.outputs] + [index]
    for signature in model.signatureDefs or []:
        entry = tfl.TensorMapT()
        entry.name, entry.tensorIndex = FEATURES, index
        signature.outputs = list(signature.outputs or []) + [entry]
        signature.outputs.sort(key=lambda e: e.name if isinstance(e.name, str) else e.name.decode())
    return True


def _add_mean(tfl, model, graph, source: int, shape: list[int]) -> int:
    """MEAN over axes 1, 2 of tensor `source` into a new [1, C] tensor; returns its index."""
    mean_code = tfl.BuiltinOperator.MEAN
    reference = next((op for op in graph.operators if builtin_code(model.operatorCodes[op.opcodeIndex]) == mean_code),
                     None)
    if reference is not None:
        opcode_index = reference.opcodeIndex
    else:
        code = tfl.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = mean_code, min(mean_code, 127), 1
        model.operatorCodes.append(code)
        opcode_index = len(model.operatorCodes) - 1
    axes_buffer = tfl.BufferT()
    axes_buffer.data = np.frombuffer(np.array([1, 2], dtype="<i4").tobytes(), dtype=np.uint8)
    model.buffers.append(axes_buffer)
    axes = tfl.TensorT()
    axes.shape, axes.type, axes.buffer, axes.name = [2], tfl.TensorType.INT32, len(model.buffers) - 1, "features_axes"
    graph.tensors.append(axes)
    axes_index = len(graph.tensors) - 1

    src = graph.tensors[source]
    model.buffers.append(tfl.BufferT())  # activations get an empty buffer
    out = tfl.TensorT()
    out.shape, out.type, out.buffer, out.name = [shape[0], shape[3]], src.type, len(model.buffers) - 1, FEATURES
    if src.quantization is not None and src.quantization.scale is not None and len(src.quantization.scale):
        q = tfl.QuantizationParametersT()
        q.scale, q.zeroPoint = list(src.quantization.scale), list(src.quantization.zeroPoint)
        out.quantization = q
    graph.tensors.append(out)
    out_index = len(graph.tensors) - 1

    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode_index, [source, axes_index], [out_index]
    op.builtinOptionsType = tfl.BuiltinOptions.ReducerOptions
    options = tfl.ReducerOptionsT()
    options.keepDims = False
    op.builtinOptions = options
    where = next(k for k, o in enumerate(graph.operators) if source in [int(t) for t in o.outputs]) + 1
    graph.operators.insert(where, op)
    return out_index


def with_features(buf: bytes) -> bytes:
    """A finished .tflite with the `features` output added (unchanged bytes when it has one already)."""
    model = read_tflite(buf)
    if not add_features(model):
        return buf
    return pack(model, len(buf))
