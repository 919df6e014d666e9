"""Which ONNX ops the TVM backend lowers, and a refusal that helps for the rest.

An op is supported when TVM's ONNX importer converts it and it is a standard (default-
domain) ONNX op. TVM keys a few com.microsoft contrib converters by their bare name; those
are not claimed, and opset-23 ``Attention`` (same name as the contrib op, other semantics)
is refused rather than sent to the wrong converter. A few attribute-level cases TVM gets
wrong are refused too (see ``_node_problem``). The hint names a semantic alternative where
one is known, else the closest name among the supported ops.
"""

from __future__ import annotations

from difflib import get_close_matches

import onnx
from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx

from sparsec import ops
from sparsec.errors import UnsupportedOpError

# Names TVM's importer maps to com.microsoft semantics.
CONTRIB_COLLISIONS = {"Attention"}

# What to use instead, for ops people commonly meet.
ALTERNATIVES = {
    "Swish": "Sigmoid then Mul (x * Sigmoid(x))",
    "Mish": "Softplus, Tanh and Mul",
    "Celu": "Elu",
    "Attention": "MatMul, Softmax and MatMul (export attention unfused)",
    "SkipLayerNormalization": "Add then LayerNormalization",
    "BiasGelu": "Add then Gelu",
    "FastGelu": "Gelu",
    "FusedMatMul": "MatMul",
    "FusedConv": "Conv then the activation",
    "RotaryEmbedding": "Mul, Slice, Neg and Concat (export it unfused)",
    "LSTM": "nothing yet: recurrent ops are not supported",
    "GRU": "nothing yet: recurrent ops are not supported",
    "RNN": "nothing yet: recurrent ops are not supported",
}


def supported_ops() -> set[str]:
    tvm_ops = tvm_onnx._get_convert_map()  # noqa: SLF001 - TVM's own table
    return {op for op in tvm_ops if onnx.defs.has(op) and op not in CONTRIB_COLLISIONS} | {"Constant"}


def _used(proto: onnx.ModelProto) -> set[str]:
    return {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}


def _node_problem(node: onnx.NodeProto, used: set[str]) -> str | None:
    """Attribute-level cases TVM's importer computes wrongly; None when the node is fine."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "LayerNormalization" and any(o and o in used for o in node.output[1:]):
        return "its optional Mean / InvStdDev outputs are used (TVM returns placeholders)"
    if node.op_type == "BatchNormalization" and attrs.get("training_mode", 0):
        return "training_mode=1 (sparsec compiles inference graphs)"
    return None


def check_supported(proto: onnx.ModelProto) -> None:
    """UnsupportedOpError naming the op, the node and an alternative, for the first node
    this backend cannot lower."""
    known = supported_ops()
    used = _used(proto)
    for node in proto.graph.node:
        if node.domain == ops.DOMAIN:
            continue
        foreign = node.domain not in ("", "ai.onnx")
        name = f"{node.domain}::{node.op_type}" if foreign else node.op_type
        if foreign or node.op_type not in known:
            alt = ALTERNATIVES.get(node.op_type)
            if alt is None:
                near = get_close_matches(node.op_type, sorted(known - {node.op_type}), n=1)
                alt = near[0] if near else None
            hint = f"; nearest supported alternative: {alt}" if alt else ""
            raise UnsupportedOpError(
                f"op {name} (node '{node.name}') is not supported on this target{hint}")
        problem = _node_problem(node, used)
        if problem:
            raise UnsupportedOpError(f"op {name} (node '{node.name}') is not supported here: "
                                     f"{problem}")
