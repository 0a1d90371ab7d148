"""Edge TPU preflight: read an int8 .tflite op by op and say what the Coral would run, before a Coral.

The Edge TPU compiler (x86 only, often absent on the build host) maps an op to the TPU only if it is
in the documented op table and meets its limits, and it cuts the graph once: from the first op it
cannot map, that op and everything fed by it runs on the CPU (coral.ai "TensorFlow models on the
Edge TPU": supported operations; requirements: 8-bit quantized tensors, static shapes, constant
parameters, tensors with at most 3 dimensions larger than 1). This module applies those rules to the
real flatbuffer so a bad graph is caught on the host, and when `edgetpu_compiler` is on PATH it
runs it with `-s` and parses the compiler's own verdict, which is the one that counts.

Rules (compiler v16 table; ops absent from it fall back to the CPU):
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from converters.errors import PreflightError
from converters.tflite_flatbuffer import builtin_code, enum_names, is_tflite, schema, unpack

# op -> documented limit (the check for it is in _check_op)
SUPPORTED_OPS = {
    "ADD": "", "SUB": "", "MUL": "", "MAXIMUM": "", "MINIMUM": "", "SQUARED_DIFFERENCE": "",
    "AVERAGE_POOL_2D": "no fused activation", "MAX_POOL_2D": "no fused activation",
    "CONCATENATION": "no fused activation; a constant input must be all zeros with exactly 2 inputs",
    "CONV_2D": "same dilation in x and y", "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "TRANSPOSE_CONV": "", "FULLY_CONNECTED": "default weights format",
    "EXPAND_DIMS": "", "SQUEEZE": "", "RESHAPE": "very large reshapes may stay on the CPU",
    "L2_NORMALIZATION": "", "LOGISTIC": "", "TANH": "", "RELU": "", "RELU6": "", "RELU_N1_TO_1": "",
    "PRELU": "alpha 1-D (shared over H, W)", "HARD_SWISH": "",
    "MEAN": "no reduction over batch; a channel (z) reduction needs channels % 4 == 0",
    "SUM": "no reduction over batch", "REDUCE_MAX": "no reduction over batch", "REDUCE_MIN": "no reduction over batch",
    "PAD": "no padding in the batch dimension", "PACK": "no packing in the batch dimension",
    "QUANTIZE": "", "RESIZE_BILINEAR": "3-D in/out; some sizes stay on the CPU for precision",
    "RESIZE_NEAREST_NEIGHBOR": "3-D in/out", "RSQRT": "", "SLICE": "", "SOFTMAX": "1-D input, max 16000 elements",
    "SPACE_TO_DEPTH": "", "SPLIT": "no split in the batch dimension",
    "STRIDED_SLICE": "all strides 1, ellipsis_mask 0, new_axis_mask 0",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional only",
}
__doc__ += "\n".join(f"  {op}: {limit or 'no documented limit'}" for op, limit in SUPPORTED_OPS.items())

EIGHT_BIT = ("INT8", "UINT8")
INDEX_TYPES = ("INT32", "INT64")  # shapes, axes, paddings, biases: constants, allowed


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: list[int]
    dtype: str
    constant: bool
    dynamic: bool
    quantized: bool


@dataclass
class OpInfo:
    index: int
    op: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    options: dict = field(default_factory=dict)
    supported: bool = False       # meets the documented limits
    placement: str = "cpu"        # where it would run after partitioning: "tpu" | "cpu"
    reasons: list[str] = field(default_factory=list)


def read_ops(model: bytes | str | Path) -> tuple[list[OpInfo], dict]:
    """Every operator of subgraph 0 in execution order, with tensor shapes/dtypes and the options the
    Edge TPU rules look at. Also returns graph-level facts (inputs, outputs, subgraph count)."""
    tfl = schema()
    buf = Path(model).read_bytes() if not isinstance(model, (bytes, bytearray)) else bytes(model)
    if not is_tflite(buf):
        raise PreflightError(f"{model if not isinstance(model, (bytes, bytearray)) else 'buffer'}: not a TFLite "
                             "flatbuffer (missing TFL3 identifier)")
    m = unpack(buf)
    op_names = enum_names(tfl.BuiltinOperator)
    type_names = enum_names(tfl.TensorType)
    g = m.subgraphs[0]

    def tensor(i: int) -> TensorInfo:
        t = g.tensors[i]
        shape = [int(v) for v in (t.shape if t.shape is not None else [])]
        signature = [int(v) for v in (t.shapeSignature if t.shapeSignature is not None else shape)]
        q = t.quantization
        quantized = q is not None and q.scale is not None and len(q.scale) > 0
        constant = m.buffers[t.buffer].data is not None if t.buffer < len(m.buffers) else False
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        return TensorInfo(i, name, shape, type_names.get(t.type, str(t.type)), constant,
                          any(v < 0 for v in signature), quantized)

    def const_values(i: int):
        t = g.tensors[i]
        data = m.buffers[t.buffer].data
        if data is None:
            return None
        dtype = {"INT32": np.int32, "INT64": np.int64}.get(type_names.get(t.type))
        return np.frombuffer(bytes(bytearray(data)), dtype=dtype).tolist() if dtype else None

    ops = []
    for idx, op in enumerate(g.operators):
        code = m.operatorCodes[op.opcodeIndex]
        builtin = builtin_code(code)
        name = op_names.get(builtin, str(builtin))
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            name = f"CUSTOM:{custom}"
        inputs = [tensor(i) for i in op.inputs if i >= 0]
        outputs = [tensor(i) for i in op.outputs if i >= 0]
        options = {}
        if op.builtinOptions is not None:
            options = {k: v for k, v in vars(op.builtinOptions).items() if isinstance(v, (int, float, bool))}
        if name in ("PAD", "PADV2") and len(op.inputs) > 1:
            options["paddings"] = const_values(op.inputs[1])
        if name == "STRIDED_SLICE" and len(op.inputs) > 3:
            options["begin"], options["end"], options["strides"] = (const_values(j) for j in op.inputs[1:4])
        if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and len(op.inputs) > 1:
            options["axes"] = const_values(op.inputs[1])
        ops.append(OpInfo(idx, name, inputs, outputs, options))
    graph = {
        "subgraphs": len(m.subgraphs),
        "inputs": [asdict(tensor(i)) for i in g.inputs],
        "outputs": [asdict(tensor(i)) for i in g.outputs],
    }
    return ops, graph


def _check_op(op: OpInfo) -> list[str]:
    """Reasons this op cannot map to the Edge TPU (empty = it meets the documented limits)."""
    reasons = []
    base = op.op
    if base not in SUPPORTED_OPS:
        return [f"{base} is not in the Edge TPU op table"]
    for t in op.inputs + op.outputs:
        if t.dynamic:
            reasons.append(f"tensor {t.name} has a dynamic shape {t.shape}")
        if not t.constant and t.dtype not in EIGHT_BIT:
            reasons.append(f"tensor {t.name} is {t.dtype}, not 8-bit quantized")
        if t.constant and t.dtype not in EIGHT_BIT + INDEX_TYPES:
            reasons.append(f"constant {t.name} is {t.dtype}")
        if not t.constant and len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]):
            reasons.append(f"tensor {t.name} {t.shape}: only the 3 innermost dimensions may exceed 1")
    o = op.options
    if base in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION") and o.get("fusedActivationFunction", 0) != 0:
        reasons.append("fused activation function")
    if base in ("CONV_2D", "DEPTHWISE_CONV_2D") and o.get("dilationHFactor", 1) != o.get("dilationWFactor", 1):
        reasons.append("different dilation in x and y")
    if base == "STRIDED_SLICE":
        if any(s != 1 for s in (o.get("strides") or [])):
            reasons.append(f"strides {o.get('strides')} are not all 1")
        if o.get("ellipsisMask", 0) or o.get("newAxisMask", 0):
            reasons.append("ellipsis or new-axis mask set")
    if base == "PAD":
        pads = o.get("paddings") or []
        if pads[:2] not in ([], [0, 0]):
            reasons.append(f"pads the batch dimension {pads[:2]}")
    if base in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"):
        rank = len(op.inputs[0].shape)
        axes = [a % rank for a in (o.get("axes") or [])]
        if 0 in axes:
            reasons.append("reduces over the batch dimension")
        if base == "MEAN" and rank - 1 in axes and op.inputs[0].shape[-1] % 4:
            reasons.append(f"channel reduction over {op.inputs[0].shape[-1]} channels (needs a multiple of 4)")
    if base == "CONCATENATION":
        consts = [t for t in op.inputs if t.constant]
        if consts and len(op.inputs) != 2:
            reasons.append("constant input with more than 2 inputs")
    return reasons


def judge(ops: list[OpInfo]) -> list[OpInfo]:
    """Mark each op supported/unsupported and place it: the compiler makes one TPU partition, so an op
    fed (directly or indirectly) by a CPU op runs on the CPU even if it is supported."""
    produced_on_cpu: set[int] = set()
    for op in ops:
        op.reasons = _check_op(op)
        op.supported = not op.reasons
        fed_by_cpu = [t.name for t in op.inputs if t.index in produced_on_cpu]
        if op.supported and not fed_by_cpu:
            op.placement = "tpu"
        else:
            op.placement = "cpu"
            if op.supported:
                op.reasons.append(f"supported, but fed by a CPU op ({fed_by_cpu[0]}); the compiler partitions once")
            produced_on_cpu.update(t.index for t in op.outputs)
    return ops


def preflight(model_path: str | Path) -> dict:
    """The report: every op, what falls back to the CPU and why, and a one-line verdict."""
    ops, graph = read_ops(model_path)
    judge(ops)
    cpu_ops = [op for op in ops if op.placement == "cpu"]
    output_ids = {t["index"] for t in graph["outputs"]}
    # DEQUANTIZE ops that only turn final outputs into float are expected to stay on the CPU.
    tail = [op for op in cpu_ops if op.op == "DEQUANTIZE" and all(t.index in output_ids for t in op.outputs)]
    blocking = [op for op in cpu_ops if op not in tail]
    counts: dict[str, dict] = {}
    for op in ops:
        c = counts.setdefault(op.op, {"count": 0, "tpu": 0, "cpu": 0})
        c["count"] += 1
        c[op.placement] += 1
    in_quant = graph["inputs"][0]
    if not blocking:
        verdict = (f"PASS: all {len(ops) - len(tail)} compute ops meet the Edge TPU limits and form one TPU "
                   f"partition; only {len(tail)} final DEQUANTIZE op(s) (int8 -> float outputs) run on the CPU")
    else:
        first = blocking[0]
        verdict = (f"PARTIAL: {len(blocking)} of {len(ops)} ops would run on the CPU, starting at op "
                   f"#{first.index} {first.op} ({first.reasons[0]})")
    notable = {}
    for kind in ("STRIDED_SLICE", "PAD"):
        found = [op for op in ops if op.op == kind]
        if found:
            notable[kind] = [{"index": op.index, "input": op.inputs[0].shape, "output": op.outputs[0].shape,
                              "options": {k: v for k, v in op.options.items() if k != "offset"},
                              "placement": op.placement, "reasons": op.reasons} for op in found]
    return {
        "model": str(model_path),
        "verdict": verdict,
        "passes": not blocking,
        "ops_total": len(ops),
        "ops_tpu": len(ops) - len(cpu_ops),
        "ops_cpu": len(cpu_ops),
        "input": {k: in_quant[k] for k in ("name", "shape", "dtype")},
        "op_counts": counts,
        "cpu_ops": [{"index": op.index, "op": op.op, "reasons": op.reasons} for op in cpu_ops],
        "strided_slice_and_pad": notable,
        "ops": [{"index": op.index, "op": op.op, "placement": op.placement,
                 "inputs": [[t.shape, t.dtype] for t in op.inputs],
                 "outputs": [[t.shape, t.dtype] for t in op.outputs]} for op in ops],
        "rules": "coral.ai 'TensorFlow models on the Edge TPU' (compiler v16 op table and model requirements)",
        "compiler": None,
    }


# --------------------------------------------------------------------------------------------
# The real compiler, when present


def compiler_command(model_path: str | Path, out_dir: str | Path) -> list[str]:
    return ["edgetpu_compiler", "-s", "-o", str(out_dir), str(model_path)]


def parse_compiler_log(text: str) -> dict:
    """Subgraphs, op counts, per-op status and parameter memory from `edgetpu_compiler -s` output."""
    def grab(pattern, cast=str):
        found = re.search(pattern, text, re.MULTILINE)
        return cast(found.group(1).strip()) if found else None

    ops = []
    for line in text.splitlines():
        row = re.match(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*)$", line.strip())
        if row and row.group(1) not in ("Operator",):
            ops.append({"op": row.group(1), "count": int(row.group(2)), "status": row.group(3).strip()})
    return {
        "version": grab(r"Edge TPU Compiler version (\S+)"),
        "subgraphs": grab(r"Number of Edge TPU subgraphs:\s*(\d+)", int),
        "ops_total": grab(r"Total number of operations:\s*(\d+)", int),
        "ops_tpu": grab(r"Number of operations that will run on Edge TPU:\s*(\d+)", int),
        "ops_cpu": grab(r"Number of operations that will run on CPU:\s*(\d+)", int),
        "on_chip_memory": grab(r"On-chip memory used for caching model parameters:\s*(.+)$"),
        "on_chip_remaining": grab(r"On-chip memory remaining for caching model parameters:\s*(.+)$"),
        "off_chip_memory": grab(r"Off-chip memory used for streaming uncached model parameters:\s*(.+)$"),
        "ops": ops,
        "compiled": "compiled successfully" in text.lower() or "successfully compiled" in text.lower(),
    }


def run_compiler(model_path: str | Path, out_dir: str | Path, timeout_s: int = 600) -> dict:
    """Run edgetpu_compiler -s when it is on PATH; otherwise say exactly what to run on an x86 host."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    cmd = compiler_command(model_path.name, ".")
    if shutil.which("edgetpu_compiler") is None:
        return {"available": False, "command": " ".join(cmd),
                "note": f"edgetpu_compiler is not on PATH: on an x86-64 Debian/Ubuntu host with the "
                        f"edgetpu-compiler package, run in {out_dir}:  {' '.join(cmd)}"}
    proc = subprocess.run(compiler_command(model_path, out_dir), capture_output=True, text=True, timeout=timeout_s)
    log = proc.stdout + proc.stderr
    (out_dir / f"{model_path.stem}_edgetpu_compiler.txt").write_text(log)
    parsed = parse_compiler_log(log)
    output = out_dir / f"{model_path.stem}_edgetpu.tflite"
    parsed.update({"available": True, "command": " ".join(cmd), "returncode": proc.returncode,
                   "output": output.name if output.is_file() and proc.returncode == 0 else None})
    return parsed


def main(argv: list[str] | None = None) -> int:
    """python -m converters.edgetpu_preflight MODEL.tflite [--json]"""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m converters.edgetpu_preflight MODEL.tflite [--json]")
        return 2
    try:
        report = preflight(args[0])
    except (PreflightError, OSError) as exc:
        print(f"error: {exc}")
        return 1
    if "--json" in args:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    lines = [f"Edge TPU preflight: {report['model']}", report["verdict"],
             f"{'op':28s} {'count':>5s} {'tpu':>5s} {'cpu':>5s}"]
    for op, c in sorted(report["op_counts"].items(), key=lambda kv: -kv[1]["count"]):
        lines.append(f"{op:28s} {c['count']:5d} {c['tpu']:5d} {c['cpu']:5d}")
    for op in report["cpu_ops"]:
        lines.append(f"  CPU op #{op['index']} {op['op']}: {'; '.join(op['reasons'])}")
    for kind, found in report["strided_slice_and_pad"].items():
        for f in found:
            lines.append(f"  {kind} #{f['index']} {f['input']} -> {f['output']} {f['options']} -> {f['placement']}")
    comp = report.get("compiler")
    if comp:
        if comp.get("available"):
            lines.append(f"edgetpu_compiler {comp.get('version')}: {comp.get('subgraphs')} subgraph(s), "
                         f"{comp.get('ops_tpu')} ops on TPU, {comp.get('ops_cpu')} on CPU; on-chip "
                         f"{comp.get('on_chip_memory')}, off-chip {comp.get('off_chip_memory')}")
        else:
            lines.append(comp["note"])
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
