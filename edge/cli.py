"""The one `noa-edge` command line.

Device commands (serve, demo, bundle, bench, version) live here and in edge/bench/cli.py. Host commands
(simulate, validate, train, nomogram, evaluate, convert) are a plugin: any installed distribution may
register commands under the entry-point group `noa_edge.commands` (this project's pyproject.toml points
it at converters/cli.py). edge/ never imports converters: on a device install the plugin says its
extra is missing (it raises ImportError) and `--help` shows one line on how to get the host commands.
"""

from __future__ import annotations

import json
import logging
from importlib.metadata import entry_points
from pathlib import Path

import typer
from rich.markup import escape

from . import __version__
from .bench.cli import register as register_bench
from .bundle import MANIFEST, SCHEMA_VERSION, BundleError, default_bundle_path, describe, load, verify
from .daemon import DEFAULT_BUNDLE, ConfigError, DaemonConfig, check_config, check_source, default_data_dir

PLUGIN_GROUP = "noa_edge.commands"

app = typer.Typer(
    name="noa-edge",
    help="NOA vs OA from testicular ultrasound: host toolchain (simulate, validate, train, nomogram, "
    "convert, evaluate) and edge daemon (serve, bench, bundle).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"noa-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the noa-edge version and exit.")) -> None:
    """NOA vs OA from testicular ultrasound."""


@app.command()
def version() -> None:
    """Print the noa-edge version."""
    typer.echo(f"noa-edge {__version__}")


# ---------------------------------------------------------------------------------- daemon
def _serve_or_exit(cfg: DaemonConfig) -> None:
    """serve(), with start-up problems (bundle, runtime, store, port) as one clear line, not a traceback."""
    from .web import serve  # FastAPI/uvicorn load only for the commands that serve

    try:
        serve(cfg)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: cannot start the daemon: {exc}", err=True)
        raise typer.Exit(2) from None


def _check_or_exit(cfg: DaemonConfig, with_source: bool = False) -> None:
    try:
        check_config(cfg)
        if with_source:
            check_source(cfg)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def demo(port: int = typer.Option(8080, help="Port of the local result page.")) -> None:
    """The main job on the embedded demo bundle: the daemon on the phantom cine (what `make demo` runs)."""
    host = "127.0.0.1"
    cfg = DaemonConfig(bundle=str(default_bundle_path()), source="demo", host=host, port=port)
    _check_or_exit(cfg)
    typer.echo(f"noa-edge demo: open http://{host}:{port}/  (synthetic demo model — not for diagnosis; Ctrl-C stops)")
    _serve_or_exit(cfg)


@app.command("serve")
def serve_cmd(
    bundle: str = typer.Option(DEFAULT_BUNDLE, help="Firmware bundle directory (manifest.json + models)."),
    source: str = typer.Option("demo", help="demo | video:PATH | v4l2:N | /dev/videoN | rtsp://… | http://… | "
                                            "folder:PATH | dicom:AE_TITLE@PORT | none"),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback needs --token."),
    port: int = typer.Option(8080, help="HTTP port."),
    token: str = typer.Option(None, help="Shared secret required on every request (≥ 8 chars).",
                              envvar="NOA_EDGE_TOKEN"),
    data_dir: Path = typer.Option(None, help=f"Where exams are kept (default {default_data_dir()})."),
    pacs: str = typer.Option(None, help="PACS for DICOM export, AE@host:port."),
    variant: str = typer.Option("auto", help="Model variant: auto | fp32 | fp16 | int8 | edgetpu."),
    threads: int = typer.Option(None, help="Interpreter threads (default: the runtime's choice)."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, MB."),
    no_auto: bool = typer.Option(False, "--no-auto", help="Do not analyse automatically on freeze / new image."),
) -> None:
    """Run the edge daemon: capture, ROI, on-device inference, nomogram, local result page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = DaemonConfig(bundle=bundle, source=None if source in ("", "none") else source, host=host, port=port,
                       token=token, data_dir=str(data_dir) if data_dir else None, pacs=pacs, variant=variant,
                       threads=threads, max_upload_mb=max_upload_mb, auto_analyze=not no_auto)
    _check_or_exit(cfg, with_source=True)
    shown = host if ":" not in host else f"[{host}]"
    typer.echo(f"noa-edge serve: http://{shown}:{port}/" + ("?token=…" if token else ""))
    _serve_or_exit(cfg)


# ---------------------------------------------------------------------------------- bundles
bundle_app = typer.Typer(help="Check and describe firmware bundles (firmware_assets/NAME).", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("verify")
def verify_command(path: Path = typer.Argument(..., help="Bundle folder, e.g. firmware_assets/demo-phantom")) -> None:
    """Check the schema and every file's size and sha256; exit 1 naming each bad file."""
    problems = verify(path)
    if problems:
        typer.echo(f"bundle {path} refused:", err=True)
        for problem in problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1)
    manifest = json.loads((path / MANIFEST).read_text())
    n = len(manifest["variants"]) + len(manifest["files"])
    typer.echo(f"OK {manifest['name']}: schema {SCHEMA_VERSION}, {n} files verified")


@bundle_app.command("info")
def info_command(path: Path = typer.Argument(..., help="Bundle folder"),
                 as_json: bool = typer.Option(False, "--json", help="Print the manifest and fidelity as JSON.")) -> None:
    """Verify, then show variants, sizes, nomogram, provenance, fidelity and the Edge TPU verdict."""
    try:
        bundle = load(path)
    except BundleError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"manifest": bundle.manifest, "fidelity": bundle.fidelity()}, indent=2))
        return
    for line in describe(bundle):
        typer.echo(line)


# ---------------------------------------------------------------------------------- plugins
def _register_plugins() -> list[str]:
    """Add every installed command plugin; a plugin whose extra is missing raises ImportError, and its
    message becomes a hint under --help instead of its commands."""
    hints = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            ep.load()(app)
        except ImportError as exc:
            hints.append(str(exc))
    return hints


register_bench(app)
_hints = _register_plugins()
if _hints:
    app.info.epilog = escape(" ".join(_hints))  # "[train]" is not rich markup


def main() -> None:
    app()


if __name__ == "__main__":
    main()
