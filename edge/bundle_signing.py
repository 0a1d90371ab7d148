"""Signed bundles: an Ed25519 signature over manifest.json's exact bytes, in `manifest.sig` next to it.

The manifest already pins every other file by sha256 (edge/bundle.py verifies each), so signing the
manifest signs the whole bundle: an attacker who edits a model must re-hash it, which changes the manifest,
which breaks the signature. Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) from
`noa-edge bundle keygen`; the private key stays on the build host, the device holds only the public one
(`serve --trust-key`, config key `trust_key`). `manifest.sig` is base64 text with the key's id (sha256 of
the raw public key, first 16 hex) on its first line, so a refusal can say which key signed.
Uses the `cryptography` package (OpenSSL underneath), not home-made crypto.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .bundle import MANIFEST, SIGNATURE, verify
from .errors import EdgeError

PRIVATE_NAME, PUBLIC_NAME = "bundle-signing.key", "bundle-signing.pub"


class SignatureError(EdgeError, ValueError):
    """Unsigned, wrongly signed or tampered bundle, or an unusable key file (the message says which)."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(out_dir: str | Path) -> tuple[Path, Path]:
    """A new key pair as PEM files in out_dir (private one mode 0600); refuses to overwrite."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} exists: keygen never overwrites a key (move it away first)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise SignatureError(f"--key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"--key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"--key {path}: not an Ed25519 key (make one with `noa-edge bundle keygen`)")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise SignatureError(f"trust key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"trust key {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"trust key {path}: not an Ed25519 public key")
    return key


def sign(bundle_dir: str | Path, key_path: str | Path) -> Path:
    """Write BUNDLE/manifest.sig for the manifest as it is now; the bundle must verify first (a signature
    vouches for content, so signing a damaged bundle is refused)."""
    root = Path(bundle_dir)
    problems = verify(root)
    if problems:
        raise SignatureError(f"bundle {root} does not verify, not signing it:\n  " + "\n  ".join(problems))
    key = load_private_key(key_path)
    signature = key.sign((root / MANIFEST).read_bytes())
    path = root / SIGNATURE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"ed25519 {key_id(key.public_key())}\n{base64.b64encode(signature).decode()}\n")
    tmp.replace(path)
    return path


def check_signature(bundle_dir: str | Path, trust_key: str | Path) -> str:
    """The signer's key id when BUNDLE/manifest.sig is a valid signature of manifest.json by `trust_key`;
    SignatureError otherwise. Checks the signature only: call edge.bundle.verify for the files."""
    root = Path(bundle_dir)
    public = load_public_key(trust_key)
    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        raise SignatureError(f"bundle {root} is not signed (no {SIGNATURE}) and a trust key is configured: "
                             f"sign it with `noa-edge bundle sign {root} --key KEY`")
    lines = sig_path.read_text(errors="replace").split()
    try:
        if len(lines) != 3 or lines[0] != "ed25519":
            raise ValueError("expected 'ed25519 KEYID' and a base64 line")
        signature = base64.b64decode(lines[2], validate=True)
    except ValueError as exc:
        raise SignatureError(f"{sig_path}: unreadable signature file ({exc})") from None
    try:
        public.verify(signature, (root / MANIFEST).read_bytes())
    except InvalidSignature:
        signer, trusted = lines[1], key_id(public)
        why = (f"signed by key {signer}, not by the trusted key {trusted}" if signer != trusted
               else "manifest.json changed after it was signed")
        raise SignatureError(f"bundle {root}: signature does not verify ({why})") from None
    except OSError as exc:
        raise SignatureError(f"bundle {root}: {MANIFEST} unreadable ({exc})") from None
    return key_id(public)


def verify_signed(bundle_dir: str | Path, trust_key: str | Path | None) -> list[str]:
    """Every problem of the bundle (edge.bundle.verify), plus the signature's when a trust key is given."""
    problems = verify(bundle_dir)
    if trust_key is not None:
        try:
            check_signature(bundle_dir, trust_key)
        except SignatureError as exc:
            problems.append(str(exc))
    return problems
