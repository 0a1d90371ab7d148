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


EDGE_DIR = Path(edge.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (module level or inside functions), read from its AST."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_edge_never_imports_converters_or_training_stack_statically():
    """Static, so an import hidden in a function that no test calls is caught too."""
    bad = {}
    for path in sorted(EDGE_DIR.rglob("*.py")):
        hits = sorted(m for m in _imports(path) if m.split(".")[0] in ("converters", *FORBIDDEN))
        if hits:
            bad[str(path.relative_to(EDGE_DIR.parent))] = hits
    # the Keras bench contender is imported by name at run time (host only), never by an import statement
    assert bad == {}, f"edge/ imports the host side: {bad}"


def test_static_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from converters.phantom import simulate\n    import tensorflow as tf\n")
    assert _imports(probe) == {"converters.phantom", "tensorflow"}


def test_device_install_shows_device_commands_and_one_hint():
    """Without the [train] extra the host plugin adds nothing and --help says how to get it."""
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, p=None: None if n.split('.')[0] in ('tensorflow', 'sklearn') "
        "else real(n, p)\n"
        "sys.argv = ['noa-edge', '--help']\n"
        "import edge.cli\n"
        "edge.cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("serve", "bench", "bundle", "demo", "version"):
        assert re.search(rf"^│?\s{{1,2}}{command}\s", proc.stdout, re.M), proc.stdout
    for command in ("simulate", "train", "convert"):
        assert not re.search(rf"^│?\s{{1,2}}{command}\s", proc.stdout, re.M), proc.stdout
    assert "[train]" in proc.stdout, proc.stdout


def test_version_flag():
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"noa-edge {edge.__version__}", proc.stdout + proc.stderr
