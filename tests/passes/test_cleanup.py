"""Housekeeping passes: constants lifted, Identity and dead nodes gone, names, shapes."""

from __future__ import annotations

import numpy as np
from onnx import helper

from sparsec.passes.cleanup import CleanupPass, FinalCleanupPass, NameNodesPass, ShapesPass
from sparsec.passes.invariants import verify
from sparsec.passes.weights import weight_ops

rng = np.random.default_rng(11)


def test_cleanup_lifts_constants_and_removes_dead_code(tools):
    w = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=helper.make_tensor(
            "w", 1, [4, 3], w.reshape(-1))),
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("MatMul", ["xi", "w"], ["y"]),
        helper.make_node("Relu", ["x"], ["dead"]),
    ]
    m = tools.model(nodes, {"x": (2, 4)}, ["y"], {})
    x = rng.standard_normal((2, 4)).astype(np.float32)
    before = tools.ort(m, {"x": x})["y"]
    assert weight_ops(m.graph) == []  # a Constant node output is not an initializer
    p = CleanupPass()
    assert p(m).modified
    verify(m)
    assert tools.op_types(m) == ["MatMul"]
    assert "w" in m.graph.initializers and len(weight_ops(m.graph)) == 1
    n = NameNodesPass()
    assert n(m).modified and n.counts["named"] == 1
    tools.assert_close(tools.ort(m, {"x": x})["y"], before)
    assert not CleanupPass()(m).modified


def test_shapes_and_final_cleanup(tools):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="fc"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    m = tools.model(nodes, {"x": (5, 3)}, ["y"], {"w": np.ones((7, 3), np.float32)})
    assert m.graph.node("fc").outputs[0].shape is None
    assert ShapesPass()(m).modified
    assert list(m.graph.node("fc").outputs[0].shape) == [5, 7]
    m.opset_imports["unused.domain"] = 1
    assert FinalCleanupPass()(m).modified
    assert "unused.domain" not in m.opset_imports
