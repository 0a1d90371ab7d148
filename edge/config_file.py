"""The device configuration file (/etc/noa-edge/noa-edge.toml): what a service starts with instead of flags.

Table `[serve]` holds the `noa-edge serve` options, one key per flag with dashes as underscores
(`--max-upload-mb` → `max_upload_mb`, `--no-auto` → `no_auto = true`, `--allow-host` → a list). The keys
are read from the command itself, so a new flag gets its key without an edit here. A flag given on the
command line (or through its environment variable) overrides the file: the file's values become click's
`default_map`. An unknown key or a value of the wrong type is one error naming the key and the file, never
a silent default. Relative paths in path-valued keys are relative to the file's folder.

The token belongs in `token_file` (a file only the service user reads), never on the command line: `ps`
shows argv to every user of the machine.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import EdgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Jetson JetPack 6): the same parser as a package
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/noa-edge/noa-edge.toml")
ENV_VAR = "NOA_EDGE_CONFIG"
NOT_KEYS = ("config", "help")  # options of `serve` that make no sense inside the file itself
TABLES = ("serve",)  # the tables a file may hold (a new command with a table adds its name here)


class ConfigFileError(EdgeError, ValueError):
    """The configuration file cannot be read or holds a key/value serve cannot use; the message names both."""


def load(path: str | Path) -> dict:
    """The whole file as a dict of tables (TOML types). Missing, unreadable or malformed → ConfigFileError."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigFileError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path}: not valid TOML: {exc}") from None


def resolve_path(given: str | Path | None) -> Path | None:
    """The file to read: --config, else $NOA_EDGE_CONFIG, else the default path when it exists, else none."""
    if given:
        return Path(given)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


_KINDS = {int: "int", float: "float", bool: "bool", str: "str", Path: "path"}


def option_kinds(command: Callable) -> dict[str, tuple[str, bool]]:
    """key → (kind, is_list) for every parameter of a command function (from its annotations, so typer's
    internals do not matter): the keys its table may hold."""
    kinds = {}
    for name, annotation in typing.get_type_hints(command).items():
        if name in NOT_KEYS or name == "return":
            continue
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        is_list = typing.get_origin(annotation) is list
        if is_list or (args and typing.get_origin(annotation) in (typing.Union, types.UnionType)):
            annotation = args[0]
        if isinstance(annotation, type) and annotation in _KINDS:
            kinds[name] = (_KINDS[annotation], is_list)
    return kinds


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "path": "a path (string)"}


def _check_value(value: Any, kind: str, where: str) -> Any:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(float(value)),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "path": isinstance(value, str) and value != "",
    }[kind]
    if not ok:
        raise ConfigFileError(f"{where}: expected {_TYPE_WORDS[kind]}, got {type(value).__name__} {value!r}")
    return float(value) if kind == "float" else value


def check_table(data: Mapping, table: str, kinds: Mapping[str, tuple[str, bool]], path: Path) -> dict:
    """The table's values checked against `kinds`; paths made absolute against the file's folder."""
    unknown_tables = sorted(k for k in data if k not in TABLES)
    if unknown_tables:
        raise ConfigFileError(f"config file {path}: unknown table or key {unknown_tables[0]!r} at the top level "
                              f"(tables: {', '.join(f'[{t}]' for t in TABLES)})")
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigFileError(f"config file {path}: {table!r} must be a table [{table}]")
    out = {}
    for key, value in section.items():
        where = f"config file {path}: [{table}] {key}"
        if key not in kinds:
            raise ConfigFileError(f"config file {path}: unknown key {key!r} in [{table}] (keys are the "
                                  f"`noa-edge {table}` flags with dashes as underscores: "
                                  f"{', '.join(sorted(kinds))})")
        kind, is_list = kinds[key]
        if is_list:
            if not isinstance(value, list):
                raise ConfigFileError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            value = [_check_value(v, kind, where) for v in value]
        else:
            value = _check_value(value, kind, where)
        if kind == "path":
            value = ([str(path.parent / v) for v in value] if is_list else str(path.parent / value))
        out[key] = value
    return out


def apply_to_context(ctx: Any, given: str | Path | None, command: Callable, table: str = "serve") -> Path | None:
    """Read the file (if any) into ctx.default_map (ctx: the command's click context): click then uses a
    file value for every option not given on the command line or in its environment variable. `command` is
    the command's function: its annotated parameters are the keys. Returns the file read, or None."""
    path = resolve_path(given)
    if path is None:
        return None
    values = check_table(load(path), table, option_kinds(command), path)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


# ------------------------------------------------------------------------------ writing (bench --select)
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigFileError(f"cannot write {value!r} to a config file")
        return repr(value)
    if isinstance(value, str):
        out = value.replace("\\", "\\\\").replace('"', '\\"')
        for ch, esc in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
            out = out.replace(ch, esc)
        if any(ord(c) < 32 or ord(c) == 127 for c in out):
            raise ConfigFileError(f"cannot write control characters to a config file: {value!r}")
        return f'"{out}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigFileError(f"cannot write a {type(value).__name__} to a config file")


def dumps(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Tables of scalars and lists as TOML (all this file needs; comments are not kept)."""
    parts = []
    for name, section in data.items():
        if not isinstance(section, Mapping):
            raise ConfigFileError(f"top-level key {name!r}: only tables are written")
        lines = [f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in section.items()]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def set_key(path: str | Path, table: str, key: str, value: Any) -> None:
    """Set [table] key = value, keeping every other key; written to a temporary file, fsync'd, then renamed
    over the old one, so a crash leaves the old file or the new one, never half of one. Comments are lost."""
    path = Path(path)
    data = load(path) if path.exists() else {}
    section = data.setdefault(table, {})
    if not isinstance(section, dict):
        raise ConfigFileError(f"config file {path}: {table!r} is not a table")
    section[key] = value
    text = dumps(data)
    tomllib.loads(text)  # what we write must read back
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
