"""`--weights imagenet`: each backbone's ImageNet no-top file, from the Keras cache or Keras' own download.

The file names, addresses and hashes below are the ones keras.applications passes to keras.utils.get_file
(tests/test_imagenet_weights.py checks them against the installed Keras). A file already in the cache folder
(`$KERAS_HOME/models`, default `~/.keras/models`) is used as it is, without a download; otherwise Keras
downloads it into that folder. Offline, the command fails in one line naming the file and the folder, so the
user can copy it there from a machine that is online. We never let Keras re-fetch a file that is already
there: on a hash mismatch get_file deletes the local file before it tries to download, and offline that would
throw away what the user just copied in.

ImageNet filters expect 3 channels (the model's input is grey on 3 equal channels) and each backbone's own
input scaling, which the model does in-graph (converters/models.py, checked against preprocess_input in
tests/test_backbone_scaling.py), so the cart keeps feeding raw uint8 pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from converters.errors import WeightsError

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)  # keras ships MobileNetV2 weights for these; others get 224's


@dataclass(frozen=True)
class ImagenetFile:
    backbone: str
    fname: str        # the name in the cache folder
    origin: str       # where Keras downloads it from
    md5: str | None   # the hash Keras checks (MobileNetV2: none)


def imagenet_file(backbone: str, input_size: int) -> ImagenetFile:
    """The no-top ImageNet weights file keras.applications loads for `backbone` at `input_size`."""
    if backbone == "NASNetMobile":
        return ImagenetFile(backbone, "nasnet_mobile_no_top.h5", _GCS + "nasnet/NASNet-mobile-no-top.h5",
                            "1ed92395b5b598bdda52abe5c0dbfd63")
    if backbone == "MobileNetV2":
        rows = input_size if input_size in MOBILENET_V2_SIZES else 224
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
        return ImagenetFile(backbone, name, _GCS + "mobilenet_v2/" + name, None)
    if backbone == "DenseNet121":
        name = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return ImagenetFile(backbone, name, _GCS + "densenet/" + name, "30ee3e1110167f948a6b9946edeeb738")
    if backbone == "ResNet50":
        name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return ImagenetFile(backbone, name, _GCS + "resnet/" + name, "4d473c1dd8becc155b73f8504c6f6626")
    if backbone == "EfficientNetB0":
        return ImagenetFile(backbone, "efficientnetb0_notop.h5",
                            "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
                            "50bc09e76180e00e4465e1a485ddc09d")
    raise WeightsError(f"no ImageNet weights known for backbone {backbone!r}")


def keras_cache_folder() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models (default ~/.keras/models; /tmp/.keras/models
    when the home folder is not writable, as Keras does), read when called so KERAS_HOME can be set late."""
    base = os.environ.get("KERAS_HOME")
    if not base:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    elif os.path.isdir(base) and not os.access(base, os.W_OK):
        base = "/tmp/.keras"
    return Path(base) / "models"


def resolve_imagenet(backbone: str, input_size: int) -> str:
    """Local path of the backbone's ImageNet no-top file: the cached one, else downloaded by Keras.
    Raises WeightsError with one line naming the file and the folder when it is missing and cannot be fetched."""
    wanted = imagenet_file(backbone, input_size)
    folder = keras_cache_folder()
    path = folder / wanted.fname
    if path.is_file():
        return str(path)
    import keras

    try:
        got = keras.utils.get_file(wanted.fname, wanted.origin, cache_subdir="models",
                                   cache_dir=str(folder.parent), file_hash=wanted.md5)
    except Exception as exc:  # noqa: BLE001 - urllib/HTTP/hash failures: all mean "not available here"
        reason = " ".join(str(exc).split())[:200]
        raise WeightsError(
            f"--weights imagenet: {backbone} needs {wanted.fname} in {folder}/ and it could not be downloaded "
            f"({reason}); copy that file there (from {wanted.origin}; KERAS_HOME moves the folder) and run again, "
            "or pass --weights PATH to a local Keras no-top .h5") from None
    return str(got)
