"""Weight-bearing ops: which nodes carry a constant weight, and that weight as ``[out, in]``.

A node is a *weight op* (it gets a Plan entry) when:

- ``MatMul(X, W)`` with W a constant 2-D fp32 initializer ``[in, out]``: ``w2d = Wᵀ``;
- ``Gemm(X, B, C?)`` with B constant 2-D fp32 and ``transA = 0``: ``w2d = alpha · B``
  (``transB = 1``, B is ``[out, in]``) or ``alpha · Bᵀ`` (``transB = 0``); its bias is
  ``beta · C`` when C is a constant per-output vector (scalar, ``[out]`` or ``[1, out]``);
- ``Conv(X, W, B?)`` on NCHW (2-D) with W constant fp32 ``[O, C, kh, kw]`` and
  ``group = 1``: ``w2d = W.reshape(O, C*kh*kw)``; its bias is B.

Depthwise and grouped convolutions are not planned: TVM schedules them well as they are.
``match_weight_op`` returns the reason a node is not a weight op, naming it.

"Constant" means an initializer that is not also a graph input (a graph input can be fed
at run time) or the output of a ``Constant`` node.

The helpers here also name things: unnamed nodes get stable unique names (``name_nodes``),
and new initializers get names that do not collide (``unique_name``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.plan import ConvAttrs

LINEAR_OPS = ("MatMul", "Gemm")
CONV_OP = "Conv"


# --- constants and initializers -------------------------------------------------------------


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant data as numpy, or None when it is not a compile-time constant."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def graph_names(graph: ir.Graph) -> set[str]:
    """Every value and node name in use in the graph (for collision-free new names)."""
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    for node in graph:
        if node.name:
            names.add(node.name)
        names.update(v.name for v in node.outputs if v.name)
    return names


def unique_name(taken: set[str], base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first not in ``taken`` (which is updated)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def name_nodes(graph: ir.Graph) -> int:
    """Give every unnamed (or duplicately named) node a stable unique name,
    ``<op_type>_<position>``; returns how many nodes were named."""
    seen: set[str] = set()
    taken = {n.name for n in graph if n.name}
    count = 0
    for i, node in enumerate(graph):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        node.name = unique_name(taken, f"{node.op_type}_{i}")
        seen.add(node.name)
        count += 1
    return count


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer called exactly ``name``."""
    array = np.ascontiguousarray(array)
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def set_const_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray,
                    name_hint: str) -> ir.Value:
    """Make ``node.inputs[index]`` the constant ``array``.

    The existing initializer is updated in place (keeping its name) when this node is its
    only user; otherwise (shared, absent, or a Constant node) a new initializer named after
    ``name_hint`` is created. Arrays already in the model are never written to.
    """
    old = node.inputs[index] if index < len(node.inputs) else None
    array = np.ascontiguousarray(array)
    if (old is not None and old.is_initializer() and not old.is_graph_input()
            and not old.is_graph_output() and len(old.uses()) == 1):
        old.const_value = ir.tensor(array, name=old.name)
        old.shape = ir.Shape(array.shape)
        old.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        return old
    value = new_initializer(graph, unique_name(graph_names(graph), name_hint), array)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    return value


# --- weight ops -----------------------------------------------------------------------------


@dataclass
class WeightOp:
    """A weight-bearing node and how to read/write its weight as ``[out, in]``."""

    node: ir.Node
    weight: ir.Value  # the constant weight input (initializer)

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def is_conv(self) -> bool:
        return self.node.op_type == CONV_OP

    @property
    def x(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def y(self) -> ir.Value:
        return self.node.outputs[0]

    def w2d(self) -> np.ndarray:
        """The weight as float32 ``[out, in]`` (Gemm: alpha folded in)."""
        w = const_array(self.weight).astype(np.float32, copy=False)
        if self.op == "MatMul":
            return np.ascontiguousarray(w.T)
        if self.op == "Gemm":
            alpha = self.node.attributes.get_float("alpha", 1.0)
            w = w if self.node.attributes.get_int("transB", 0) else w.T
            return np.ascontiguousarray(w * np.float32(alpha) if alpha != 1.0 else w)
        return np.ascontiguousarray(w.reshape(w.shape[0], -1))

    @property
    def out_features(self) -> int:
        shape = self.weight.const_value.shape
        if self.op == "MatMul":
            return shape[1]
        if self.op == "Gemm":
            return shape[0] if self.node.attributes.get_int("transB", 0) else shape[1]
        return shape[0]

    def bias(self) -> np.ndarray | None:
        """The op's own bias as float32 ``[out]`` (Gemm: ``beta · C``; Conv: ``B``), or None."""
        if self.op == "MatMul" or len(self.node.inputs) < 3 or self.node.inputs[2] is None:
            return None
        b = const_array(self.node.inputs[2]).astype(np.float32)
        if self.op == "Gemm":
            b = np.broadcast_to(b.reshape(-1), (self.out_features,))
            beta = self.node.attributes.get_float("beta", 1.0)
            b = b * np.float32(beta)
        return np.ascontiguousarray(b, dtype=np.float32)

    def set_w2d(self, graph: ir.Graph, w2d: np.ndarray) -> None:
        """Store a new ``[out, in]`` weight back in the op's own orientation."""
        w2d = np.ascontiguousarray(w2d, dtype=np.float32)
        name = self.weight.name or f"{self.node.name}.weight"
        if self.op == "MatMul":
            stored = w2d.T
        elif self.op == "Gemm":
            self.node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
            stored = w2d if self.node.attributes.get_int("transB", 0) else w2d.T
        else:
            kh, kw = self.weight.const_value.shape[2:]
            stored = w2d.reshape(w2d.shape[0], -1, kh, kw)
        self.weight = set_const_input(graph, self.node, 1, stored, name)

    def set_bias(self, graph: ir.Graph, bias: np.ndarray) -> None:
        """Store a new ``[out]`` bias as the op's own bias input (Gemm: beta becomes 1)."""
        if self.op == "MatMul":
            raise ValueError(f"node {self.node.name}: MatMul has no bias input")
        if self.op == "Gemm":
            self.node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        set_const_input(graph, self.node, 2, np.asarray(bias, np.float32),
                        f"{self.node.name}.bias")

    def conv_attrs(self) -> ConvAttrs | None:
        return conv_attrs(self.node) if self.is_conv else None


def _is_fp32_const(value: ir.Value | None, rank: int) -> str | None:
    if value is None:
        return "has no weight input"
    if value.is_graph_input():
        return f"weight {value.name} is a graph input, not a constant"
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return f"weight {value.name} is not a constant"
    if tensor.dtype != ir.DataType.FLOAT:
        return f"weight {value.name} is {tensor.dtype.name}, not FLOAT"
    if len(tensor.shape) != rank:
        return f"weight {value.name} has rank {len(tensor.shape)}, expected {rank}"
    return None


def _gemm_bias_fail(node: ir.Node, out: int) -> str | None:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    c = const_array(node.inputs[2])
    if c is None:
        return "C is not a constant"
    per_output = c.size in (1, out) and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1)
    if not per_output or (c.size != 1 and c.shape[-1] != out):
        return f"C of shape {list(c.shape)} is not a per-output bias"
    return None


def match_weight_op(node: ir.Node) -> WeightOp | str:
    """The node as a WeightOp, or a sentence saying why it is not one (naming the node)."""
    where = f"{node.op_type} node {node.name}"
    if node.domain not in ("", "ai.onnx") or node.op_type not in (*LINEAR_OPS, CONV_OP):
        return f"{where} is not a weight-bearing op"
    if len(node.inputs) < 2:
        return f"{where} has fewer than 2 inputs"
    w = node.inputs[1]
    if node.op_type == "MatMul":
        why = _is_fp32_const(w, 2)
    elif node.op_type == "Gemm":
        why = _is_fp32_const(w, 2)
        if why is None and node.attributes.get_int("transA", 0):
            why = "transA=1 is not planned"
        if why is None:
            shape = ir.convenience.get_const_tensor(w).shape
            why = _gemm_bias_fail(node, shape[0 if node.attributes.get_int("transB", 0) else 1])
    else:
        why = _is_fp32_const(w, 4)
        if why is None and node.attributes.get_int("group", 1) != 1:
            why = f"group={node.attributes.get_int('group', 1)} (grouped/depthwise stays with TVM)"
        if why is None and len(node.inputs) >= 3 and node.inputs[2] is not None:
            if const_array(node.inputs[2]) is None:
                why = "bias B is not a constant"
        if why is None:
            try:
                conv_attrs(node)
            except ValueError as exc:
                why = str(exc)
    if why:
        return f"{where}: {why}"
    if w.const_value is None:  # a Constant node's output: not an initializer
        return f"{where}: weight {w.name} is a Constant node output, not an initializer"
    return WeightOp(node, w)


def weight_ops(graph: ir.Graph) -> list[WeightOp]:
    """Every weight op of the graph, in graph order."""
    found = (match_weight_op(n) for n in graph)
    return [w for w in found if isinstance(w, WeightOp)]


def nodes_by_name(graph: ir.Graph) -> dict[str, ir.Node]:
    return {n.name: n for n in graph if n.name}


def weight_op_for(graph: ir.Graph, node_name: str,
                  by_name: dict[str, ir.Node] | None = None) -> WeightOp:
    """The WeightOp of a Plan entry's node; ValueError if it is gone or no longer matches."""
    node = (by_name if by_name is not None else nodes_by_name(graph)).get(node_name)
    if node is None:
        raise ValueError(f"node {node_name} is not in the graph")
    found = match_weight_op(node)
    if isinstance(found, str):
        raise ValueError(found)
    return found


# --- conv attributes ------------------------------------------------------------------------


def static_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    return tuple(int(d) for d in value.shape)


def conv_attrs(node: ir.Node) -> ConvAttrs:
    """A 2-D Conv's attributes with explicit pads (top, left, bottom, right); resolves
    ``auto_pad`` SAME_* from the input shape. ValueError when not a 2-D conv."""
    w = ir.convenience.get_const_tensor(node.inputs[1])
    if w is None or len(w.shape) != 4:
        raise ValueError("not a 2-D convolution")
    kernel = tuple(node.attributes.get_ints("kernel_shape", tuple(w.shape[2:])))
    strides = tuple(node.attributes.get_ints("strides", (1, 1)))
    dilations = tuple(node.attributes.get_ints("dilations", (1, 1)))
    pads = tuple(node.attributes.get_ints("pads", (0, 0, 0, 0)))
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        x = static_dims(node.inputs[0])
        if x is None or len(x) != 4:
            raise ValueError(f"auto_pad={auto_pad} needs a static input shape")
        pads_list = [0, 0, 0, 0]
        for i in range(2):
            out = -(-x[2 + i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - x[2 + i])
            small, big = total // 2, total - total // 2
            upper = auto_pad == "SAME_UPPER"
            pads_list[i], pads_list[i + 2] = (small, big) if upper else (big, small)
        pads = tuple(pads_list)
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise ValueError("not a 2-D convolution")
    return ConvAttrs(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                     group=node.attributes.get_int("group", 1))


def is_pointwise(attrs: ConvAttrs | None) -> bool:
    """A 1x1 conv with stride 1, no padding and group 1 (``ConvAttrs.pointwise``)."""
    return attrs is not None and attrs.pointwise
