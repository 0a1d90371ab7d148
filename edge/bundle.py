"""Firmware bundle: the one contract between the host toolchain and the device.

A bundle is a folder (`firmware_assets/NAME/`) with model variants, a model card, the fidelity
report and `manifest.json` (schema in docs/CONTRACTS.md). The device loads a bundle and nothing
else, and only after every file matches the size and sha256 the manifest records, whatever its kind
(model, model card, README, fidelity report, Edge TPU preflight), and the folder holds no file the
manifest does not list: a byte flipped on an SD card, a copy cut short or a file from another build
must stop the cart with a message that names the file, never produce a probability.

`manifest_sha256` (sha256 of the manifest's canonical JSON without that key) also catches edits to
the manifest itself, e.g. a hand-changed threshold. It guards against accidents, not attackers: anyone
can re-hash. Against those, a bundle carries `manifest.sig`, an Ed25519 signature over the manifest's bytes
(edge/bundle_signing.py), which is the one file the manifest cannot list; `serve --trust-key` requires it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from .errors import EdgeError
from .runtime import RUNTIME_ALIASES, ModelRunner
from .runtime_onnx import OnnxRunner

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FIDELITY = "fidelity.json"
PREFLIGHT = "edgetpu_preflight.json"
SIGNATURE = "manifest.sig"  # Ed25519 over manifest.json's bytes (edge/bundle_signing.py); not in the manifest
VARIANT_TARGETS = {"fp32": "cpu", "fp16": "cpu", "int8": "coral", "edgetpu": "coral", "onnx": "jetson"}
REQUIRED_KEYS = ("schema_version", "name", "created", "synthetic_demo", "intended_use", "labels", "input",
                 "outputs", "variants", "default_variant", "nomogram", "nomogram_sha256", "threshold",
                 "provenance", "files")
DEFAULT_BUNDLE_ENV = "NOA_EDGE_BUNDLE"


class Manifest(TypedDict, total=False):
    """manifest.json as docs/CONTRACTS.md writes it (names the keys for readers and mypy; stays JSON)."""

    schema_version: int
    name: str
    created: str
    synthetic_demo: bool
    intended_use: str
    labels: dict[str, str]                 # {"positive": "NOA", "negative": "OA"}
    input: dict[str, Any]                  # {"shape": [1, S, S, 3], "dtype": "uint8"}
    outputs: dict[str, str]                # {"prob": "prob", "cam": "cam"}
    variants: dict[str, dict[str, Any]]    # fp32/fp16/int8/edgetpu/onnx -> file, sha256, size, ...
    default_variant: dict[str, str]        # target -> variant
    nomogram: dict[str, Any]               # nomogram.json, embedded
    nomogram_sha256: str
    threshold: float
    threshold_source: str
    dl_threshold: float
    cam_shape: list[int]
    provenance: dict[str, Any]
    files: dict[str, str]                  # non-model file -> sha256
    manifest_sha256: str
    lineage: dict[str, Any]                # optional: parent, method, site cohort (noa-edge recalibrate)
    ood: dict[str, Any]                    # optional: OOD description (edge/ood.py); its file is listed in files


class BundleError(EdgeError, ValueError):
    """The bundle is missing, tampered, truncated or from an incompatible schema; `.problems` lists why."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        super().__init__(f"bundle {self.path} refused:\n  " + "\n  ".join(problems))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_json(obj) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def manifest_digest(manifest: dict) -> str:
    return sha256_json({k: v for k, v in manifest.items() if k != "manifest_sha256"})


def default_bundle_path() -> Path:
    """$NOA_EDGE_BUNDLE, else the demo bundle shipped in the source tree."""
    env = os.environ.get(DEFAULT_BUNDLE_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "firmware_assets" / "demo-phantom"


# --------------------------------------------------------------------------------------------
# Writing (host side, called by converters.convert)


def finalize_manifest(bundle_dir: str | Path, manifest: dict) -> dict:
    """Fill sizes and sha256 of every variant and file in `bundle_dir`, the nomogram and manifest
    digests, and write manifest.json. Every other file in the folder is listed under "files"."""
    root = Path(bundle_dir)
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    variant_files = set()
    for spec in manifest["variants"].values():
        path = root / spec["file"]
        spec["size"] = path.stat().st_size
        spec["sha256"] = sha256_file(path)
        variant_files.add(spec["file"])
    manifest["files"] = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST, SIGNATURE, *variant_files)
    }
    (root / SIGNATURE).unlink(missing_ok=True)  # it signed the previous manifest: sign the new one again
    manifest["nomogram_sha256"] = sha256_json(manifest["nomogram"])
    manifest.pop("manifest_sha256", None)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------
# Loading and verifying (device side)


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def synthetic_demo(self) -> bool:
        return bool(self.manifest["synthetic_demo"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def nomogram(self) -> dict:
        return self.manifest["nomogram"]

    @property
    def input_size(self) -> int:
        return int(self.manifest["input"]["shape"][1])

    @property
    def variants(self) -> dict:
        return self.manifest["variants"]

    def file(self, relative: str) -> Path:
        return self.path / relative

    def fidelity(self) -> dict | None:
        path = self.path / FIDELITY
        return json.loads(path.read_text()) if path.is_file() else None

    def preflight(self) -> dict | None:
        path = self.path / PREFLIGHT
        return json.loads(path.read_text()) if path.is_file() else None

    def choose_variant(self, target: str = "cpu", variant: str | None = None) -> str:
        """The variant to run: an explicit one, else the manifest's default for the target."""
        if variant:
            if variant not in self.variants:
                raise BundleError(self.path, [f"{MANIFEST}: no variant {variant!r} "
                                              f"(available: {', '.join(self.variants)})"])
            return variant
        chosen = self.manifest["default_variant"].get(target)
        if chosen is not None and chosen in self.variants:
            return chosen
        for fallback in ("int8", "fp32") if target == "coral" else ("fp16", "fp32"):
            if fallback in self.variants:
                return fallback
        raise BundleError(self.path, [f"{MANIFEST}: no runnable variant for target {target!r}"])

    def runner(self, target: str = "cpu", variant: str | None = None, num_threads: int | None = None,
               runtime: str = "auto") -> ModelRunner | OnnxRunner:
        """A runner on the chosen variant: `edge.runtime.ModelRunner` for a TFLite one, `edge.runtime_onnx.
        OnnxRunner` for the ONNX one. runtime onnxruntime/edgetpu imply the onnx/edgetpu variant."""
        runtime = RUNTIME_ALIASES.get(runtime, runtime)
        if variant in (None, "auto") and runtime in ("onnxruntime", "edgetpu"):
            variant = "onnx" if runtime == "onnxruntime" else "edgetpu"
        name = self.choose_variant(target, None if variant == "auto" else variant)
        spec = self.variants[name]
        if spec["file"].endswith(".onnx"):
            if runtime not in ("auto", "onnxruntime"):
                raise BundleError(self.path, [f"{spec['file']}: variant {name!r} is an ONNX model: it runs with "
                                              f"--runtime onnxruntime, not {runtime}"])
            return OnnxRunner(self.path / spec["file"], variant=name, num_threads=num_threads)
        if runtime == "onnxruntime":
            raise BundleError(self.path, [f"--runtime onnxruntime runs the bundle's onnx variant, not {name!r} "
                                          f"({spec['file']}); add one with `noa-edge bundle-onnx` on the host"])
        if not spec["file"].endswith(".tflite"):
            raise BundleError(self.path, [f"{spec['file']}: variant {name!r} is not a TFLite model"])
        return ModelRunner(self.path / spec["file"], variant=name, num_threads=num_threads, runtime=runtime)


def verify(path: str | Path) -> list[str]:
    """Every problem found in the bundle at `path` (empty list = valid). Never raises on bad content."""
    root = Path(path)
    if not root.is_dir():
        return [f"{root}: not a folder (a bundle is a folder with {MANIFEST})"]
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        return [f"{MANIFEST}: missing in {root}"]
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{MANIFEST}: not valid JSON ({exc})"]
    if not isinstance(manifest, dict):
        return [f"{MANIFEST}: top level must be an object"]
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        return [f"{MANIFEST}: schema_version {version!r} is not supported by this noa-edge "
                f"(it reads schema_version {SCHEMA_VERSION}); convert the model again or update noa-edge"]
    problems = [f"{MANIFEST}: missing key {key!r}" for key in REQUIRED_KEYS if key not in manifest]
    if problems:
        return problems
    if "manifest_sha256" in manifest and manifest["manifest_sha256"] != manifest_digest(manifest):
        problems.append(f"{MANIFEST}: content changed after the bundle was built (manifest_sha256 mismatch)")
    if not isinstance(manifest["variants"], dict) or not manifest["variants"]:
        problems.append(f"{MANIFEST}: 'variants' must be a non-empty object")
        return problems
    for name, spec in manifest["variants"].items():
        where = f"(variants.{name} in {MANIFEST})"
        if not isinstance(spec, dict) or not all(k in spec for k in ("file", "size", "sha256")):
            problems.append(f"{MANIFEST}: variants.{name} needs file, size and sha256")
            continue
        problems += _check_file(root, spec["file"], spec["sha256"], spec["size"], where)
    if not isinstance(manifest["files"], dict):
        problems.append(f"{MANIFEST}: 'files' must map file names to sha256")
    else:
        for rel, digest in manifest["files"].items():
            problems += _check_file(root, rel, digest, None, f"(files in {MANIFEST})")
        problems += _unlisted_files(root, manifest)
        ood = manifest.get("ood")  # optional (bundles built before the OOD guard have none)
        if ood is not None and (not isinstance(ood, dict) or ood.get("file") not in manifest["files"]):
            problems.append(f"{MANIFEST}: 'ood' must name its description file, listed (and hashed) in 'files'")
    if sha256_json(manifest["nomogram"]) != manifest["nomogram_sha256"]:
        problems.append(f"{MANIFEST}: embedded nomogram does not match nomogram_sha256")
    for key in manifest["default_variant"].values():
        if key not in manifest["variants"]:
            problems.append(f"{MANIFEST}: default_variant names {key!r}, which is not among the variants")
    if not isinstance(manifest["threshold"], (int, float)) or not 0.0 <= manifest["threshold"] <= 1.0:
        problems.append(f"{MANIFEST}: threshold {manifest['threshold']!r} is not a probability in [0, 1]")
    return problems


def _check_file(root: Path, relative: str, digest: str, size: int | None, where: str) -> list[str]:
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        return [f"{relative}: points outside the bundle {where}"]
    if not path.is_file():
        return [f"{relative}: missing {where}"]
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        kind = "truncated" if actual_size < size else "larger than built"
        return [f"{relative}: {kind}: {actual_size} bytes, manifest says {size} {where}"]
    if sha256_file(path) != digest:
        return [f"{relative}: sha256 mismatch, the file was altered or corrupted {where}"]
    return []


def _unlisted_files(root: Path, manifest: dict) -> list[str]:
    """Files in the folder that the manifest does not hash: the writer lists every file it leaves, so one of
    these came from elsewhere, and the device would read an unchecked fidelity.json or model card."""
    listed = {MANIFEST, SIGNATURE, *manifest["files"]}
    listed |= {spec["file"] for spec in manifest["variants"].values() if isinstance(spec, dict) and "file" in spec}
    return [f"{rel}: not listed in {MANIFEST} (not part of this build: remove it or rebuild the bundle)"
            for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            if rel not in listed]


def load(path: str | Path | None = None) -> Bundle:
    """Verified bundle, or BundleError naming every bad file. None = the default bundle."""
    root = Path(path) if path is not None else default_bundle_path()
    problems = verify(root)
    if problems:
        raise BundleError(root, problems)
    return Bundle(root, json.loads((root / MANIFEST).read_text()))


# --------------------------------------------------------------------------------------------
# CLI: noa-edge bundle verify / info


def describe(bundle: Bundle) -> list[str]:
    """Human-readable summary lines (what `noa-edge bundle info` prints)."""
    m = bundle.manifest
    lines = [f"bundle      {bundle.name}  ({bundle.path})", f"created     {m['created']}"]
    if bundle.synthetic_demo:
        lines.append("SYNTHETIC DEMO: trained on a phantom cohort, not for diagnosis")
    lines.append(f"intended    {m['intended_use']}")
    inp = m["input"]
    lines.append(f"input       {inp['shape']} {inp['dtype']} raw RGB pixels; outputs {m['outputs']}")
    lines.append("variants")
    for name, spec in m["variants"].items():
        quant = spec.get("input", {})
        q = f" in: {quant.get('dtype')} scale={quant.get('scale')} zp={quant.get('zero_point')}" if quant else ""
        kept = spec.get("kept_fp32")
        if kept:
            q += f"; first {kept['kept_tensors']} tensors ({kept['kept_weights']} weights) kept fp32"
        lines.append(f"  {name:8s} {spec['file']:28s} {spec.get('target', ''):7s} {spec.get('dtype', ''):8s} "
                     f"{spec['size'] / 1e6:7.2f} MB  sha256 {spec['sha256'][:12]}{q}")
    lines.append(f"defaults    {m['default_variant']}")
    nomo = m["nomogram"]
    tag = "PLACEHOLDER (not fitted)" if nomo.get("placeholder") else "fitted"
    lines.append(f"nomogram    {tag}; predictors {[p.get('name') for p in nomo.get('predictors', [])]}; "
                 f"sha256 {m['nomogram_sha256'][:12]}")
    source = f" ({m.get('threshold_source')})" if m.get("threshold_source") else ""
    lines.append(f"threshold   {m['threshold']}{source}")
    prov = m["provenance"]
    lines.append("provenance  " + ", ".join(f"{k}={v}" for k, v in prov.items()))
    lines += lineage_lines(m)
    fidelity = bundle.fidelity()
    if fidelity:
        lines.append(f"fidelity vs Keras on {fidelity.get('n_rois')} held-out ROIs "
                     f"(threshold {fidelity.get('threshold')})")
        lines.append(f"  {'variant':8s} {'AUC':>7s} {'dAUC':>8s} {'agree':>7s} {'mean|dp|':>9s} {'max|dp|':>9s} "
                     f"{'CAM r':>7s}")
        for name, f in fidelity.get("variants", {}).items():
            lines.append(f"  {name:8s} {_num(f.get('auc'), 4):>7s} {_num(f.get('delta_auc'), 4):>8s} "
                         f"{_num(f.get('agreement'), 4):>7s} {_num(f.get('mean_abs_dprob'), 5):>9s} "
                         f"{_num(f.get('max_abs_dprob'), 5):>9s} {_num(f.get('cam_r'), 4):>7s}"
                         + (f"  (vs {f['reference'].split(' through')[0]})" if f.get("reference") else ""))
    ood = m.get("ood")
    lines.append("ood guard   " + ("none (no OOD description in this bundle)" if not ood else
                                   f"{ood.get('file')}; thresholds {ood.get('thresholds')}"))
    preflight = bundle.preflight()
    if preflight:
        lines.append(f"edge tpu    {preflight.get('verdict')}")
    lines.append("signature   " + (f"{SIGNATURE} (Ed25519; `noa-edge bundle verify --trust PUBKEY` checks it)"
                                   if (bundle.path / SIGNATURE).is_file() else "none (unsigned)"))
    return lines


def lineage_lines(m: Mapping[str, Any]) -> list[str]:
    """Where a recalibrated bundle comes from (optional manifest key `lineage`, written by `noa-edge
    recalibrate`): its parent (sha256 of the parent's manifest.json bytes), the update and the site cohort."""
    lineage = m.get("lineage")
    if not isinstance(lineage, dict):
        return []
    c = lineage.get("cohort") or {}
    method = lineage.get("method")
    what = "no update (the site's data did not call for one)" if method == "none" else f"{method} recalibration"
    return [f"lineage     {what} (requested {lineage.get('method_requested')}) of "
            f"{lineage.get('parent_name')}, parent manifest.json sha256 {lineage.get('parent_sha256')}",
            f"  site cohort {c.get('dataset')}: {c.get('n_images')} images / {c.get('n_patients')} patients, "
            f"{c.get('events_images')} NOA images ({c.get('events_patients')} NOA patients)"]


def _num(value, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
