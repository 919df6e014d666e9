"""Transpose(W) -> W' for constant W, so MatMul(x, Transpose(W)) gets planned."""

from __future__ import annotations

import numpy as np
from onnx import helper

from sparsec.passes.cleanup import CleanupPass
from sparsec.passes.fold_transpose import FoldTransposePass
from sparsec.passes.invariants import verify
from sparsec.passes.weights import weight_ops

rng = np.random.default_rng(4)


def test_matmul_of_transposed_weight(tools):
    w = rng.standard_normal((16, 8)).astype(np.float32)  # torch Linear weight [out, in]
    nodes = [helper.make_node("Transpose", ["fc.weight"], ["wt"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="fc")]
    m = tools.model(nodes, {"x": (3, 8)}, ["y"], {"fc.weight": w})
    assert weight_ops(m.graph) == []  # the MatMul's weight is not a constant yet
    x = rng.standard_normal((3, 8)).astype(np.float32)
    before = tools.ort(m, {"x": x})["y"]
    p = FoldTransposePass()
    assert p(m).modified and p.counts["folded"] == 1
    verify(m)
    assert tools.op_types(m) == ["MatMul"]
    (wop,) = weight_ops(m.graph)
    assert wop.weight.name == "fc.weight"  # keeps the PyTorch name, stored [in, out]
    np.testing.assert_array_equal(wop.w2d(), w)
    tools.assert_close(tools.ort(m, {"x": x})["y"], before)


def test_shared_constant_and_default_perm_and_constant_node(tools):
    w = rng.standard_normal((2, 3, 4)).astype(np.float32)
    const = helper.make_node("Constant", [], ["c"], name="const",
                             value=helper.make_tensor("c", 1, [3, 2], rng.standard_normal(6)))
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], name="t"),  # default: reverse axes
             helper.make_node("Add", ["wt", "x"], ["a"], name="add"),
             helper.make_node("Transpose", ["w"], ["wt2"], perm=[0, 2, 1], name="t2"),
             helper.make_node("ReduceSum", ["wt2"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Identity", ["w"], ["w_out"], name="id"),
             const,
             helper.make_node("Transpose", ["c"], ["ct"], name="t3"),
             helper.make_node("MatMul", ["ct", "a2"], ["p"], name="mm")]
    m = tools.model(nodes, {"x": (4, 3, 2), "a2": (3, 5)}, ["a", "s", "w_out", "p"], {"w": w})
    feeds = {"x": rng.standard_normal((4, 3, 2)).astype(np.float32),
             "a2": rng.standard_normal((3, 5)).astype(np.float32)}
    before = tools.ort(m, feeds)
    CleanupPass()(m)  # the Constant becomes an initializer
    p = FoldTransposePass()
    assert p(m).modified and p.counts["folded"] == 3
    verify(m)
    assert "Transpose" not in tools.op_types(m)
    assert {"w.T", "w.T_1"} <= set(m.graph.initializers)  # w itself is still used
    np.testing.assert_array_equal(m.graph.initializers["w"].const_value.numpy(), w)
    after = tools.ort(m, feeds)
    for k in before:
        tools.assert_close(after[k], before[k])
