"""ONNX front door: read, validate, make shapes concrete, hand over an ``onnx_ir.Model``.

Every way an ONNX input can be bad ends here in one ModelError line naming the file and
the problem: missing, empty, truncated or not ONNX, failing the checker, opset out of
range, control flow, non-float inputs or weights, symbolic dims without ``--input-shape``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from sparsec.errors import ModelError, UsageError

# Default-domain opsets we accept: TVM's importer and onnxruntime both cover this range.
MIN_OPSET, MAX_OPSET = 11, 23
CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}
FLOAT = onnx.TensorProto.FLOAT
# Integer tensors are fine where they carry shapes, axes or indices, not as weights/inputs.
_INT_OK = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT8,
           onnx.TensorProto.INT16, onnx.TensorProto.BOOL, onnx.TensorProto.UINT8}


def read_onnx(source: Any) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, source.graph.name or "model"
    if isinstance(source, ir.Model):
        return ir.to_proto(source), source.graph.name or "model"
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "model"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        name = path.name
        if not path.exists():
            raise ModelError(f"model file '{path}' does not exist")
        if path.is_dir():
            raise ModelError(f"model path '{path}' is a directory, not an ONNX file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file '{path}': {exc.strerror}") from None
    else:
        raise UsageError(
            f"cannot compile a {type(source).__name__}; give an ONNX path, bytes, "
            "onnx.ModelProto, torch nn.Module, ExportedProgram or .pt2 path"
        )
    if not data:
        raise ModelError(f"model file '{name}' is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(f"'{name}' is not a valid ONNX model (truncated or not ONNX)") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"'{name}' is not a valid ONNX model (no graph)")
    if proto.graph.initializer and any(t.data_location == 1 for t in proto.graph.initializer):
        raise ModelError(f"'{name}' keeps weights in external data files; inline them first")
    return proto, name


def _check(proto: onnx.ModelProto, name: str) -> None:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(
            f"'{name}' uses opset {opset}; sparsec supports opsets {MIN_OPSET} to {MAX_OPSET} "
            "(convert it with onnx.version_converter)"
        )
    for node in proto.graph.node:
        if node.op_type in CONTROL_FLOW:
            raise ModelError(
                f"'{name}' has control flow ({node.op_type} node '{node.name}'); "
                "sparsec compiles straight-line graphs only"
            )
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise ModelError(f"'{name}' fails the ONNX checker: {first}") from None
    for init in proto.graph.initializer:
        if init.data_type != FLOAT and init.data_type not in _INT_OK:
            dt = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            raise ModelError(
                f"'{name}': initializer '{init.name}' has dtype {dt}; sparsec compiles float32 "
                "models (cast the model to float32 first)"
            )


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _concretize(proto: onnx.ModelProto, name: str, shapes: dict[str, tuple[int, ...]]) -> None:
    inputs = _graph_inputs(proto)
    known = {i.name for i in inputs}
    for key in shapes:
        if key not in known:
            raise UsageError(
                f"--input-shape names '{key}', but '{name}' has inputs: {', '.join(sorted(known))}"
            )
    for vi in inputs:
        tt = vi.type.tensor_type
        if tt.elem_type != FLOAT:
            dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else "unknown"
            raise ModelError(
                f"'{name}': input '{vi.name}' has dtype {dt}; sparsec compiles float32 inputs"
            )
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in tt.shape.dim] if tt.HasField("shape") else None
        given = shapes.get(vi.name)
        if given is not None:
            if dims is not None and len(dims) != len(given):
                raise UsageError(
                    f"--input-shape {vi.name}={'x'.join(map(str, given))} has rank {len(given)}, "
                    f"but input '{vi.name}' has rank {len(dims)} ({_fmt(dims)})"
                )
            for have, want in zip(dims or [], given):
                if isinstance(have, int) and have > 0 and have != want:
                    raise UsageError(
                        f"--input-shape {vi.name}={'x'.join(map(str, given))} contradicts the "
                        f"model's fixed shape {_fmt(dims)}"
                    )
            tt.shape.Clear()
            for d in given:
                tt.shape.dim.add().dim_value = d
        elif dims is None or any(not isinstance(d, int) or d <= 0 for d in dims):
            raise ModelError(
                f"input '{vi.name}' has no concrete shape ({_fmt(dims)}); give one with "
                f"--input-shape {vi.name}=" + "x".join("N" if not isinstance(d, int) or d <= 0
                                                         else str(d) for d in (dims or ["N"]))
                + f" (API: input_shapes={{'{vi.name}': (...)}})"
            )


def _fmt(dims: list | None) -> str:
    return "unknown rank" if dims is None else "[" + ", ".join(map(str, dims)) + "]"


def load_onnx(source: Any, input_shapes: dict[str, tuple[int, ...]]):
    from sparsec.frontend import Captured

    proto, name = read_onnx(source)
    _check(proto, name)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never mutate the caller's
    _concretize(proto, name, input_shapes)
    # Clear stale intermediate shapes so inference recomputes them from the concrete inputs.
    del proto.graph.value_info[:]
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"'{name}': shapes do not fit: {first}") from None
    reference = onnx.ModelProto.FromString(proto.SerializeToString())
    return Captured(model=ir.from_proto(proto), name=name, reference=reference, kind="onnx",
                    onnx_proto=reference)
