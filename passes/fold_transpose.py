"""Fold transposes of constants into the constants.

``Transpose(W) -> W'`` when W is a constant (initializer, not a graph input) and the
Transpose's output is not a graph output; ``W' = W.transpose(perm)`` (``perm`` defaults to
reversing the axes). This covers ``MatMul(x, Transpose(W))``, the way some exporters write
``nn.Linear``: the MatMul then sees a constant ``[in, out]`` weight and gets planned.

When W has no other user its data is replaced in place and it keeps its name (so reports
show the PyTorch parameter name, e.g. ``fc1.weight``, now stored transposed); otherwise a
new initializer ``<W>.T`` is created and W stays for its other users.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import SparsecPass
from .weights import const_array, graph_names, new_initializer, unique_name


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
