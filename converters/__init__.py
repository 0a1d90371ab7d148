"""noa-edge host toolchain: dataset validation, phantom cohort, training, nomogram, conversion.

Heavy dependencies (TensorFlow, scikit-learn, matplotlib) are imported inside the functions that
need them, so `noa-edge --help` and the device-side commands work without the `[train]` extra.
The commands are in converters/cli.py (`register`, which `noa-edge` loads as an entry-point plugin); every
error raised on purpose derives from converters.errors.ConvertersError.
"""

from converters.errors import ConvertersError, TrainExtraMissing

__all__ = ["ConvertersError", "TrainExtraMissing", "require_train_extra"]


def require_train_extra(module: str = "tensorflow"):
    """Import a [train]-extra module or fail with an actionable message instead of a traceback."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
        raise TrainExtraMissing(
            f"this command needs the [train] extra ({module} is not installed): "
            "run  pip install -e '.[train]'"
        ) from exc
