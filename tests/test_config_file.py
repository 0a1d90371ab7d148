"""The device configuration file (edge/config_file.py): every serve flag has a key, unknown keys and wrong
types are one clear error naming key and file, flags override the file, the token stays out of argv, and
set_key rewrites the file atomically keeping the other keys."""

from __future__ import annotations

import os

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from conftest import DaemonProcess, free_port
from edge import config_file
from edge.cli import app, serve_cmd
from edge.config_file import tomllib

runner = CliRunner()


def _serve(*args: str, env: dict | None = None):
    return runner.invoke(app, ["serve", *args], env=env)


def test_every_serve_flag_has_a_key():
    import typer.main

    command = typer.main.get_command(app).commands["serve"]
    flags = {p.name for p in command.params if p.name not in config_file.NOT_KEYS}
    keys = set(config_file.option_kinds(serve_cmd))
    assert flags == keys, f"flags without a key: {flags - keys}; keys without a flag: {keys - flags}"
    kinds = config_file.option_kinds(serve_cmd)
    assert kinds["port"] == ("int", False) and kinds["min_free_mb"] == ("float", False)
    assert kinds["allow_host"] == ("str", True) and kinds["no_auto"] == ("bool", False)
    assert kinds["token_file"] == ("path", False)


def test_unknown_key_names_key_and_file(tmp_path):
    cfg = tmp_path / "noa-edge.toml"
    cfg.write_text('[serve]\nport = 8081\nmax_uplaod_mb = 5\n')
    result = _serve("--config", str(cfg))
    assert result.exit_code == 2
    assert "unknown key 'max_uplaod_mb'" in result.output and str(cfg) in result.output
    assert "max_upload_mb" in result.output  # the list of valid keys helps fix the typo
    cfg.write_text('[server]\nport = 8081\n')
    result = _serve("--config", str(cfg))
    assert result.exit_code == 2 and "'server'" in result.output and "[serve]" in result.output


@pytest.mark.parametrize("line,expected", [
    ('port = "8080"', "port: expected an integer, got str '8080'"),
    ("port = 80.5", "port: expected an integer, got float"),
    ("min_free_mb = true", "min_free_mb: expected a number, got bool"),
    ("no_auto = 1", "no_auto: expected true or false, got int"),
    ('allow_host = "cart.local"', "allow_host: expected a list"),
    ('allow_host = ["a", 3]', "allow_host: expected a string, got int"),
    ("host = 127", "host: expected a string, got int"),
])
def test_wrong_type_is_a_clear_error(tmp_path, line, expected):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[serve]\n{line}\n")
    result = _serve("--config", str(cfg))
    assert result.exit_code == 2, result.output
    assert expected in result.output and str(cfg) in result.output


def test_missing_or_malformed_file(tmp_path):
    result = _serve("--config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 2 and "absent.toml: not found" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve\nport = 1\n")
    result = _serve("--config", str(bad))
    assert result.exit_code == 2 and "not valid TOML" in result.output and "bad.toml" in result.output


def test_file_values_apply_and_flags_override(tmp_path):
    """The file's host needs a token (refused); the same file with --host on the command line gets past that
    check and stops at the file's bundle, so the file was read and the flag won. Through NOA_EDGE_CONFIG too."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[serve]\nhost = "0.0.0.0"\nbundle = "no-such-bundle"\n')
    result = _serve("--config", str(cfg))
    assert result.exit_code == 2 and "--host 0.0.0.0 is reachable from the network" in result.output
    result = _serve("--config", str(cfg), "--host", "127.0.0.1")
    assert result.exit_code == 2 and "--bundle no-such-bundle: no manifest.json" in result.output
    result = _serve("--host", "127.0.0.1", env={config_file.ENV_VAR: str(cfg)})
    assert result.exit_code == 2 and "--bundle no-such-bundle" in result.output


def test_set_key_keeps_other_keys_and_reads_back(tmp_path):
    cfg = tmp_path / "etc" / "noa-edge.toml"
    config_file.set_key(cfg, "serve", "port", 8090)  # creates the file
    cfg.chmod(0o640)
    config_file.set_key(cfg, "serve", "allow_host", ["cart-1.local", 'we"ird\\name'])
    config_file.set_key(cfg, "serve", "min_free_mb", 250.0)
    config_file.set_key(cfg, "serve", "port", 8091)  # replaced, not duplicated
    assert config_file.load(cfg) == {"serve": {"port": 8091, "allow_host": ["cart-1.local", 'we"ird\\name'],
                                               "min_free_mb": 250.0}}
    assert cfg.stat().st_mode & 0o777 == 0o640  # the rewrite keeps the file's permissions
    assert [p.name for p in cfg.parent.iterdir()] == ["noa-edge.toml"]  # no temporary file left behind
    with pytest.raises(config_file.ConfigFileError):
        config_file.set_key(cfg, "serve", "port", {"nested": 1})
    assert config_file.load(cfg)["serve"]["port"] == 8091  # a refused write leaves the file as it was
    assert tomllib.loads(config_file.dumps({"serve": {"no_auto": True, "x": "a\nb"}})) == {
        "serve": {"no_auto": True, "x": "a\nb"}}


def test_daemon_from_config_file_token_out_of_argv(tmp_path, test_bundle):
    """A real daemon: the file points at the token file (relative to the file's folder) and sets a port the
    command line overrides; the token is required and never in the process's argv."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "token").write_text("cfg-file-token-98765\n")
    (etc / "token").chmod(0o600)
    file_port = free_port()
    cfg = etc / "noa-edge.toml"
    cfg.write_text(f'[serve]\nport = {file_port}\ntoken_file = "token"\nhost = "127.0.0.1"\n'
                   f'allow_host = ["cart.local"]\nno_auto = true\n')
    d = DaemonProcess(test_bundle, tmp_path / "data", extra=["--config", str(cfg)])
    try:
        d.wait_ready()
        assert d.port != file_port  # DaemonProcess passes --port: the flag won over the file
        cmdline = " ".join(psutil.Process(d.proc.pid).cmdline())
        assert "cfg-file-token-98765" not in cmdline and "--token" not in cmdline
        assert httpx.get(d.url + "/api/health").status_code == 401
        ok = httpx.get(d.url + "/api/health", headers={"Authorization": "Bearer cfg-file-token-98765"})
        assert ok.status_code == 200
        # allow_host from the file is accepted as a Host header (else 421)
        named = httpx.get(d.url + "/api/health", headers={"Authorization": "Bearer cfg-file-token-98765",
                                                          "Host": f"cart.local:{d.port}"})
        assert named.status_code == 200, named.text
    finally:
        d.stop()


def test_default_path_is_etc():
    assert str(config_file.DEFAULT_PATH) == "/etc/noa-edge/noa-edge.toml"
    assert config_file.resolve_path(None) is None or os.path.exists(config_file.DEFAULT_PATH)
