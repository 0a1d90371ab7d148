"""edge/ must run on a device without TensorFlow, Keras or scikit-learn."""

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import edge

FORBIDDEN = ("tensorflow", "keras", "sklearn")


def test_edge_modules_import_without_tf_keras_sklearn():
    names = sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "edge."))
    assert "edge.preprocess" in names and "edge.cli" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print('FORBIDDEN:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(edge.__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("simulate", "validate", "train", "nomogram", "evaluate", "convert", "bundle", "serve",
                    "bench", "demo", "version"):
        # a row of the commands table starts with the name ("│ nomogram   ..."); a word in another row's
        # description ("model + nomogram on ...") does not count
        assert re.search(rf"^│?\s{{1,2}}{command}\s", proc.stdout, re.M), \
            f"command {command!r} missing from noa-edge --help:\n{proc.stdout}"
