"""The one inference wrapper on the device: a TFLite model in, `(prob, cam)` out.

Runtimes, first found wins: `ai_edge_litert` (LiteRT, current wheels), `tflite_runtime` (Coral and
Jetson images that pin numpy<2), and `tensorflow.lite` only as a last resort, imported lazily so a
device never pays for (or needs) TensorFlow. The Coral Edge TPU is reached through the
`libedgetpu` delegate, loaded only for the `edgetpu` variant.

Outputs are found by name, never by index: converters reorder outputs freely (TFLite sorts signature
outputs alphabetically, the Edge TPU compiler may drop signatures), so the runner asks the signature
for `prob`/`cam` and falls back to output tensor names that contain them. Quantized inputs/outputs
are (de)quantized here with the tensor's own scale/zero-point, so every variant takes the same raw
uint8 pixels and returns float probabilities.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
OUTPUT_NAMES = ("prob", "cam")
# What `--runtime` accepts (serve, bench, the config file): the device's runtimes by their package names.
# `edgetpu` is LiteRT/tflite_runtime with the libedgetpu delegate on the bundle's edgetpu variant;
# `onnxruntime` runs the bundle's ONNX variant (edge/runtime_onnx.py); `auto` probes (edge/runtime_select.py).
RUNTIME_CHOICES = ("auto", "litert", "tflite-runtime", "onnxruntime", "edgetpu")
RUNTIME_ALIASES = {"ai_edge_litert": "litert", "ai-edge-litert": "litert", "tflite_runtime": "tflite-runtime",
                   "onnx": "onnxruntime", "ort": "onnxruntime"}
TFLITE_MODULES = {"litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}
FEATURES = "features"  # optional: pooled backbone features for the OOD guard (edge/ood.py)


class RuntimeUnavailable(EdgeError, RuntimeError):
    """No TFLite interpreter (or the Edge TPU delegate) could be loaded on this machine."""


class ModelError(EdgeError, ValueError):
    """The model file is missing, unreadable, or lacks the `prob`/`cam` outputs."""


class RuntimeChoiceError(EdgeError, ValueError):
    """`--runtime` names no runtime this device knows."""


def normalize_runtime(name: str | None) -> str:
    """'litert' | 'tflite-runtime' | 'onnxruntime' | 'edgetpu' | 'auto' for a --runtime value (old module names
    such as ai_edge_litert and tflite_runtime are accepted as aliases)."""
    key = (name or "auto").strip().lower()
    key = RUNTIME_ALIASES.get(key, key)
    if key not in RUNTIME_CHOICES:
        raise RuntimeChoiceError(f"--runtime {name!r}: choose one of {', '.join(RUNTIME_CHOICES)} "
                                 "(ai_edge_litert and tflite_runtime are accepted as aliases)")
    return key


def _import_runtime(name: str):
    """(Interpreter class, load_delegate, version string) of one runtime; ImportError if absent."""
    if name == "ai_edge_litert":
        mod = importlib.import_module("ai_edge_litert.interpreter")
        version = _dist_version("ai-edge-litert")
    elif name == "tflite_runtime":
        mod = importlib.import_module("tflite_runtime.interpreter")
        version = _dist_version("tflite-runtime")
    elif name == "tensorflow":
        tf = importlib.import_module("tensorflow")  # last resort only: heavy, not on devices
        mod, version = tf.lite, tf.__version__
        return mod.Interpreter, mod.experimental.load_delegate, version
    else:
        raise ValueError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    return mod.Interpreter, mod.load_delegate, version


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - a version string is informative only
        return "unknown"


def find_runtime(prefer: str = "auto"):
    """Pick the interpreter: `prefer` = auto | litert | tflite-runtime | edgetpu, or a module name
    (ai_edge_litert | tflite_runtime | tensorflow).

    The environment variable NOA_EDGE_RUNTIME overrides "auto" (handy on a cart with two runtimes).
    Returns (name, Interpreter, load_delegate, version).
    """
    prefer = os.environ.get("NOA_EDGE_RUNTIME", prefer) if prefer in ("auto", "edgetpu") else prefer
    prefer = TFLITE_MODULES.get(RUNTIME_ALIASES.get(prefer, prefer), prefer) if prefer else prefer
    if prefer == "edgetpu":  # the delegate is chosen by the variant; any TFLite interpreter loads it
        prefer = "auto"
    order = RUNTIMES if prefer in ("auto", "", None) else (prefer,)
    errors = []
    for name in order:
        try:
            interpreter_cls, load_delegate, version = _import_runtime(name)
            return name, interpreter_cls, load_delegate, version
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise RuntimeUnavailable(
        "no TFLite runtime found (" + "; ".join(errors) + "): install ai-edge-litert, or tflite-runtime "
        "on images that pin numpy<2"
    )


def edgetpu_library() -> str:
    return EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")


class ModelRunner:
    """One loaded model. `run(roi_uint8) -> (prob, cam)`; not thread-safe (one per worker)."""

    def __init__(self, model_path: str | Path, variant: str = "fp32", num_threads: int | None = None,
                 runtime: str = "auto"):
        self.model_path = Path(model_path)
        self.variant = variant
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        self.runtime, interpreter_cls, load_delegate, self.runtime_version = find_runtime(runtime)
        self.num_threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        delegates = []
        self.delegate = "none (default CPU kernels, XNNPACK where the runtime applies it)"
        if variant == "edgetpu":
            lib = edgetpu_library()
            try:
                ctypes.CDLL(lib)  # probe first: a failed load_delegate leaves a half-built Delegate behind
                delegates = [load_delegate(lib)]
            except (ValueError, OSError) as exc:
                raise RuntimeUnavailable(
                    f"{self.model_path.name} is an Edge TPU model but the Edge TPU delegate {lib} could not "
                    f"be loaded ({exc}); install libedgetpu1-std and plug in the Coral, or use a cpu variant"
                ) from exc
            self.delegate = f"edgetpu ({lib})"
        try:
            self._interp = interpreter_cls(model_path=str(self.model_path), experimental_delegates=delegates,
                                           num_threads=self.num_threads)
            self._interp.allocate_tensors()
        except ValueError as exc:
            raise ModelError(f"cannot load {self.model_path}: {exc}") from exc
        self._bind_tensors()

    # -- set-up ------------------------------------------------------------------------------

    def _bind_tensors(self) -> None:
        inputs, outputs = self._named_io()
        if len(inputs) != 1:
            raise ModelError(f"{self.model_path.name}: expected one input, found {len(inputs)}")
        self._in = next(iter(inputs.values()))
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise ModelError(
                f"{self.model_path.name}: no output named {' or '.join(missing)} "
                f"(outputs: {', '.join(sorted(outputs)) or 'none'})"
            )
        self._prob, self._cam = outputs["prob"], outputs["cam"]
        self._outputs = outputs  # every named output (prob, cam and any other, e.g. features)
        self._features = outputs.get(FEATURES)  # None in bundles built before the OOD guard
        self.has_features = self._features is not None
        self.last_features: np.ndarray | None = None  # float32 (C,) of the last run(), when the model has them
        shape = tuple(int(v) for v in self._in["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ModelError(f"{self.model_path.name}: input shape {shape} is not (1, S, S, 3)")
        self.input_shape = shape
        self.input_dtype = np.dtype(self._in["dtype"])
        scale, zero_point = self._in["quantization"]
        self.input_scale, self.input_zero_point = float(scale), int(zero_point)
        # Raw pixels go straight in when the input is uint8 with identity quantization (scale 1, zp 0)
        # or no quantization at all: no conversion, no copy beyond the interpreter's own.
        self._feed_raw = self.input_dtype == np.uint8 and (scale == 0.0 or (scale == 1.0 and zero_point == 0))
        self._in_buf = None if self._feed_raw else np.empty(shape, dtype=self.input_dtype)
        self._float_buf = None if self._feed_raw else np.empty(shape, dtype=np.float32)
        self.cam_shape = tuple(int(v) for v in self._cam["shape"])[1:]

    def _named_io(self) -> tuple[dict, dict]:
        """{name: tensor details} for inputs and outputs, from the signature, else tensor names."""
        try:
            signatures = self._interp.get_signature_list()
        except Exception:  # noqa: BLE001 - old runtimes without signatures
            signatures = {}
        if signatures:
            key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
            runner = self._interp.get_signature_runner(key)
            ins, outs = runner.get_input_details(), runner.get_output_details()
            outputs = {_canonical_output(name) or name: d for name, d in outs.items()}
            if all(n in outputs for n in OUTPUT_NAMES):
                return ins, outputs
        ins = {d["name"]: d for d in self._interp.get_input_details()}
        outputs = {}
        for d in self._interp.get_output_details():
            canonical = _canonical_output(d["name"])
            outputs[canonical or d["name"]] = d
        return ins, outputs

    # -- inference ---------------------------------------------------------------------------

    def run(self, roi_uint8: np.ndarray) -> tuple[float, np.ndarray]:
        """uint8 RGB ROI (S, S, 3) from edge.preprocess.crop_roi -> (probability of NOA, CAM (h, w) float32)."""
        roi = roi_uint8
        if roi.dtype != np.uint8 or roi.shape != self.input_shape[1:]:
            raise ValueError(f"ROI must be uint8 {self.input_shape[1:]}, got {roi.dtype} {roi.shape}")
        interp = self._interp
        if self._feed_raw:
            interp.set_tensor(self._in["index"], roi[None])  # view, one copy into the interpreter
        else:
            self._quantize_input(roi)
            interp.set_tensor(self._in["index"], self._in_buf)
        interp.invoke()
        prob = _dequantize(interp.get_tensor(self._prob["index"]), self._prob).reshape(-1)[0]
        cam = _dequantize(interp.get_tensor(self._cam["index"]), self._cam).reshape(self.cam_shape)
        if self._features is not None:
            self.last_features = _dequantize(interp.get_tensor(self._features["index"]), self._features).reshape(-1)
        return float(prob), cam

    def run_all(self, roi_uint8: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (prob, cam and whatever else the model exports), dequantized, batch dim dropped."""
        self.run(roi_uint8)
        return {name: _dequantize(self._interp.get_tensor(d["index"]), d)[0] for name, d in self._outputs.items()}

    @property
    def output_names(self) -> list[str]:
        return sorted(self._outputs)

    def _quantize_input(self, roi: np.ndarray) -> None:
        buf, fbuf = self._in_buf, self._float_buf
        assert buf is not None and fbuf is not None  # allocated whenever the input is not fed raw
        if np.issubdtype(self.input_dtype, np.floating):
            np.copyto(buf[0], roi, casting="unsafe")
            return
        info = np.iinfo(self.input_dtype)
        np.multiply(roi, 1.0 / self.input_scale, out=fbuf[0], casting="unsafe")
        fbuf += self.input_zero_point
        np.rint(fbuf, out=fbuf)
        np.clip(fbuf, info.min, info.max, out=fbuf)
        np.copyto(buf, fbuf, casting="unsafe")

    def info(self) -> dict:
        """What actually runs: for the result page, the bench and the audit trail."""
        return {
            "model": str(self.model_path), "variant": self.variant, "runtime": self.runtime,
            "runtime_version": self.runtime_version, "delegate": self.delegate, "num_threads": self.num_threads,
            "input": {"shape": list(self.input_shape), "dtype": str(self.input_dtype),
                      "scale": self.input_scale, "zero_point": self.input_zero_point},
            "cam_shape": list(self.cam_shape), "features": self.has_features,
        }


def _canonical_output(name: str) -> str | None:
    """'prob', 'cam' or None for a signature key or tensor name ('StatefulPartitionedCall:1' -> None)."""
    lowered = name.lower()
    if lowered in OUTPUT_NAMES:
        return lowered
    hits = [n for n in OUTPUT_NAMES if n in lowered]
    return hits[0] if len(hits) == 1 else None


def _dequantize(values: np.ndarray, details: dict) -> np.ndarray:
    scale, zero_point = details["quantization"]
    if values.dtype == np.float32:
        return values
    if scale == 0.0:
        return values.astype(np.float32)
    return (values.astype(np.float32) - zero_point) * np.float32(scale)
