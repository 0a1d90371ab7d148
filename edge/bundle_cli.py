"""`noa-edge bundle keygen | sign | install | rollback | slots`: signed bundles and safe updates on the command line.

The work is in edge/bundle_signing.py and edge/bundle_install.py; here only options, messages and exit codes
(1: refused, 2: bad option or file). install/rollback read the device config (--config, else
$NOA_EDGE_CONFIG, else /etc/noa-edge/noa-edge.toml when present) for `data_dir` and `trust_key` in [serve],
so the signature check on an installed device cannot be forgotten on the command line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from . import config_file
from .bundle_install import InstallError, current_path, install, rollback, status
from .bundle_signing import SignatureError, key_id, keygen, load_private_key, sign
from .daemon import default_data_dir


def _serve_config(config: Path | None) -> dict:
    path = config_file.resolve_path(config)
    if path is None:
        return {}
    try:
        table = config_file.load(path).get("serve", {})
    except config_file.ConfigFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    base = path.parent
    return {k: (str(base / v) if k in ("data_dir", "trust_key") and isinstance(v, str) and not Path(v).is_absolute()
                else v) for k, v in table.items()}


def _where(data_dir: Path | None, trust_key: Path | None, config: Path | None) -> tuple[Path, Path | None]:
    table = _serve_config(config)
    data = data_dir or (Path(table["data_dir"]) if table.get("data_dir") else default_data_dir())
    trust = trust_key or (Path(table["trust_key"]) if table.get("trust_key") else None)
    return data, trust


_CONFIG = typer.Option(None, "--config", envvar=config_file.ENV_VAR,
                       help=f"Device config (default {config_file.DEFAULT_PATH} when it exists): data_dir and "
                            "trust_key come from its [serve] table.")
_DATA_DIR = typer.Option(None, help="The daemon's data folder (bundles live in DATA_DIR/bundles).")
_TRUST = typer.Option(None, help="Ed25519 public key (PEM): the bundle must be signed by it.")


def register(bundle_app: typer.Typer) -> None:
    @bundle_app.command("keygen")
    def keygen_command(out: Path = typer.Option(..., "--out", help="Folder for bundle-signing.key (private, "
                                                                   "keep on the build host) and .pub")) -> None:
        """Make an Ed25519 key pair for signing bundles (PEM files; never overwrites)."""
        try:
            private, public = keygen(out)
        except SignatureError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"private key {private} (keep it off the devices)\npublic key  {public} (copy to each device: "
                   f"serve --trust-key, or trust_key in the config file)")

    @bundle_app.command("sign")
    def sign_command(path: Path = typer.Argument(..., help="Bundle folder"),
                     key: Path = typer.Option(..., "--key", help="Ed25519 private key (PEM) from `bundle keygen`")
                     ) -> None:
        """Sign the bundle's manifest (which hashes every file): writes BUNDLE/manifest.sig."""
        try:
            written = sign(path, key)
            kid = key_id(load_private_key(key).public_key())
        except SignatureError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"signed {path} with key {kid}: {written}")

    @bundle_app.command("install")
    def install_command(new: Path = typer.Argument(..., help="The new bundle folder"),
                        data_dir: Path = _DATA_DIR, trust_key: Path = _TRUST, config: Path = _CONFIG) -> None:
        """Verify NEW (and its signature when a trust key is configured), copy it into the free A/B slot and
        switch DATA_DIR/bundles/current to it atomically; the previous bundle stays for `bundle rollback`."""
        data, trust = _where(data_dir, trust_key, config)
        try:
            done = install(new, data, trust)
        except (InstallError, SignatureError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"installed {done['name']} in {done['slot']}; current -> {done['slot']}"
                   + (f", previous -> {done['previous']}" if done["previous"] else "")
                   + f"\nserve --bundle {current_path(data)}; a running daemon loads it on SIGHUP "
                     "(systemctl reload noa-edge)")

    @bundle_app.command("rollback")
    def rollback_command(data_dir: Path = _DATA_DIR, trust_key: Path = _TRUST, config: Path = _CONFIG) -> None:
        """Switch DATA_DIR/bundles/current back to the previous bundle (verified again first)."""
        data, trust = _where(data_dir, trust_key, config)
        try:
            done = rollback(data, trust)
        except (InstallError, SignatureError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"rolled back to {done['name']} ({done['slot']}); a running daemon loads it on SIGHUP")

    @bundle_app.command("slots")
    def slots_command(data_dir: Path = _DATA_DIR, config: Path = _CONFIG) -> None:
        """Which bundle is current and which is kept for rollback."""
        data, _ = _where(data_dir, None, config)
        st = status(data)
        typer.echo(f"current  {st['current'] or '-'}  {st['current_name'] or ''}\n"
                   f"previous {st['previous'] or '-'}  {st['previous_name'] or ''}")
