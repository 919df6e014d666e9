"""Make structured pruning physical: drop output channels whose weight rows are all zero.

A planned op ``A`` whose weight row ``o`` is all zero outputs, in channel ``o``, the
constant ``k[o] = epilogue(0)[o]`` (its bias through its fused epilogue: e.g.
``relu(bias[o])``; 0 when it has no bias). When every use of A's fused output ``v`` is the
input X of another planned op ``B`` of the same family that can absorb a constant channel
(MatMul/Gemm after MatMul/Gemm; a 1x1, unpadded, group-1 Conv after a Conv):

    B(epilogue_A(A(x))) -> B'(epilogue_A'(A'(x)))   with
    W_A' = W_A[keep]      bias_A' = bias_A[keep]
    W_B' = W_B[:, keep]   bias_B' = bias_B + W_B[:, zero] @ k[zero]

A's own bias and any fused bias Add are sliced; B's bias is its own bias input, else its
fused bias Add's constant, else a new one (Gemm: input C; Conv: input B; MatMul: a new
``Add`` right after it, which then joins its epilogue and takes over its output's name so
the value still equals the original model's). Values between A and B get the shrunk
channel count in their shapes.

Left alone (the sparse kernels skip empty rows anyway): a residual in A's epilogue (the
channel is not constant), ``v`` a graph output or used by anything else, or all rows zero.
Records ``entry.removed_rows`` and refreshes the stats of A and every B.
Counts: ``ops`` (A's shrunk), ``removed_rows``, ``biases_created``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from sparsec.ops import apply_epilogue
from sparsec.plan import Plan

from .analyze_sparsity import refresh_entry
from .base import SparsecPass
from .mark_epilogues import match_epilogue
from .weights import (
    WeightOp, const_array, graph_names, new_initializer, nodes_by_name, set_const_input,
    unique_name, weight_op_for,
)

logger = logging.getLogger(__name__)


def _absorbs(a: WeightOp, b: WeightOp) -> bool:
    if a.is_conv != b.is_conv:
        return False
    if not b.is_conv:
        return True
    attrs = b.conv_attrs()
    return attrs.kernel_shape == (1, 1) and attrs.pads == (0, 0, 0, 0) and attrs.group == 1


def match_shrink(graph: ir.Graph, plan: Plan, a: WeightOp, fuse: bool,
                 by_name: dict[str, ir.Node]) -> tuple[list[WeightOp], np.ndarray] | str:
    """(the absorbing consumers, the zero-row mask) or why A cannot be shrunk."""
    zero = ~np.any(a.w2d() != 0, axis=1)
    if not zero.any():
        return f"node {a.node.name}: no all-zero output rows"
    if zero.all():
        return f"node {a.node.name}: every output row is zero"
    m = match_epilogue(a, fuse)
    if m.residual() is not None:
        return f"node {a.node.name}: a residual add in its epilogue"
    v = m.output
    if v.is_graph_output() or not v.uses():
        return f"node {a.node.name}: output {v.name} is a graph output or unused"
    planned = {e.node for e in plan.entries}
    consumers: list[WeightOp] = []
    for use in v.uses():
        if use.idx != 0 or use.node.name not in planned:
            return f"node {a.node.name}: {use.node.op_type} {use.node.name} cannot absorb it"
        b = weight_op_for(graph, use.node.name, by_name)
        if not _absorbs(a, b):
            return f"node {a.node.name}: {use.node.op_type} {use.node.name} cannot absorb it"
        consumers.append(b)
    return consumers, zero


def add_bias(graph: ir.Graph, b: WeightOp, delta: np.ndarray, fuse: bool) -> bool:
    """``bias_B += delta``; True when a new bias had to be created."""
    own = b.bias()
    if own is not None:
        b.set_bias(graph, own + delta)
        return False
    step = match_epilogue(b, fuse).bias_step()
    if step is not None:  # a fused bias Add with a constant operand
        src = step.sources[0]
        c = const_array(src.node.inputs[src.index]).astype(np.float32)
        if src.channel_axis < 0:  # a scalar: make it a full per-channel vector
            shape = (-1, 1, 1) if b.is_conv else (-1,)
            c = np.full(delta.shape, c.reshape(-1)[0], np.float32).reshape(shape)
            src = type(src)(src.node, src.index, 0)
        shape = [1] * c.ndim
        shape[src.channel_axis] = -1
        set_const_input(graph, src.node, src.index, c + delta.reshape(shape),
                        f"{src.node.name}.bias")
        return False
    if b.op != "MatMul":
        b.set_bias(graph, delta)
        return True
    _insert_bias_add(graph, b, delta)
    return True


def _insert_bias_add(graph: ir.Graph, b: WeightOp, delta: np.ndarray) -> None:
    """MatMul(x, W) -> Add(MatMul(x, W), delta); the Add's output takes the MatMul output's
    name, shape and graph-output slots."""
    names = graph_names(graph)
    y = b.y
    bias = new_initializer(graph, unique_name(names, f"{b.node.name}.bias"), delta)
    add = ir.node("Add", [y, bias], name=unique_name(names, f"{b.node.name}.bias_add"))
    out = add.outputs[0]
    for use in list(y.uses()):
        if use.node is not add:
            use.node.replace_input_with(use.idx, out)
    for i, g_out in enumerate(graph.outputs):
        if g_out is y:
            graph.outputs[i] = out
    name = y.name
    y.name = unique_name(names, f"{name}.matmul")
    out.name, out.shape, out.type = name, y.shape, y.type
    graph.insert_after(b.node, add)


def _slice_channels(value: ir.Value, axis: int, n: int) -> None:
    if value.shape is not None:
        dims = list(value.shape.dims)
        dims[axis] = n
        value.shape = ir.Shape(dims)


class ShrinkZeroChannelsPass(SparsecPass):
    """Remove all-zero output channels absorbed by the next planned ops (see module doc)."""

    def __init__(self, plan: Plan, fuse: bool = True, enabled: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.fuse = fuse
        self.enabled = enabled  # CompileOptions.shrink_zero_channels

    def apply(self, model: ir.Model) -> bool:
        if not self.enabled:
            return False
        graph = model.graph
        for entry in self.plan.entries:
            by_name = nodes_by_name(graph)
            with self.at(entry.node, entry.weight):
                a = weight_op_for(graph, entry.node, by_name)
                found = match_shrink(graph, self.plan, a, self.fuse, by_name)
                if isinstance(found, str):
                    logger.debug("not shrunk: %s", found)
                    continue
                consumers, zero = found
                self._shrink(graph, a, consumers, zero)
            entry.removed_rows += int(zero.sum())
            refresh_entry(entry, a)
            for b in consumers:
                e = self.plan.by_node(b.node.name)
                refresh_entry(e, b)
                m = match_epilogue(b, self.fuse)
                e.epilogue, e.fused_nodes = m.epilogue, [n.name for n in m.nodes]
            self.counts["ops"] += 1
            self.counts["removed_rows"] += int(zero.sum())
        return self.counts["ops"] > 0

    def _shrink(self, graph: ir.Graph, a: WeightOp, consumers: list[WeightOp],
                zero: np.ndarray) -> None:
        keep = ~zero
        m = match_epilogue(a, self.fuse)
        bias = m.bias()
        acc = np.zeros((1, len(zero)), np.float32)
        k = apply_epilogue(acc, m.epilogue, bias=bias)[0].astype(np.float64)
        for b in consumers:
            w2 = b.w2d()
            delta = (w2[:, zero].astype(np.float64) @ k[zero]).astype(np.float32)
            b.set_w2d(graph, w2[:, keep])
            if np.any(delta != 0):
                self.counts["biases_created"] += add_bias(graph, b, delta, self.fuse)
        own = a.bias()  # read before the weight shrinks (Gemm's bias broadcasts to it)
        a.set_w2d(graph, a.w2d()[keep])
        step = m.bias_step()
        for src in step.sources if step is not None else []:
            if src.node is a.node:
                a.set_bias(graph, own[keep])
            elif src.channel_axis >= 0:
                c = const_array(src.node.inputs[src.index])
                set_const_input(graph, src.node, src.index,
                                np.compress(keep, c, axis=src.channel_axis),
                                f"{src.node.name}.bias")
        axis = 1 if a.is_conv else -1
        n = int(keep.sum())
        _slice_channels(a.y, axis, n)
        for node in m.nodes:
            _slice_channels(node.outputs[0], axis, n)
