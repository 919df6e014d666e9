"""Housekeeping around the rewrites, made of onnx_ir's common passes.

``CleanupPass`` (in place): ``Constant`` nodes holding a tensor become initializers
(``LiftConstantsToInitializersPass``, any size, so weights given as Constants are
planned), ``Identity`` nodes disappear (``IdentityEliminationPass``), dead nodes and unused
initializers are removed (``RemoveUnusedNodesPass``), and the graph is sorted
topologically (``TopologicalSortPass``).

``ShapesPass`` (in place): ONNX shape inference (non-strict: ops it does not know keep
their shapes), so that later passes can read value shapes (rows seen by a kernel, residual
shapes). If inference fails the model is left as it was.

``NameNodesPass`` (in place): every node gets a stable unique name.

``FinalCleanupPass`` (in place, after lowering): dead nodes and initializers (the original
weights, now packed), unused opset imports, and a topological sort.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from .base import SparsecPass
from .weights import name_nodes


def _run(model: ir.Model, passes: list[ir.passes.PassBase]) -> bool:
    modified = False
    for p in passes:
        modified |= p(model).modified
    return modified


class CleanupPass(SparsecPass):
    def apply(self, model: ir.Model) -> bool:
        return _run(model, [
            common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0),
            common.IdentityEliminationPass(),
            common.RemoveUnusedNodesPass(),
            common.TopologicalSortPass(),
        ])


class ShapesPass(SparsecPass):
    def apply(self, model: ir.Model) -> bool:
        return _run(model, [
            common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True),
        ])


class FinalCleanupPass(SparsecPass):
    def apply(self, model: ir.Model) -> bool:
        return _run(model, [
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedOpsetsPass(),
            common.TopologicalSortPass(),
        ])


class NameNodesPass(SparsecPass):
    """Give unnamed or duplicately named nodes stable unique names (``<op>_<position>``),
    so Plan entries and error messages can refer to every node; counts["named"]."""

    def apply(self, model: ir.Model) -> bool:
        self.counts["named"] = name_nodes(model.graph)
        return self.counts["named"] > 0
