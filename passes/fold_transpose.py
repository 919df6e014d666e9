"""Fold transposes of constants into the constants; read transposed activations in place.

``Transpose(W) -> W'`` when W is a constant (initializer, not a graph input) and the
Transpose's output is not a graph output; ``W' = W.transpose(perm)`` (``perm`` defaults to
reversing the axes). This covers ``MatMul(x, Transpose(W))``, the way some exporters write
``nn.Linear``: the MatMul then sees a constant ``[in, out]`` weight and gets planned.

When W has no other user its data is replaced in place and it keeps its name (so reports
show the PyTorch parameter name, e.g. ``fc1.weight``, now stored transposed); otherwise a
new initializer ``<W>.T`` is created and W stays for its other users.

``TransposedMatVecPass`` (run after lowering): ``MatMul(a, Transpose(b))`` where ``a`` has
one row becomes ``b`` times ``a`` as a column, so no transposed copy of ``b`` is made
(decode attention's ``q . k^T``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import SparsecPass
from .weights import const_array, graph_names, new_initializer, static_dims, unique_name


def match_const_transpose(node: ir.Node) -> str | None:
    """Why ``node`` is not a foldable Transpose of a constant (None when it is)."""
    if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} node {node.name} is not a Transpose"
    src = node.inputs[0]
    if src is None or not src.is_initializer() or src.is_graph_input():
        return f"Transpose node {node.name}: input is not a constant initializer"
    if node.outputs[0].is_graph_output():
        return f"Transpose node {node.name}: output {node.outputs[0].name} is a graph output"
    return None


class FoldTransposePass(SparsecPass):
    """``Transpose(W) -> W.transpose(perm)`` for constant W; counts["folded"]."""

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        for node in list(graph):
            if match_const_transpose(node) is not None:
                continue
            src = node.inputs[0]
            with self.at(node.name, src.name):
                data = const_array(src)
                perm = node.attributes.get_ints("perm", tuple(reversed(range(data.ndim))))
                folded = np.ascontiguousarray(np.transpose(data, perm))
                out = node.outputs[0]
                if len(src.uses()) == 1 and not src.is_graph_output():
                    src.const_value = ir.tensor(folded, name=src.name)
                    src.shape = ir.Shape(folded.shape)
                    target = src
                else:
                    name = unique_name(graph_names(graph), f"{src.name}.T")
                    target = new_initializer(graph, name, folded)
                out.replace_all_uses_with(target)
                graph.remove(node, safe=True)
                self.counts["folded"] += 1
        return self.counts["folded"] > 0


def match_transposed_matvec(node: ir.Node) -> tuple[ir.Node, tuple[int, ...]] | str:
    """(the Transpose, a's shape) when ``node`` is ``MatMul(a, Transpose(b))`` where the
    Transpose swaps the last two axes, a has a single row and a and b have the same static
    batch dims; otherwise why not."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} node {node.name} is not a MatMul"
    a, bt = node.inputs
    tr = bt.producer() if bt is not None else None
    if tr is None or tr.op_type != "Transpose" or tr.domain not in ("", "ai.onnx"):
        return f"MatMul node {node.name}: B is not a Transpose"
    b = tr.inputs[0]
    dims = [static_dims(v) for v in (a, b)]
    if dims[0] is None or dims[1] is None:
        return f"MatMul node {node.name}: shapes are not static"
    (sa, sb), rank = dims, len(dims[0])
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    if rank < 2 or len(sb) != rank or list(tr.attributes.get_ints("perm", swap)) != swap:
        return f"MatMul node {node.name}: the Transpose does not swap the last two axes"
    if sa[-2] != 1 or sa[:-2] != sb[:-2] or sa[-1] != sb[-1]:
        return f"MatMul node {node.name}: A has more than one row or other batch dims"
    if node.outputs[0].is_graph_output():
        return f"MatMul node {node.name}: its output is a graph output"
    return tr, sa


class TransposedMatVecPass(SparsecPass):
    """``MatMul(a, Transpose(b))`` with a single row of ``a`` ->
    ``Reshape(MatMul(b, Reshape(a, [.., K, 1])), [.., 1, N])``; counts["rewritten"].

    A single row times a transposed matrix is that matrix times a column, and a column or
    a row of one element is a reshape: the product reads ``b`` as it lies. This is decode
    attention's ``q . k^T``: without the rewrite ``k`` (every past position) is transposed
    into a new tensor first. GPT-2 small, one step with 128 past positions: the 12
    transposes took 0.95 ms (80 us each for 12 x 129 x 64 floats).
    """

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        for node in list(graph):
            found = match_transposed_matvec(node)
            if isinstance(found, str):
                continue
            tr, sa = found
            b = tr.inputs[0]
            with self.at(node.name):
                taken = graph_names(graph)
                batch, k = list(sa[:-2]), sa[-1]
                n = int(b.shape[-2])
                col = new_initializer(graph, unique_name(taken, f"{node.name}.col"),
                                      np.array(batch + [k, 1], np.int64))
                row = new_initializer(graph, unique_name(taken | {col.name},
                                                         f"{node.name}.row"),
                                      np.array(batch + [1, n], np.int64))
                a_col = ir.Node("", "Reshape", [node.inputs[0], col], name=f"{node.name}.a_col")
                prod = ir.Node("", "MatMul", [b, a_col.outputs[0]], name=node.name)
                out = ir.Node("", "Reshape", [prod.outputs[0], row], name=f"{node.name}.row")
                for v, shape in ((a_col.outputs[0], batch + [k, 1]),
                                 (prod.outputs[0], batch + [n, 1]),
                                 (out.outputs[0], batch + [1, n])):
                    v.shape, v.type = ir.Shape(shape), node.outputs[0].type
                ir.convenience.replace_nodes_and_values(
                    graph, node, [node], [a_col, prod, out], [node.outputs[0]],
                    [out.outputs[0]])
                if not tr.outputs[0].uses():
                    graph.remove(tr, safe=True)
                self.counts["rewritten"] += 1
        return self.counts["rewritten"] > 0
