"""TFLite flatbuffers as object trees: the one reader and writer of .tflite files on the host.

Used by the Edge TPU preflight (op by op), the fp16-weight rewrite and convert's finalize step (names,
signature, input quantization). The schema classes come from LiteRT's generated module (TensorFlow's copy
on older hosts); `unpack` gives a mutable `schema.ModelT`, `pack` writes it back with the TFL3 identifier.
"""

from __future__ import annotations

from converters.errors import TFLiteFormatError

FILE_IDENTIFIER = b"TFL3"


def schema():
    """The generated TFLite schema module (ModelT, TensorType, BuiltinOperator, ...)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - older hosts
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def is_tflite(buf: bytes) -> bool:
    """True when the bytes carry the TFLite file identifier (bytes 4..8 = TFL3)."""
    return len(buf) >= 8 and bytes(buf[4:8]) == FILE_IDENTIFIER


def unpack(buf: bytes):
    """The flatbuffer as a mutable object tree (schema.ModelT); the caller checks `is_tflite` first."""
    return schema().ModelT.InitFromPackedBuf(bytearray(buf), 0)


def read_tflite(buf: bytes):
    """The flatbuffer as an object tree (schema.ModelT); one subgraph, as our converter writes."""
    if not is_tflite(buf):
        raise TFLiteFormatError("not a TFLite flatbuffer (no TFL3 file identifier)")
    model = unpack(buf)
    if len(model.subgraphs) != 1:
        raise TFLiteFormatError(f"expected one subgraph, found {len(model.subgraphs)}")
    return model


def pack(model, size_hint: int = 0) -> bytes:
    """Serialise a schema.ModelT back to .tflite bytes (with the TFL3 identifier)."""
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def enum_names(enum_class) -> dict[int, str]:
    """value -> name of a generated enum class (schema.TensorType, schema.BuiltinOperator, ...)."""
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def builtin_code(operator_code) -> int:
    """An operator code's builtin op (newer files use builtinCode, older ones deprecatedBuiltinCode)."""
    return max(operator_code.builtinCode, operator_code.deprecatedBuiltinCode)
