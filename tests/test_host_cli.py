"""converters/cli.py: the host commands as a plugin of `noa-edge` (edge/cli.py loads it by entry point).

register() adds the six host commands in data-path order, refuses cleanly (adding nothing) without the
[train] extra, and keeps `noa-edge --help` light: registering imports no TensorFlow, scikit-learn,
matplotlib or scipy.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from converters import ConvertersError, TrainExtraMissing
from converters import cli as host_cli

ROOT = Path(__file__).resolve().parent.parent
HOST = ["simulate", "validate", "train", "nomogram", "evaluate", "convert", "bundle-ood", "recalibrate",
        "bundle-onnx"]


def test_register_adds_the_host_commands_in_data_path_order():
    app = typer.Typer()
    host_cli.register(app)
    assert [c.name for c in app.registered_commands] == HOST


def test_register_without_the_train_extra_adds_nothing_and_says_how(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    app = typer.Typer()
    with pytest.raises(TrainExtraMissing, match=r"\[train\] extra \(sklearn not installed\).*pip install") as info:
        host_cli.register(app)
    assert isinstance(info.value, ImportError) and isinstance(info.value, ConvertersError)
    assert app.registered_commands == []


def test_registering_imports_no_heavy_module():
    code = ("import sys, typer\n"
            "from converters.cli import register\n"
            "register(typer.Typer())\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'sklearn', 'matplotlib', 'scipy'))\n"
            "print('HEAVY:', heavy)\n"
            "sys.exit(1 if heavy else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_specific_error_is_a_converters_error_and_keeps_its_builtin_base():
    from converters.convert import ConvertError
    from converters.dataset import DatasetError
    from converters.edgetpu_preflight import PreflightError
    from converters.models import WeightsError
    from converters.nomogram import NomogramInputError
    from converters.phantom import PhantomError
    from converters.stats import ModelInputError, SeparationError
    from converters.train import TrainError

    for err in (ConvertError, DatasetError, PreflightError, WeightsError, NomogramInputError, PhantomError,
                ModelInputError, SeparationError, TrainError):
        assert issubclass(err, ConvertersError) and issubclass(err, ValueError), err
    assert issubclass(TrainExtraMissing, RuntimeError)
