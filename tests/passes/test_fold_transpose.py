"""Transpose(W) -> W' for constant W, so MatMul(x, Transpose(W)) gets planned; a single row
times a transposed activation reads the activation in place."""

from __future__ import annotations

import numpy as np
from onnx import helper

from sparsec.passes.cleanup import CleanupPass, ShapesPass
from sparsec.passes.fold_transpose import FoldTransposePass, TransposedMatVecPass
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


def _attention_scores(tools, q_shape, k_shape, perm=None):
    """``MatMul(q, Transpose(k))`` followed by a Div, as exported attention writes it."""
    perm = perm or [0, 1, 3, 2]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=perm, name="t"),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
             helper.make_node("Div", ["s", "scale"], ["y"], name="div")]
    m = tools.model(nodes, {"q": q_shape, "k": k_shape}, ["y"],
                    {"scale": np.array(8.0, np.float32)})
    ShapesPass()(m)
    feeds = {"q": rng.standard_normal(q_shape).astype(np.float32),
             "k": rng.standard_normal(k_shape).astype(np.float32)}
    return m, feeds


def test_single_row_times_transposed_activation_reads_it_in_place(tools):
    m, feeds = _attention_scores(tools, (1, 3, 1, 8), (1, 3, 5, 8))  # decode: one query
    before = tools.ort(m, feeds)["y"]
    p = TransposedMatVecPass()
    assert p(m).modified and p.counts["rewritten"] == 1
    verify(m)
    assert "Transpose" not in tools.op_types(m)
    (mm,) = [n for n in m.graph if n.op_type == "MatMul"]
    assert mm.inputs[0].name == "k"  # k itself, times q as a column
    tools.assert_close(tools.ort(m, feeds)["y"], before)


def test_transposed_matvec_leaves_other_matmuls_alone(tools):
    for q, k, perm in [((1, 3, 2, 8), (1, 3, 5, 8), None),  # two query rows
                       ((1, 3, 1, 8), (3, 1, 8, 5), [1, 0, 2, 3])]:  # not a swap of the last two
        m, _ = _attention_scores(tools, q, k, perm)
        p = TransposedMatVecPass()
        assert not p(m).modified, (q, k, perm)
        assert "Transpose" in tools.op_types(m)
