"""Weight ops: which nodes are planned, their [out, in] weight and bias, and writing back."""

from __future__ import annotations

import numpy as np
from onnx import helper

from sparsec.passes.weights import match_weight_op, name_nodes, weight_ops

rng = np.random.default_rng(2)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_matmul_gemm_conv_are_weight_ops(tools):
    W_mm, B0, B1, C = f32(8, 6), f32(8, 6), f32(6, 8), f32(1, 6)
    inits = {"W_mm": W_mm, "B0": B0, "B1": B1, "C": C, "Wc": f32(4, 3, 3, 3), "Bc": f32(4)}
    nodes = [
        helper.make_node("MatMul", ["x", "W_mm"], ["a"], name="mm"),
        helper.make_node("Gemm", ["x", "B0", "C"], ["b"], alpha=2.0, beta=0.5, name="g0"),
        helper.make_node("Gemm", ["x", "B1"], ["c"], transB=1, alpha=3.0, name="g1"),
        helper.make_node("Conv", ["img", "Wc", "Bc"], ["d"], name="conv"),
    ]
    m = tools.model(nodes, {"x": (2, 8), "img": (1, 3, 5, 5)}, ["a", "b", "c", "d"], inits)
    mm, g0, g1, conv = weight_ops(m.graph)
    np.testing.assert_array_equal(mm.w2d(), W_mm.T)
    np.testing.assert_allclose(g0.w2d(), 2.0 * B0.T, rtol=0)
    np.testing.assert_allclose(g0.bias(), 0.5 * C[0], rtol=0)
    np.testing.assert_allclose(g1.w2d(), 3.0 * B1, rtol=0)
    assert g1.bias() is None and mm.bias() is None
    np.testing.assert_array_equal(conv.w2d(), inits["Wc"].reshape(4, 27))
    np.testing.assert_array_equal(conv.bias(), inits["Bc"])
    assert [w.out_features for w in (mm, g0, g1, conv)] == [6, 6, 6, 4]
    assert conv.conv_attrs().kernel_shape == (3, 3)


def test_not_planned_with_reasons(tools):
    inits = {"W": f32(8, 8), "Wd": f32(4, 1, 3, 3), "C2": f32(2, 8)}
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["a"], transA=1, name="ta"),
        helper.make_node("Gemm", ["x", "W", "C2"], ["b"], name="rowbias"),
        helper.make_node("MatMul", ["x", "x8"], ["c"], name="dyn"),
        helper.make_node("Conv", ["img", "Wd"], ["d"], group=4, name="dw"),
    ]
    m = tools.model(nodes, {"x": (2, 8), "x8": (8, 8), "img": (1, 4, 5, 5)},
                    ["a", "b", "c", "d"], inits)
    reasons = [match_weight_op(n) for n in m.graph]
    assert all(isinstance(r, str) for r in reasons)
    assert "transA=1" in reasons[0] and "ta" in reasons[0]
    assert "not a per-output bias" in reasons[1]
    assert "not a constant" in reasons[2]
    assert "group=4" in reasons[3] and "dw" in reasons[3]
    assert weight_ops(m.graph) == []


def test_writing_back_keeps_numerics(tools):
    """set_w2d / set_bias with the values read: alpha and beta fold, output unchanged."""
    inits = {"B": f32(8, 6), "C": f32(6), "W": f32(6, 5)}
    nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["h"], alpha=1.5, beta=-2.0, name="g"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="mm")]
    m = tools.model(nodes, {"x": (3, 8)}, ["y"], inits)
    x = f32(3, 8)
    before = tools.ort(m, {"x": x})["y"]
    g, mm = weight_ops(m.graph)
    w, b = g.w2d(), g.bias()
    g.set_w2d(m.graph, w)
    g.set_bias(m.graph, b)
    mm.set_w2d(m.graph, mm.w2d())
    attrs = g.node.attributes
    assert attrs.get_float("alpha") == 1.0 and attrs.get_float("beta") == 1.0
    assert g.weight.name == "B" and g.node.inputs[2].name == "C"  # updated in place
    tools.assert_close(tools.ort(m, {"x": x})["y"], before)


def test_name_nodes_is_stable_and_unique(tools):
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Relu", ["a"], ["b"], name="Relu_1"),
             helper.make_node("Relu", ["b"], ["c"], name="Relu_1")]
    m = tools.model(nodes, {"x": (2,)}, ["c"], {})
    assert name_nodes(m.graph) == 2
    assert [n.name for n in m.graph] == ["Relu_0", "Relu_1", "Relu_2"]
    assert name_nodes(m.graph) == 0
