"""The `features` output (converters/tflite_features.py): added by a flatbuffer edit that leaves `prob` and `cam`
bit-identical, on every variant of the shipped demo bundle (fp32, fp16, int8 — the Edge TPU compiles int8),
and it is the pooled vector the head multiplies: sigmoid(w . features + b) is `prob` (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from conftest import ROOT
from converters.tflite_features import FEATURES, head_input, output_index, with_features
from converters.tflite_flatbuffer import builtin_code, pack, read_tflite, schema
from edge.imaging import decode_image
from edge.preprocess import crop_roi
from edge.roi import find_image_area, propose_roi

DEMO = ROOT / "firmware_assets" / "demo-phantom"
SAMPLES = ROOT / "docs" / "samples"


def without_features(buf: bytes) -> bytes:
    """The model as it was before the edit (a bundle built before the OOD guard): output, signature entry and
    the added MEAN removed."""
    model = read_tflite(buf)
    graph = model.subgraphs[0]
    index = output_index(graph, FEATURES)
    assert index is not None
    graph.outputs = [int(i) for i in graph.outputs if int(i) != index]
    for sig in model.signatureDefs:
        sig.outputs = [e for e in sig.outputs if e.tensorIndex != index]
    graph.operators = [op for op in graph.operators if index not in [int(t) for t in op.outputs]]
    return pack(model, len(buf))


def rois(size: int) -> list[np.ndarray]:
    """A phantom ROI as the cart crops it, its inverse, noise and black."""
    frame = decode_image((SAMPLES / "oa.png").read_bytes(), "oa.png").frame
    gray = frame[..., 0].copy()
    roi = crop_roi(frame, propose_roi(gray, find_image_area(gray)), size)
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return [roi, 255 - roi, noise, np.zeros_like(roi)]


def outputs(buf: bytes, images: list[np.ndarray]) -> list[dict]:
    runner = Interpreter(model_content=buf, num_threads=1).get_signature_runner("serving_default")
    return [runner(image=x[None]) for x in images]


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_features_edit_keeps_prob_and_cam_bit_identical(variant):
    shipped = (DEMO / f"model_{variant}.tflite").read_bytes()
    old = without_features(shipped)
    assert len(read_tflite(old).subgraphs[0].outputs) == 2
    new = with_features(old)
    assert with_features(new) is new  # idempotent: a bundle that has it is left byte for byte
    graph = read_tflite(new).subgraphs[0]
    assert output_index(graph, FEATURES) is not None and len(graph.outputs) == 3
    images = rois(224)
    before, after = outputs(old, images), outputs(new, images)
    for a, b in zip(before, after, strict=True):
        assert set(b) == {"prob", "cam", FEATURES} and set(a) == {"prob", "cam"}
        assert np.array_equal(a["prob"], b["prob"]) and np.array_equal(a["cam"], b["cam"])
        assert b[FEATURES].shape == (1, 1056)
    # the shipped file answers the same as the freshly edited one
    for a, b in zip(after, outputs(shipped, images), strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in ("prob", "cam", FEATURES))


def test_features_are_the_pooled_vector_the_head_weighs():
    buf = (DEMO / "model_fp32.tflite").read_bytes()
    model = read_tflite(buf)
    graph = model.subgraphs[0]
    source, kind = head_input(model)
    assert kind == "CONV_2D"  # our CAM head: Dense weights as a 1x1 conv on the feature map, then a mean
    head = next(op for op in graph.operators if int(op.inputs[0]) == source
                and builtin_code(model.operatorCodes[op.opcodeIndex]) == schema().BuiltinOperator.CONV_2D)
    w = np.frombuffer(bytes(model.buffers[graph.tensors[head.inputs[1]].buffer].data), np.float32).reshape(-1)
    b = np.frombuffer(bytes(model.buffers[graph.tensors[head.inputs[2]].buffer].data), np.float32)[0]
    for out in outputs(buf, rois(224)):
        f = out[FEATURES].reshape(-1).astype(np.float64)
        assert np.all(f >= 0)  # a mean of ReLU activations
        p = 1.0 / (1.0 + np.exp(-(f @ w + b)))
        assert p == pytest.approx(float(out["prob"].reshape(-1)[0]), abs=1e-5)
