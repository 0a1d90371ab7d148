"""Keras model -> TFLite (fp32 / fp16 / int8) and ONNX, with outputs named `prob` and `cam`.

Why the int8 model is converted from a float-input copy of the graph (`float_input_model`): with the
Keras uint8 input the converter keeps a CAST (uint8 -> float32) as the first op; CAST is not an Edge TPU
op and the compiler partitions once, so *every* op would run on the Coral's CPU. Feeding the same graph
(minus its cast layer) float pixels and asking for a uint8 input gives a graph that starts with QUANTIZE
(an Edge TPU op). Its input quantization is then set to exactly scale 1, zero point 0 (the QUANTIZE op
requantizes to the calibrated range, so this is exact; `finalize_tflite`), so the device feeds raw pixels
to every variant. Output tensors are renamed `prob` and `cam` in every .tflite, so outputs are found by
name even where a runtime or the Edge TPU compiler drops the signature.
TensorFlow and tf2onnx are imported inside the functions ([train] extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters import require_train_extra
from converters.errors import ConvertError
from converters.tflite_features import add_features
from converters.tflite_flatbuffer import builtin_code, enum_names, pack, schema, unpack

ONNX_OPSET = 17


def float_input_model(model):
    """The same graph and weights, fed float pixels instead of uint8 (no CAST op: see module docstring)."""
    keras = require_train_extra("keras")
    try:
        start = model.get_layer("to_float").output
    except ValueError as exc:
        raise ConvertError("model.keras has no 'to_float' layer: it was not built by converters.models."
                           "build_cam_model") from exc
    return keras.Model(start, model.output, name=f"{model.name}_float_in")


def frozen_function(model, size: int, dtype: str):
    """The model as one concrete function, image (1, S, S, 3) -> {"prob", "cam"}, variables folded to
    constants. Converting this is ~10x faster here than a SavedModel round trip and gives the same graph;
    finalize_tflite() then adds the serving signature the SavedModel path would have written."""
    tf = require_train_extra("tensorflow")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], getattr(tf, dtype), name="image")])
    def serve(image):
        out = model(image, training=False)
        return {"prob": out["prob"], "cam": out["cam"]}

    return convert_variables_to_constants_v2(serve.get_concrete_function())


def convert_tflite(function, kind: str, calibration: np.ndarray | None = None, per_channel: bool = True) -> bytes:
    """The TFLite converter's own fp32 / fp16 / int8. The bundle's fp16 is built by converters.fp16_weights
    from the fp32 one instead (same format, stem kept fp32); "fp16" here is its reference in the tests."""
    tf = require_train_extra("tensorflow")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    if kind == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConvertError("int8 needs a representative (calibration) set")

        def representative():
            for roi in calibration:
                yield [roi[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        if not per_channel:
            converter._experimental_disable_per_channel = True
    return converter.convert()


def finalize_tflite(buf: bytes, raw_pixel_input: bool) -> tuple[bytes, dict]:
    """Name the input `image` and the outputs `prob` and `cam` (tensor names and a serving_default
    signature), add the `features` output, and, for a quantized uint8 input feeding only QUANTIZE ops, set
    its quantization to scale 1 / zero point 0 (raw pixels; exact, see the module docstring).
    Returns the new flatbuffer and the input spec {dtype, scale, zero_point}."""
    tfl = schema()
    model = unpack(buf)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 2:
        raise ConvertError(f"converted graph has {len(graph.inputs)} inputs / {len(graph.outputs)} outputs, "
                           "expected 1 / 2")
    # prob is (1, 1), cam is (1, h, w): rank tells them apart whatever order the converter chose
    names = {}
    for index in graph.outputs:
        rank = len(graph.tensors[index].shape)
        names[index] = "prob" if rank == 2 else "cam"
    if sorted(names.values()) != ["cam", "prob"]:
        shapes = [list(graph.tensors[i].shape) for i in graph.outputs]
        raise ConvertError(f"cannot tell prob from cam by shape: {shapes}")
    for index, name in names.items():
        graph.tensors[index].name = name
    graph.tensors[graph.inputs[0]].name = "image"
    signature = tfl.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [_tensor_map(tfl, "image", graph.inputs[0])]
    signature.outputs = [_tensor_map(tfl, name, index) for index, name in sorted(names.items(), key=lambda kv: kv[1])]
    model.signatureDefs = [signature]
    add_features(model)  # the pooled features as a third output `features` (converters/tflite_features.py)

    tensor = graph.tensors[graph.inputs[0]]
    q = tensor.quantization
    dtype = enum_names(tfl.TensorType)[tensor.type].lower()
    spec = {"dtype": dtype, "scale": 1.0, "zero_point": 0}
    quantized = q is not None and q.scale is not None and len(q.scale) > 0 and float(q.scale[0]) != 0.0
    if quantized:
        consumers = [op for op in graph.operators if graph.inputs[0] in list(op.inputs)]
        quantize_code = tfl.BuiltinOperator.QUANTIZE
        only_quantize = all(builtin_code(model.operatorCodes[op.opcodeIndex]) == quantize_code for op in consumers)
        if raw_pixel_input and dtype == "uint8" and only_quantize:
            q.scale, q.zeroPoint = [1.0], [0]
        spec = {"dtype": dtype, "scale": float(q.scale[0]), "zero_point": int(q.zeroPoint[0])}
    return pack(model, len(buf)), spec


def _tensor_map(tfl, name: str, index: int):
    entry = tfl.TensorMapT()
    entry.name, entry.tensorIndex = name, index
    return entry


def convert_onnx(model, size: int, path: Path) -> None:
    tf = require_train_extra("tensorflow")
    tf2onnx = require_train_extra("tf2onnx")
    spec = [tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")]

    @tf.function(input_signature=spec)
    def serve(image):
        out = model(image, training=False)
        return {"prob": out["prob"], "cam": out["cam"]}

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=ONNX_OPSET, output_path=str(path))
