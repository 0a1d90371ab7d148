"""The one `noa-edge` command line.

Device commands (serve, demo, bundle, bench, version) live here and in edge/bench/cli.py. Host commands
(simulate, validate, train, nomogram, evaluate, convert) are a plugin: any installed distribution may
register commands under the entry-point group `noa_edge.commands` (this project's pyproject.toml points
it at converters/cli.py). edge/ never imports converters: on a device install the plugin says its
extra is missing (it raises ImportError) and `--help` shows one line on how to get the host commands.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import tempfile
from importlib.metadata import entry_points
from pathlib import Path

import typer
from rich.markup import escape

from . import __version__, config_file
from .bench.cli import register as register_bench
from .bundle import MANIFEST, SCHEMA_VERSION, BundleError, default_bundle_path, describe, load
from .bundle_cli import register as register_bundle_updates
from .bundle_signing import key_id, load_public_key, verify_signed
from .daemon import DEFAULT_BUNDLE, ConfigError, DaemonConfig, check_config, check_source, default_data_dir
from .doctor import register as register_doctor

PLUGIN_GROUP = "noa_edge.commands"
DATA_DIR_DEFAULT = default_data_dir()  # shown in --help

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
def _serve_or_exit(cfg: DaemonConfig, sock: socket.socket | None = None) -> None:
    """serve(), with start-up problems (bundle, runtime, store, port) as one clear line, not a traceback."""
    from .web import serve  # FastAPI/uvicorn load only for the commands that serve

    try:
        serve(cfg, sock=sock)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: cannot start the daemon: {exc}", err=True)
        raise typer.Exit(2) from None


def _bind_or_exit(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port BEFORE any URL is printed (uvicorn then serves on this socket): a port in
    use is one line with a hint and exit 2, not a URL followed by uvicorn's "[Errno 98]"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
    try:
        sock.bind((host, port))
        sock.listen(128)  # listening claims the port (two SO_REUSEADDR sockets may bind it until one listens)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            typer.echo(f"error: port {port} is in use: pass --port with a free port (e.g. --port "
                       f"{_free_port(host, family)})", err=True)
        else:
            typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    return sock


def _free_port(host: str, family: int) -> int | str:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    except OSError:
        return "PORT"


def _check_or_exit(cfg: DaemonConfig, with_source: bool = False) -> None:
    try:
        check_config(cfg)
        if with_source:
            check_source(cfg)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


@app.command()
def demo(port: int = typer.Option(8080, help="Port of the local result page."),
         data_dir: Path = typer.Option(None, help="Keep the demo's exams here (default: a temporary folder, "
                                                  "deleted when the demo stops).")) -> None:
    """The main job on the embedded demo bundle: the daemon on the phantom cine (what `make demo` runs)."""
    host = "127.0.0.1"
    tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="noa-edge-demo-")
    where = tmp.name if tmp is not None else str(data_dir)
    # uvicorn re-raises SIGTERM after its graceful shutdown; as an exception it reaches `finally` (cleanup)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        cfg = DaemonConfig(bundle=str(default_bundle_path()), source="demo", host=host, port=port, data_dir=where)
        _check_or_exit(cfg)
        sock = _bind_or_exit(host, port)
        typer.echo(f"noa-edge demo: open http://{host}:{port}/  "
                   "(synthetic demo model — not for diagnosis; Ctrl-C stops)")
        kept = "" if data_dir else " (temporary: deleted when the demo stops; --data-dir DIR keeps them)"
        typer.echo(f"exams are kept in {where}{kept}")
        _serve_or_exit(cfg, sock)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _read_config_file(ctx: typer.Context, value: Path | None) -> Path | None:
    """--config (eager): the file's [serve] values become the defaults; flags on the command line win."""
    try:
        config_file.apply_to_context(ctx, value, serve_cmd)
    except config_file.ConfigFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return value


@app.command("serve")
def serve_cmd(
    config: Path = typer.Option(None, "--config", envvar=config_file.ENV_VAR, is_eager=True,
                                callback=_read_config_file,
                                help=f"TOML file whose \\[serve] keys are these flags with dashes as underscores "
                                     f"(default {config_file.DEFAULT_PATH} when it exists); flags override it."),
    bundle: str = typer.Option(DEFAULT_BUNDLE, help="Firmware bundle directory (manifest.json + models)."),
    source: str = typer.Option("demo", help="demo | video:PATH | v4l2:N | /dev/videoN | rtsp://… | http://… | "
                                            "folder:PATH | dicom:AE_TITLE@PORT | none"),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback needs --token."),
    port: int = typer.Option(8080, help="HTTP port."),
    token: str = typer.Option(None, help="Shared secret required on every request (≥ 8 chars). Visible in `ps`: "
                                         "prefer --token-file or the NOA_EDGE_TOKEN variable.",
                              envvar="NOA_EDGE_TOKEN"),
    token_file: Path = typer.Option(None, help="Read the token from this file (first line), so it is not in `ps`."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Host header name to accept besides loopback "
                                                                 "and --host (repeat; against DNS rebinding)."),
    min_free_mb: float = typer.Option(500.0, help="Free space on --data-dir below which analyses are refused "
                                                  "(507) and /api/health says degraded, MB."),
    data_dir: Path = typer.Option(None, help=f"Where exams are kept (default {DATA_DIR_DEFAULT})."),
    pacs: str = typer.Option(None, help="PACS for DICOM export, AE@host:port."),
    variant: str = typer.Option("auto", help="Model variant: auto | fp32 | fp16 | int8 | edgetpu."),
    runtime: str = typer.Option("auto", help="auto | litert | tflite-runtime | onnxruntime | edgetpu: auto probes the "
                                             "installed runtimes whose variant meets the bundle's fidelity targets "
                                             "and runs the fastest (see /api/health)."),
    trust_key: Path = typer.Option(None, help="Ed25519 public key (PEM): refuse a bundle not signed by it "
                                              "(`noa-edge bundle sign`)."),
    threads: int = typer.Option(None, help="Interpreter threads (default: the runtime's choice)."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, MB."),
    no_auto: bool = typer.Option(False, "--no-auto", help="Do not analyse automatically on freeze / new image."),
    dicom_host: str = typer.Option("127.0.0.1", help="Bind address of the DICOM SCP (dicom: source); a network "
                                                     "address needs --dicom-allow."),
    dicom_allow: str = typer.Option("", help="Calling AE titles allowed to push images, e.g. CART1,CART2 "
                                             "(others are rejected at association)."),
    dicom_max_associations: int = typer.Option(10, help="Simultaneous DICOM associations."),
    dicom_tls_cert: Path = typer.Option(None, help="DICOM TLS: the SCP's certificate (PEM); with --dicom-tls-key."),
    dicom_tls_key: Path = typer.Option(None, help="DICOM TLS: the certificate's private key (PEM)."),
    dicom_tls_ca: Path = typer.Option(None, help="DICOM TLS: CA (PEM) that must have signed the carts' certificates."),
    inbox_max_items: int = typer.Option(1000, help="Pushed images waiting for analysis before the SCP answers "
                                                   "Out of Resources (0xA700) and the folder waits."),
    inbox_max_mb: float = typer.Option(2048.0, help="The same limit in MB of waiting images."),
    max_image_mp: float = typer.Option(40.0, help="Largest image accepted, megapixels per frame (read from the "
                                                  "header; nothing bigger is decoded)."),
    max_frames: int = typer.Option(1000, help="Most frames in one DICOM object (only one is decoded)."),
    keep_days: float = typer.Option(None, help="Delete exams older than this many days (oldest first; never one "
                                               "not yet pushed to --pacs). Default: keep."),
    max_exams: int = typer.Option(None, help="Keep at most this many exams (the oldest pushed ones go first)."),
    max_disk_mb: float = typer.Option(None, help="Keep at most this many MB of exam images and data."),
) -> None:
    """Run the edge daemon: capture, ROI, on-device inference, nomogram, local result page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token_file is not None:
        if token:
            typer.echo("error: give --token (or NOA_EDGE_TOKEN) or --token-file, not both", err=True)
            raise typer.Exit(2)
        try:
            lines = token_file.read_text().strip().splitlines()
        except OSError as exc:
            typer.echo(f"error: --token-file {token_file}: {exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None
        token = lines[0].strip() if lines else ""
        if not token:
            typer.echo(f"error: --token-file {token_file} is empty", err=True)
            raise typer.Exit(2)
    cfg = DaemonConfig(bundle=bundle, source=None if source in ("", "none") else source, host=host, port=port,
                       token=token, data_dir=str(data_dir) if data_dir else None, pacs=pacs, variant=variant,
                       runtime=runtime, trust_key=str(trust_key) if trust_key else None,
                       threads=threads, max_upload_mb=max_upload_mb, auto_analyze=not no_auto,
                       min_free_mb=min_free_mb, allow_hosts=list(allow_host), dicom_host=dicom_host,
                       dicom_allow=[t.strip() for t in dicom_allow.split(",") if t.strip()],
                       dicom_max_associations=dicom_max_associations,
                       dicom_tls_cert=str(dicom_tls_cert) if dicom_tls_cert else None,
                       dicom_tls_key=str(dicom_tls_key) if dicom_tls_key else None,
                       dicom_tls_ca=str(dicom_tls_ca) if dicom_tls_ca else None, inbox_max_items=inbox_max_items,
                       inbox_max_mb=inbox_max_mb, max_image_mp=max_image_mp, max_frames=max_frames,
                       keep_days=keep_days, max_exams=max_exams, max_disk_mb=max_disk_mb)
    _check_or_exit(cfg, with_source=True)
    sock = _bind_or_exit(host, port)
    shown = host if ":" not in host else f"[{host}]"
    typer.echo(f"noa-edge serve: http://{shown}:{port}/" + ("?token=…" if token else ""))
    _serve_or_exit(cfg, sock)


# ---------------------------------------------------------------------------------- bundles
bundle_app = typer.Typer(help="Check and describe firmware bundles (firmware_assets/NAME).", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("verify")
def verify_command(path: Path = typer.Argument(..., help="Bundle folder, e.g. firmware_assets/demo-phantom"),
                   trust: Path = typer.Option(None, "--trust", help="Also require a valid signature by this Ed25519 "
                                                                    "public key (PEM).")) -> None:
    """Check the schema and every file's size and sha256 (and the signature with --trust); exit 1 naming each
    bad file."""
    problems = verify_signed(path, trust)
    if problems:
        typer.echo(f"bundle {path} refused:", err=True)
        for problem in problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1)
    manifest = json.loads((path / MANIFEST).read_text())
    n = len(manifest["variants"]) + len(manifest["files"])
    signed = f", signature by the trusted key {key_id(load_public_key(trust))} OK" if trust else ""
    typer.echo(f"OK {manifest['name']}: schema {SCHEMA_VERSION}, {n} files verified{signed}")


@bundle_app.command("info")
def info_command(path: Path = typer.Argument(..., help="Bundle folder"),
                 as_json: bool = typer.Option(False, "--json",
                                              help="Print the manifest and fidelity as JSON.")) -> None:
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


register_bundle_updates(bundle_app)  # sign, keygen, install, rollback (edge/bundle_cli.py)


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
register_doctor(app, serve_cmd)
_hints = _register_plugins()
if _hints:
    app.info.epilog = escape(" ".join(_hints))  # "[train]" is not rich markup


def main() -> None:
    app()


if __name__ == "__main__":
    main()
