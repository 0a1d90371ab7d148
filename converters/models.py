"""Backbones with a CAM head: one model that outputs the NOA probability and its class-activation map.

The head is GlobalAveragePooling → Dropout → Dense(1, sigmoid), written in its equivalent
"CAM-first" form: a 1×1 convolution applies the Dense weights to every spatial position of the last
feature map A (cam = Σ_k w_k·A_k + b), and the average of that map is the logit. Because GAP and a
Dense layer are both linear, mean(Σ_k w_k A_k + b) = Σ_k w_k mean(A_k) + b, so `prob` is exactly the
usual head's output while `cam` comes for free, in-graph, with no gradients on the device. For this
head Grad-CAM equals CAM up to a positive scale (Selvaraju et al. 2017, §3.1); tests/test_train.py
checks it numerically.

Model input is raw uint8 RGB (S, S, 3): each backbone's own input scaling lives inside the graph, so
every TFLite variant (fp32/fp16/int8/Edge TPU) takes the same pixels. Inputs are grayscale ultrasound
repeated on 3 channels, so the RGB/BGR order expected by a backbone makes no difference.
"""

from __future__ import annotations

from pathlib import Path

from . import require_train_extra
from .errors import WeightsError
from .imagenet_weights import resolve_imagenet

# name -> (keras.applications constructor, input scaling)
BACKBONES = {
    "NASNetMobile": ("NASNetMobile", "tf"),        # x/127.5 - 1
    "MobileNetV2": ("MobileNetV2", "tf"),
    "DenseNet121": ("DenseNet121", "torch"),      # x/255, ImageNet mean/std
    "ResNet50": ("ResNet50", "caffe"),            # x - ImageNet mean (BGR means; gray input)
    "EfficientNetB0": ("EfficientNetB0", "raw"),  # rescales inside keras.applications
}
DEFAULT_BACKBONE = "NASNetMobile"
FEATURES_LAYER = "features"  # last feature map A (Grad-CAM differentiates with respect to it)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN = (103.939, 116.779, 123.68)


def canonical_backbone(name: str) -> str:
    for known in BACKBONES:
        if known.lower() == name.strip().lower():
            return known
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")


def _scaling_layers(keras, kind: str):
    if kind == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_tf")]
    if kind == "torch":
        return [
            keras.layers.Rescaling(1 / 255.0, name="scale_unit"),
            keras.layers.Normalization(
                mean=list(_IMAGENET_MEAN), variance=[s * s for s in _IMAGENET_STD], name="scale_torch"
            ),
        ]
    if kind == "caffe":
        return [keras.layers.Normalization(mean=list(_CAFFE_MEAN), variance=[1.0, 1.0, 1.0], name="scale_caffe")]
    return []


def resolve_weights(weights: str | None) -> str | None:
    """Only local files: offline carts and hosts never download from a hub."""
    if weights is None or weights == "" or weights == "none":
        return None
    if weights == "imagenet":  # its file depends on the backbone (and size): converters.imagenet_weights
        raise WeightsError("'imagenet' is resolved per backbone by converters.imagenet_weights.resolve_imagenet")
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return str(path)


def build_cam_model(backbone: str = DEFAULT_BACKBONE, input_size: int = 224, weights: str | None = None,
                    dropout: float = 0.3, seed: int = 0):
    """uint8 image (S, S, 3) -> {"prob": (1,), "cam": (h, w)}; see the module docstring."""
    tf = require_train_extra("tensorflow")
    keras = tf.keras
    name = canonical_backbone(backbone)
    ctor_name, scaling = BACKBONES[name]
    weights_file = resolve_imagenet(name, input_size) if weights == "imagenet" else resolve_weights(weights)
    keras.utils.set_random_seed(seed)

    image = keras.Input(shape=(input_size, input_size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0, name="to_float")(image)  # uint8 -> float32, scale 1
    for layer in _scaling_layers(keras, scaling):
        x = layer(x)
    ctor = getattr(keras.applications, ctor_name)
    try:
        base = ctor(include_top=False, weights=weights_file, input_tensor=x,
                    input_shape=(input_size, input_size, 3))
    except ValueError as exc:
        if weights_file:
            raise WeightsError(f"weights file {weights_file} does not fit {name} at {input_size}px: {exc}") from exc
        raise
    features = keras.layers.Identity(name=FEATURES_LAYER)(base.output)
    features = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(features)
    # the head computes in float32 under any training precision (converters/precision.py)
    cam_map = keras.layers.Conv2D(1, 1, use_bias=True, name="head_dense", dtype="float32")(features)  # Dense as 1x1
    logit = keras.layers.GlobalAveragePooling2D(name="head_gap", dtype="float32")(cam_map)
    prob = keras.layers.Activation("sigmoid", name="prob", dtype="float32")(logit)
    h, w = cam_map.shape[1], cam_map.shape[2]
    cam = keras.layers.Reshape((h, w), name="cam", dtype="float32")(cam_map)
    return keras.Model(inputs=image, outputs={"prob": prob, "cam": cam}, name=f"{name}_cam")
