"""Each backbone's in-graph pixel scaling equals keras.applications.<family>.preprocess_input.

The model takes raw uint8 pixels and scales them inside the graph (docs/CONTRACTS.md), so a wrong scaling
(x/255 where the backbone expects x/127.5 − 1, a variance given as a standard deviation, ...) trains and
converts without any error and only costs accuracy. The real constructor is swapped for a tiny stand-in that
records the tensor build_cam_model hands to the backbone: the real build path runs, in seconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="host test: needs the [train] extra")

from converters.models import BACKBONES, build_cam_model  # noqa: E402

FAMILY = {"NASNetMobile": "nasnet", "MobileNetV2": "mobilenet_v2", "DenseNet121": "densenet",
          "ResNet50": "resnet50", "EfficientNetB0": "efficientnet"}
SIZE = 32


def _scaled_input(monkeypatch, name: str):
    """(model input -> tensor handed to the backbone constructor), through the real build_cam_model."""
    keras = tf.keras
    seen = {}

    def tiny_backbone(include_top, weights, input_tensor, input_shape):
        seen["x"] = input_tensor
        return SimpleNamespace(output=keras.layers.Conv2D(2, 3, strides=8, padding="same")(input_tensor))

    monkeypatch.setattr(keras.applications, BACKBONES[name][0], tiny_backbone)
    model = build_cam_model(name, SIZE, seed=0)
    return keras.Model(model.inputs[0], seen["x"])


def _reference(name: str, pixels: np.ndarray) -> np.ndarray:
    family = getattr(tf.keras.applications, FAMILY[name])
    return np.asarray(family.preprocess_input(pixels.astype(np.float32).copy()))


def test_every_backbone_is_covered():
    assert set(FAMILY) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_in_graph_scaling_equals_preprocess_input_on_grey_pixels(monkeypatch, name):
    """The model's real input: grey ultrasound on 3 equal channels (edge.preprocess.crop_roi)."""
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
    grey[0, 0, 0, 0], grey[0, 0, 1, 0] = 0, 255                  # both ends of the range
    pixels = np.repeat(grey, 3, axis=3)
    got = np.asarray(_scaled_input(monkeypatch, name)(pixels))
    np.testing.assert_allclose(got, _reference(name, pixels), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["DenseNet121", "EfficientNetB0", "MobileNetV2", "NASNetMobile"])
def test_in_graph_scaling_equals_preprocess_input_on_colour_pixels(monkeypatch, name):
    pixels = np.random.default_rng(8).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    got = np.asarray(_scaled_input(monkeypatch, name)(pixels))
    np.testing.assert_allclose(got, _reference(name, pixels), rtol=1e-5, atol=1e-4)


def test_resnet50_caffe_scaling_differs_from_keras_only_by_channel_order(monkeypatch):
    """Caffe mode also flips RGB to BGR; the graph subtracts the BGR means without the flip. Same numbers
    for grey input (the only input the model gets, above), so this pins the known difference, no more."""
    pixels = np.random.default_rng(9).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    got = np.asarray(_scaled_input(monkeypatch, "ResNet50")(pixels))
    np.testing.assert_allclose(got, _reference("ResNet50", pixels[..., ::-1]), rtol=1e-5, atol=1e-4)
