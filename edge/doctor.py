"""`noa-edge doctor`: is this device ready to serve? One line per check, exit 1 when any check fails.

It reads the same configuration as `serve` (--config / $NOA_EDGE_CONFIG / /etc/noa-edge/noa-edge.toml, then
flags) and checks what an installer gets wrong: runtimes and delegates (LiteRT, tflite_runtime, ONNX Runtime,
libedgetpu, a Coral USB seen in /sys/bus/usb/devices without lsusb), capture devices, the bundle's files and
signature, the port, free disk space, the clock (exam times and TLS certificates depend on it) and the data
folder's permissions. `fail` = serve would not work; `warn` = it works but something deserves a look;
`info` = what was found.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

from . import config_file
from .bundle import verify
from .daemon import DEFAULT_BUNDLE, default_data_dir, resolve_bundle
from .runtime import edgetpu_library

CORAL_USB = {("1a6e", "089a"), ("18d1", "9302")}  # before / after libedgetpu loads its firmware
RUNTIME_MODULES = {"litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime", "onnxruntime": "onnxruntime"}
MIN_YEAR, MAX_YEAR = 2024, 2099


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str


def runtimes() -> list[Check]:
    out, found = [], 0
    for name, module in RUNTIME_MODULES.items():
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - a broken install (e.g. numpy ABI) is reported, not raised
            why = "not installed" if isinstance(exc, ModuleNotFoundError) else f"import failed: {exc}"
            out.append(Check(f"runtime {name}", "info", why))
            continue
        found += 1
        detail = f"importable ({module} {getattr(mod, '__version__', '')})".replace(" )", ")")
        if name == "onnxruntime":
            detail += f"; providers {', '.join(mod.get_available_providers())}"
        out.append(Check(f"runtime {name}", "ok", detail))
    if not found:
        out.append(Check("runtimes", "fail", "no runtime importable: pip install ai-edge-litert (or tflite-runtime, "
                                             "onnxruntime)"))
    return out


def edgetpu(sysfs: Path = Path("/sys/bus/usb/devices"), wanted: bool = False) -> list[Check]:
    """libedgetpu loadable? a Coral USB accelerator plugged in? (`wanted`: the configured variant is edgetpu)."""
    lib = edgetpu_library()
    try:
        ctypes.CDLL(lib)
        lib_check = Check("delegate libedgetpu", "ok", f"{lib} loads")
    except OSError:
        lib_check = Check("delegate libedgetpu", "fail" if wanted else "info",
                          f"{lib} not found (Coral only: apt install libedgetpu1-std)")
    coral = []
    for dev in sorted(sysfs.glob("*")) if sysfs.is_dir() else []:
        try:
            ids = ((dev / "idVendor").read_text().strip(), (dev / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in CORAL_USB:
            coral.append(f"{dev.name} ({ids[0]}:{ids[1]})")
    usb = Check("coral usb", "ok" if coral else ("fail" if wanted else "info"),
                ", ".join(coral) if coral else "no Coral USB accelerator on the USB bus")
    return [lib_check, usb]


def capture(source: str | None, dev: Path = Path("/dev")) -> Check:
    videos = sorted(p.name for p in dev.glob("video*"))
    src = source or ""
    wanted = None
    if src.startswith("v4l2:") and src[5:].isdigit():
        wanted = dev / f"video{src[5:]}"
    elif src.startswith("/dev/video"):
        wanted = Path(src)
    if wanted is not None:
        if not wanted.exists():
            return Check("capture", "fail", f"--source {src}: {wanted} does not exist (found: "
                                            f"{', '.join(videos) or 'no /dev/video*'})")
        if not os.access(wanted, os.R_OK | os.W_OK):
            return Check("capture", "fail", f"--source {src}: {wanted} not readable by this user (group video?)")
        return Check("capture", "ok", f"{wanted} present and readable")
    return Check("capture", "info", f"source {src or 'none'}; video devices: {', '.join(videos) or 'none'}")


def bundle(path: str, trust_key: str | None) -> list[Check]:
    root = resolve_bundle(path)
    problems = verify(root)
    if problems:
        return [Check("bundle", "fail", f"{path}: " + "; ".join(problems[:3])),
                Check("signature", "fail", "not checked: the bundle itself is refused")]
    manifest = json.loads((root / "manifest.json").read_text())
    demo = " (synthetic demo — not for diagnosis)" if manifest.get("synthetic_demo") else ""
    checks = [Check("bundle", "ok", f"{manifest.get('name')}: every file verified{demo}")]
    try:
        signing = importlib.import_module("edge.bundle_signing")
    except ImportError:
        return checks + [Check("signature", "warn", "unsigned (signature checking not available in this install)")]
    signed = (root / getattr(signing, "SIGNATURE", "manifest.sig")).is_file()
    if trust_key:
        try:
            checks.append(Check("signature", "ok", f"signed by trusted key {signing.check_signature(root, trust_key)}"))
        except signing.SignatureError as exc:
            checks.append(Check("signature", "fail", str(exc)))
    else:
        checks.append(Check("signature", "warn", "signed, but no trust_key configured: not checked" if signed
                            else "unsigned (no trust_key configured)"))
    return checks


def port(host: str, number: int) -> Check:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, number))
            return Check("port", "ok", f"{host}:{number} free")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return Check("port", "fail", f"cannot listen on {host}:{number}: {exc.strerror or exc}")
    if _noa_edge_answers(host, number):
        return Check("port", "ok", f"{host}:{number} in use by a running noa-edge")
    return Check("port", "fail", f"{host}:{number} in use by another program: pass another port")


def _noa_edge_answers(host: str, number: int) -> bool:
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    try:
        with urllib.request.urlopen(f"http://{shown}:{number}/api/health", timeout=3) as r:
            return "version" in json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # a daemon with a token (its /api/health needs it)
    except (OSError, ValueError):
        return False


def disk(data_dir: Path, min_free_mb: float) -> Check:
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    status = "ok" if free >= min_free_mb * 1e6 else "fail"
    return Check("disk", status, f"{free / 1e9:.1f} GB free on {probe} (analyses are refused under "
                                 f"{min_free_mb:g} MB, --min-free-mb)")


def clock(now: datetime | None = None) -> Check:
    now = now or datetime.now(timezone.utc)
    if not MIN_YEAR <= now.year <= MAX_YEAR:
        return Check("clock", "fail", f"system time {now:%Y-%m-%d %H:%M} UTC is not plausible: exam dates and "
                                      "TLS certificates depend on it (set the clock / enable NTP)")
    return Check("clock", "ok", f"{now:%Y-%m-%d %H:%M} UTC")


def data_folder(data_dir: Path) -> Check:
    if not data_dir.exists():
        parent = data_dir.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.is_dir() and os.access(parent, os.W_OK):
            return Check("data folder", "warn", f"{data_dir} does not exist yet (serve creates it)")
        return Check("data folder", "fail", f"{data_dir} does not exist and {parent} is not writable")
    if not data_dir.is_dir():
        return Check("data folder", "fail", f"{data_dir} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("data folder", "fail", f"{data_dir} not writable by this user: {exc.strerror or exc}")
    return Check("data folder", "ok", f"{data_dir} exists and is writable")


def run_checks(opts: dict[str, Any]) -> list[Check]:
    data_dir = Path(opts.get("data_dir") or default_data_dir())
    checks = runtimes()
    checks += edgetpu(wanted=opts.get("variant") == "edgetpu" or opts.get("runtime") == "edgetpu")
    checks.append(capture(opts.get("source", "demo")))
    checks += bundle(str(opts.get("bundle") or DEFAULT_BUNDLE), opts.get("trust_key"))
    checks.append(port(str(opts.get("host") or "127.0.0.1"), int(opts.get("port") or 8080)))
    checks.append(disk(data_dir, float(opts.get("min_free_mb") or 500.0)))
    checks.append(clock())
    checks.append(data_folder(data_dir))
    return checks


def register(app: typer.Typer, serve_command: Callable) -> None:
    @app.command("doctor")
    def doctor_cmd(
        config: Path = typer.Option(None, "--config", envvar=config_file.ENV_VAR,
                                    help="The serve configuration file to check (default "
                                         f"{config_file.DEFAULT_PATH} when it exists)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object: ok and every check."),
        bundle_path: str = typer.Option(None, "--bundle", help="Bundle to check (default: the config's)."),
        data_dir: Path = typer.Option(None, help="Data folder to check (default: the config's)."),
        port_number: int = typer.Option(None, "--port", help="Port to check (default: the config's, else 8080)."),
    ) -> None:
        """Check runtimes, delegates, capture devices, the bundle and its signature, the port, disk space, the
        clock and the data folder: one line each; exit 1 when a check fails."""
        opts: dict[str, Any] = {}
        try:
            path = config_file.resolve_path(config)
            if path is not None:
                opts = config_file.check_table(config_file.load(path), "serve",
                                               config_file.option_kinds(serve_command), path)
        except config_file.ConfigFileError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        given = {"bundle": bundle_path, "data_dir": data_dir, "port": port_number}
        opts.update({k: v for k, v in given.items() if v is not None})
        checks = run_checks(opts)
        ok = not any(c.status == "fail" for c in checks)
        if as_json:
            typer.echo(json.dumps({"ok": ok, "config": str(path) if path else None,
                                   "checks": [asdict(c) for c in checks]}, indent=2))
        else:
            width = max(len(c.name) for c in checks)
            for c in checks:
                typer.echo(f"{c.status.upper():4}  {c.name:<{width}}  {c.detail}")
        raise typer.Exit(0 if ok else 1)
