"""Lower every planned op and its fused epilogue to one sparsec node.

    epilogue(MatMul|Gemm(X, W, C?)) -> ai.sparsec::SparseLinear(X, *arrays, bias?, residual?)
    epilogue(Conv(X, W, B?))        -> ai.sparsec::SparseConv(X, *arrays, bias?, residual?)

for every Plan entry, whatever its layout (``dense`` too), as ``sparsec/ops.py`` specifies:
``arrays`` are ``sparsec.formats.pack(w2d, entry.layout).arrays`` in their order, added as
initializers named ``f"{weight}.{layout}.{array}"`` (e.g. ``fc1.weight.csr.values``);
``bias`` is the ``[out]`` sum of the op's own bias and any fused bias Add (an existing
``[out]`` fp32 initializer is reused when it already is that sum); ``residual`` is the
other operand of the fused residual Add. Attributes: layout, out_features, in_features,
entry (the Plan entry's node), rows (the GEMM rows the layout was chosen for; kernels may
store the weight for them), epilogue (+ clip_min/clip_max), and for SparseConv
kernel_shape, strides, pads (top, left, bottom, right), dilations.

The new node is named after the entry, sits where the last fused node was, and its output
takes the name, type and shape of the last fused value, so compiled intermediates can be
compared with the original model by name. Initializers the old nodes used and nobody uses
any more (the original weights) are removed. The model imports ``ai.sparsec`` version 1.

The epilogue is re-matched on the graph and must agree with ``entry.epilogue`` and
``entry.fused_nodes`` (as marked); a mismatch is an error naming the node.
Counts: ``lowered``, and one count per layout kind.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec import ops
from sparsec.formats import pack
from sparsec.layouts import parse_layout
from sparsec.plan import Plan, PlanEntry

from .base import SparsecPass
from .choose_layouts import kernel_rows
from .mark_epilogues import EpilogueMatch, match_epilogue
from .weights import (
    WeightOp, const_array, graph_names, new_initializer, nodes_by_name, unique_name,
    weight_op_for,
)


def array_name(weight: str, layout: str, array: str) -> str:
    return f"{weight}.{layout}.{array}"


def _initializer_for(graph: ir.Graph, names: set[str], name: str, array: np.ndarray) -> ir.Value:
    """The initializer ``name`` holding ``array``: reused when an identical one exists (two
    ops sharing one weight), else new (suffixed when the name is taken by other data)."""
    old = graph.initializers.get(name)
    if old is not None and not old.is_graph_input():
        data = const_array(old)
        if data is not None and data.dtype == array.dtype and np.array_equal(data, array):
            return old
    return new_initializer(graph, unique_name(names, name), array)


def _bias_value(graph: ir.Graph, names: set[str], m: EpilogueMatch, wop: WeightOp,
                entry: PlanEntry) -> ir.Value:
    bias = m.bias_step()
    if len(bias.sources) == 1 and (wop.op != "Gemm" or bias.sources[0].node is not wop.node
                                   or wop.node.attributes.get_float("beta", 1.0) == 1.0):
        src = bias.sources[0]
        value = src.node.inputs[src.index]
        data = const_array(value)
        if (value.is_initializer() and data is not None and data.dtype == np.float32
                and data.shape == bias.bias.shape):
            return value
    return new_initializer(graph, unique_name(names, f"{entry.node}.fused_bias"), bias.bias)


def _check_match(entry: PlanEntry, m: EpilogueMatch) -> None:
    marked = ([s.op for s in entry.epilogue], list(entry.fused_nodes))
    found = ([s.op for s in m.epilogue], [n.name for n in m.nodes])
    if marked != found:
        raise ValueError(f"node {entry.node}: the graph's epilogue {found} differs from the "
                         f"marked one {marked}")


def sparse_node(entry: PlanEntry, wop: WeightOp, inputs: list[ir.Value | None],
                w_shape: tuple[int, int]) -> ir.Node:
    """The SparseLinear / SparseConv node of one entry (attributes per sparsec/ops.py)."""
    attrs: list[ir.Attr] = [
        ir.AttrString("layout", entry.layout),
        ir.AttrInt64("out_features", w_shape[0]),
        ir.AttrInt64("in_features", w_shape[1]),
        ir.AttrString("entry", entry.node),
        ir.AttrInt64("rows", kernel_rows(wop)),
        ir.AttrStrings("epilogue", [s.op for s in entry.epilogue]),
    ]
    for key, value in ops.epilogue_attrs(entry.epilogue).items():
        if key != "epilogue":
            attrs.append(ir.AttrFloat32(key, float(value)))
    op_type = ops.LINEAR
    if wop.is_conv:
        op_type = ops.CONV
        c = wop.conv_attrs()
        attrs += [ir.AttrInt64s("kernel_shape", list(c.kernel_shape)),
                  ir.AttrInt64s("strides", list(c.strides)),
                  ir.AttrInt64s("pads", list(c.pads)),
                  ir.AttrInt64s("dilations", list(c.dilations))]
    return ir.Node(ops.DOMAIN, op_type, inputs, attrs, name=entry.node)


class LowerSparseOpsPass(SparsecPass):
    """Every planned op + epilogue -> one ai.sparsec node (see the module docstring)."""

    def __init__(self, plan: Plan, fuse: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.fuse = fuse

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        by_name = nodes_by_name(graph)
        for entry in self.plan.entries:
            with self.at(entry.node, entry.weight):
                self._lower(graph, entry, weight_op_for(graph, entry.node, by_name))
            self.counts["lowered"] += 1
            self.counts[parse_layout(entry.layout).kind] += 1
        if self.counts["lowered"]:
            model.opset_imports[ops.DOMAIN] = 1
        return self.counts["lowered"] > 0

    def _lower(self, graph: ir.Graph, entry: PlanEntry, wop: WeightOp) -> None:
        m = match_epilogue(wop, self.fuse)
        _check_match(entry, m)
        names = graph_names(graph)
        w2d = wop.w2d()
        packed = pack(w2d, entry.layout)
        inputs: list[ir.Value | None] = [wop.x]
        for key, arr in packed.arrays.items():
            inputs.append(_initializer_for(graph, names, array_name(entry.weight, packed.layout,
                                                                    key), arr))
        if m.bias_step() is not None:
            inputs.append(_bias_value(graph, names, m, wop, entry))
        if m.residual() is not None:
            inputs.append(m.residual())
        node = sparse_node(entry, wop, inputs, w2d.shape)

        old_nodes = [wop.node, *m.nodes]
        old_consts = [v for n in old_nodes for v in n.inputs
                      if v is not None and v.is_initializer()]
        last = m.output.producer()
        ir.convenience.replace_nodes_and_values(
            graph, last, old_nodes, [node], [m.output], [node.outputs[0]])
        for v in old_consts:
            if not v.uses() and not v.is_graph_input() and not v.is_graph_output() \
                    and graph.initializers.get(v.name) is v:
                graph.initializers.pop(v.name)
