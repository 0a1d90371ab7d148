"""`noa-edge train --weights imagenet`, offline: the one-line refusal names the exact file and folder, and a file
put there is then used without any download; a local PATH keeps working.

No test touches the network: the download is cut where Keras makes it (keras.utils.get_file's urlretrieve
raises the URLError a machine without DNS gives), and KERAS_HOME points at a temporary folder.
"""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="host test: needs the [train] extra")

import h5py  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402
from keras.src.utils import file_utils  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from converters.errors import WeightsError  # noqa: E402
from converters.imagenet_weights import imagenet_file, keras_cache_folder, resolve_imagenet  # noqa: E402
from converters.models import BACKBONES, build_cam_model  # noqa: E402
from converters.train import make_config  # noqa: E402


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """KERAS_HOME in tmp_path and no network for Keras' downloader; yields the list of attempted URLs."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    tried = []

    def no_network(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return tried


def _cli(args):
    import typer

    from converters.cli import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, args)


def test_the_file_table_is_what_keras_applications_asks_for(monkeypatch):
    """Each constructor is stopped at its get_file call: the name, address and hash it passes are ours."""
    asked = {}

    class Stop(Exception):
        pass

    def record(fname, origin, cache_subdir="datasets", file_hash=None, **kwargs):
        asked["call"] = (fname, origin, file_hash)
        raise Stop

    monkeypatch.setattr(file_utils, "get_file", record)
    for name, size in [(b, 32) for b in BACKBONES] + [("MobileNetV2", 96), ("MobileNetV2", 224)]:
        ctor = getattr(tf.keras.applications, BACKBONES[name][0])
        with pytest.raises(Stop):
            ctor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
        ours = imagenet_file(name, size)
        assert asked.pop("call") == (ours.fname, ours.origin, ours.md5), (name, size)
    assert imagenet_file("MobileNetV2", 64).fname.endswith("_1.0_224_no_top.h5")  # Keras' default for odd sizes


def test_offline_without_the_file_is_one_line_naming_file_and_folder(offline, tmp_path):
    folder = tmp_path / "keras_home" / "models"
    assert keras_cache_folder() == folder
    result = _cli(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--quick", "--backbones",
                   "NASNetMobile", "--weights", "imagenet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: --weights imagenet: NASNetMobile needs nasnet_mobile_no_top.h5 in "
                                f"{folder}/ and it could not be downloaded"), result.output
    assert "Temporary failure in name resolution" in lines[-1] and "KERAS_HOME" in lines[-1]
    assert "Traceback" not in result.output and len(lines[-1]) < 600
    assert offline == ["https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-mobile-no-top.h5"]
    assert not (folder / "nasnet_mobile_no_top.h5").exists() and not (tmp_path / "run").exists()
    with pytest.raises(WeightsError, match="DenseNet121 needs densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        make_config(tmp_path, tmp_path / "run", "DenseNet121,MobileNetV2", quick=True, weights="imagenet")


def _no_top_file(path, size: int, backbone: str = "MobileNetV2") -> list[np.ndarray]:
    """A small valid no-top weights file (Keras' legacy .h5 layout, as the ImageNet files are) with
    recognisable weights; returns them."""
    ctor = getattr(tf.keras.applications, BACKBONES[backbone][0])
    base = ctor(include_top=False, weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(11)
    base.set_weights([rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in base.get_weights()])
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    return [w for layer in base.layers for w in layer.get_weights()]


def _backbone_weights(model) -> list[np.ndarray]:
    skip = {"image", "to_float", "scale_tf", "features", "head_dropout", "head_dense", "head_gap", "prob", "cam"}
    return [w for layer in model.layers if layer.name not in skip for w in layer.get_weights()]


def test_a_file_put_in_the_cache_folder_is_used_without_a_download(offline, tmp_path):
    """NASNetMobile: Keras checks its file against an md5; a file that is not Keras' own (this one, or a
    partial copy) would make get_file delete it and try to download, so the cached file is taken as it is."""
    size = 32
    wanted = keras_cache_folder() / imagenet_file("NASNetMobile", size).fname
    saved = _no_top_file(wanted, size, "NASNetMobile")
    cfg = make_config(tmp_path, tmp_path / "run", "NASNetMobile", quick=True, input_size=size, weights="imagenet")
    assert cfg.weights == {"NASNetMobile": str(wanted)}
    model = build_cam_model("NASNetMobile", size, cfg.weights["NASNetMobile"])
    loaded = _backbone_weights(model)
    assert len(loaded) == len(saved) and all(np.array_equal(a, b) for a, b in zip(loaded, saved, strict=True))
    assert resolve_imagenet("NASNetMobile", size) == str(wanted)  # what build_cam_model(..., "imagenet") calls
    assert offline == [] and wanted.is_file()  # nothing fetched, and the user's file is still there


def test_a_local_weights_path_keeps_working(offline, tmp_path):
    path = tmp_path / "elsewhere" / "my_mobilenet_no_top.h5"
    saved = _no_top_file(path, 96)
    cfg = make_config(tmp_path, tmp_path / "run", "MobileNetV2", quick=True, input_size=96, weights=str(path))
    assert cfg.weights == {"MobileNetV2": str(path)}
    loaded = _backbone_weights(build_cam_model("MobileNetV2", 96, str(path)))
    assert all(np.array_equal(a, b) for a, b in zip(loaded, saved, strict=True))
    assert offline == []
