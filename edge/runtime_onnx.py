"""ONNX Runtime on the device: the bundle's ONNX variant, with the same contract as edge.runtime.ModelRunner.

Same input (raw uint8 RGB pixels, (1, S, S, 3); normalisation is inside the graph), outputs by name (`prob`,
`cam`, and any other the model exports, e.g. `features`), the same `run` / `run_all` / `info`. So the
Analyzer, the bench and the probe of `--runtime auto` (edge/runtime_select.py) treat both alike.

Execution provider: the best one this onnxruntime build offers, in the order TensorRT → CUDA → CPU
(`choose_providers`); ORT falls back node by node along that list. A Jetson gets TensorRT/CUDA from NVIDIA's
onnxruntime-gpu wheel; an x86 cart or a Raspberry Pi gets the CPU provider from PyPI's onnxruntime
(`pip install noa-edge[onnx]`). TensorRT builds an engine on first load (minutes on a Jetson); it is cached
under $NOA_EDGE_TRT_CACHE (default ~/.cache/noa-edge/tensorrt) so later starts are quick.
onnxruntime is imported lazily: a device without it still imports edge.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from .runtime import FEATURES, OUTPUT_NAMES, ModelError, RuntimeUnavailable, _canonical_output, _dist_version

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(int8)": np.int8,
               "tensor(float16)": np.float16}


def import_onnxruntime():
    """The onnxruntime module, or RuntimeUnavailable saying how to get it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"onnxruntime is not installed ({exc}): `pip install noa-edge[onnx]` (x86, Raspberry Pi), or "
            "NVIDIA's onnxruntime-gpu wheel for JetPack on a Jetson") from None


def choose_providers(available: list[str] | tuple[str, ...]) -> list[str]:
    """The execution providers to ask for, best first: TensorRT, then CUDA, then CPU (those available)."""
    chosen = [p for p in PROVIDER_ORDER if p in available]
    return chosen or ["CPUExecutionProvider"]


def _trt_cache_dir() -> str:
    path = Path(os.environ.get("NOA_EDGE_TRT_CACHE") or Path.home() / ".cache" / "noa-edge" / "tensorrt")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home (systemd ProtectHome): TensorRT then builds its engine every start
        pass
    return str(path)


class OnnxRunner:
    """One ONNX Runtime session. `run(roi_uint8) -> (prob, cam)`, `run_all -> {name: array}`; one per worker."""

    def __init__(self, model_path: str | Path, variant: str = "onnx", num_threads: int | None = None):
        self.model_path = Path(model_path)
        self.variant = variant
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        ort = import_onnxruntime()
        self.runtime, self.runtime_version = "onnxruntime", getattr(ort, "__version__", None) or _dist_version(
            "onnxruntime")
        self.num_threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused providers are noise on a cart's log
        providers = choose_providers(ort.get_available_providers())
        options = [{"trt_engine_cache_enable": True, "trt_engine_cache_path": _trt_cache_dir()}
                   if p == "TensorrtExecutionProvider" else {} for p in providers]
        try:
            self._session = ort.InferenceSession(str(self.model_path), opts, providers=providers,
                                                 provider_options=options)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for a bad file
            raise ModelError(f"cannot load {self.model_path}: {exc}") from exc
        self.providers = list(self._session.get_providers())
        self.delegate = f"{self.providers[0]} (asked: {' > '.join(providers)})"
        self._bind()

    def _bind(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.model_path.name}: expected one input, found {len(inputs)}")
        inp = inputs[0]
        shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)  # a symbolic batch dimension is 1
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ModelError(f"{self.model_path.name}: input shape {tuple(inp.shape)} is not (1, S, S, 3) "
                             "(NHWC raw RGB pixels, as every variant of a bundle takes)")
        if inp.type not in _ORT_DTYPES:
            raise ModelError(f"{self.model_path.name}: input type {inp.type} is not uint8 or float pixels")
        self._input_name, self.input_shape, self.input_dtype = inp.name, shape, np.dtype(_ORT_DTYPES[inp.type])
        names = {}
        for out in self._session.get_outputs():
            names[_canonical_output(out.name) or out.name] = out.name
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise ModelError(f"{self.model_path.name}: no output named {' or '.join(missing)} "
                             f"(outputs: {', '.join(sorted(names)) or 'none'})")
        self._names = names                     # canonical name -> the graph's output name
        self._fetch = [names["prob"], names["cam"]] + ([names[FEATURES]] if FEATURES in names else [])
        self.has_features = FEATURES in names  # optional: pooled backbone features for the OOD guard
        self.last_features: np.ndarray | None = None  # float32 (C,) of the last run(), when the model has them
        cam_shape = next(o.shape for o in self._session.get_outputs() if o.name == names["cam"])[1:]
        if not all(isinstance(d, int) for d in cam_shape):
            raise ModelError(f"{self.model_path.name}: cam output has no fixed shape ({cam_shape})")
        self.cam_shape = tuple(int(d) for d in cam_shape)
        self.input_scale, self.input_zero_point = 1.0, 0

    def _feed(self, roi_uint8: np.ndarray) -> dict:
        roi = roi_uint8
        if roi.dtype != np.uint8 or roi.shape != self.input_shape[1:]:
            raise ValueError(f"ROI must be uint8 {self.input_shape[1:]}, got {roi.dtype} {roi.shape}")
        x = roi[None] if self.input_dtype == np.uint8 else roi[None].astype(self.input_dtype)
        return {self._input_name: x}

    def run(self, roi_uint8: np.ndarray) -> tuple[float, np.ndarray]:
        """uint8 RGB ROI (S, S, 3) -> (probability of NOA, CAM (h, w) float32), as ModelRunner.run."""
        prob, cam, *features = self._session.run(self._fetch, self._feed(roi_uint8))
        if features:
            self.last_features = np.asarray(features[0], dtype=np.float32).reshape(-1)
        return float(np.asarray(prob).reshape(-1)[0]), np.asarray(cam, dtype=np.float32).reshape(self.cam_shape)

    def run_all(self, roi_uint8: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name, batch dimension dropped (as ModelRunner.run_all)."""
        canon = list(self._names)
        values = self._session.run([self._names[n] for n in canon], self._feed(roi_uint8))
        return {n: np.asarray(v, dtype=np.float32)[0] for n, v in zip(canon, values, strict=True)}

    @property
    def output_names(self) -> list[str]:
        return sorted(self._names)

    def info(self) -> dict:
        return {
            "model": str(self.model_path), "variant": self.variant, "runtime": self.runtime,
            "runtime_version": self.runtime_version, "delegate": self.delegate, "providers": self.providers,
            "num_threads": self.num_threads,
            "input": {"shape": list(self.input_shape), "dtype": str(self.input_dtype), "scale": 1.0,
                      "zero_point": 0},
            "cam_shape": list(self.cam_shape), "features": self.has_features, "outputs": self.output_names,
        }
