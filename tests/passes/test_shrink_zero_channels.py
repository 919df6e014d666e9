"""All-zero output channels removed and folded into the next op's bias; same outputs."""

from __future__ import annotations

import numpy as np
from onnx import helper

from sparsec.passes.analyze_sparsity import AnalyzeSparsityPass
from sparsec.passes.cleanup import ShapesPass
from sparsec.passes.invariants import verify
from sparsec.passes.mark_epilogues import MarkEpiloguesPass
from sparsec.passes.shrink_zero_channels import ShrinkZeroChannelsPass
from sparsec.plan import Plan

rng = np.random.default_rng(6)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def shrink(tools, m, feeds):
    """Run shrink (after its prerequisite passes); check outputs against onnxruntime."""
    before = tools.ort(m, feeds)
    ShapesPass()(m)
    plan = Plan(target="cpu")
    AnalyzeSparsityPass(plan)(m)
    MarkEpiloguesPass(plan)(m)
    p = ShrinkZeroChannelsPass(plan)
    modified = p(m).modified
    verify(m, plan)
    after = tools.ort(m, feeds)
    for k in before:
        tools.assert_close(after[k], before[k])
    return plan, p, modified


def test_gemm_half_rows_zero_into_next_gemm(tools):
    w1, b1, w2, b2 = f32(64, 32), f32(64), f32(16, 64), f32(16)
    w1[::2] = 0  # half the output rows zero; relu(b1[o]) flows into the next layer
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    m = tools.model(nodes, {"x": (5, 32)}, ["y"], {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    plan, p, modified = shrink(tools, m, {"x": f32(5, 32)})
    assert modified and p.counts["ops"] == 1 and p.counts["removed_rows"] == 32
    assert p.counts["biases_created"] == 0
    e1, e2 = plan.entries
    assert e1.removed_rows == 32 and e1.weight_shape == (32, 32) and e1.stats.zero_rows == 0
    assert e2.weight_shape == (16, 32) and e2.removed_rows == 0
    assert list(m.graph.node("relu").outputs[0].shape) == [5, 32]  # shapes follow


def test_matmul_without_bias_gets_a_bias_add(tools):
    """MatMul -> bias Add -> Sigmoid -> MatMul without bias: sigmoid(b1[o]) != 0 must go
    somewhere, so the second MatMul gets a new bias Add that joins its epilogue."""
    w1, b1, w2 = f32(24, 40), f32(40), f32(40, 8)  # MatMul weights are [in, out]
    w1[:, [0, 3, 4, 39]] = 0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Sigmoid", ["hb"], ["s"], name="sig"),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="mm2")]
    m = tools.model(nodes, {"x": (2, 3, 24)}, ["y"], {"w1": w1, "b1": b1, "w2": w2})
    plan, p, modified = shrink(tools, m, {"x": f32(2, 3, 24)})
    assert modified and p.counts["removed_rows"] == 4 and p.counts["biases_created"] == 1
    e1, e2 = plan.entries
    assert e1.weight_shape == (24, 36) and e1.removed_rows == 4
    assert m.graph.initializers["b1"].const_value.shape == (36,)
    assert [s.op for s in e2.epilogue] == ["bias"] and e2.fused_nodes == ["mm2.bias_add"]
    assert m.graph.outputs[0].name == "y"  # the new Add took over the output's name
    assert m.graph.outputs[0].producer().op_type == "Add"


def test_conv_into_pointwise_conv(tools):
    w1, b1 = f32(16, 3, 3, 3), f32(16)
    w1[[1, 2, 9]] = 0
    w2 = f32(8, 16, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["a"], name="relu6"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="c2")]
    inits = {"w1": w1, "b1": b1, "w2": w2, "lo": np.array(0, np.float32),
             "hi": np.array(6, np.float32)}
    m = tools.model(nodes, {"x": (1, 3, 6, 6)}, ["y"], inits)
    plan, p, modified = shrink(tools, m, {"x": f32(1, 3, 6, 6)})
    assert modified and p.counts["removed_rows"] == 3 and p.counts["biases_created"] == 1
    assert plan.entries[1].weight_shape == (8, 13, 1, 1)
    assert m.graph.node("c2").inputs[2].name == "c2.bias"


def test_left_alone(tools):
    w1, w2 = f32(16, 8), f32(4, 16)
    w1[:4] = 0
    inits = {"w1": w1, "w2": w2, "all0": np.zeros((16, 8), np.float32)}
    cases = [
        # the fused output is also a graph output
        ([helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
          helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1, name="fc2")], ["h", "y"]),
        # a residual in the epilogue: the channel is not constant
        ([helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
          helper.make_node("Add", ["h", "res"], ["hr"], name="res_add"),
          helper.make_node("Gemm", ["hr", "w2"], ["y"], transB=1, name="fc2")], ["y"]),
        # a consumer that is not a planned op
        ([helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
          helper.make_node("Softmax", ["h"], ["y"], name="sm")], ["y"]),
        # every row zero
        ([helper.make_node("Gemm", ["x", "all0"], ["h"], transB=1, name="fc1"),
          helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1, name="fc2")], ["y"]),
    ]
    for nodes, outputs in cases:
        m = tools.model(nodes, {"x": (2, 8), "res": (2, 16)}, outputs, inits)
        plan, p, modified = shrink(tools, m, {"x": f32(2, 8), "res": f32(2, 16)})
        assert not modified and p.counts["ops"] == 0
        assert all(e.removed_rows == 0 for e in plan.entries)


def test_disabled(tools):
    w1 = f32(16, 8)
    w1[:4] = 0
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1, name="fc2")]
    m = tools.model(nodes, {"x": (2, 8)}, ["y"], {"w1": w1, "w2": f32(4, 16)})
    plan = Plan(target="cpu")
    AnalyzeSparsityPass(plan)(m)
    assert not ShrinkZeroChannelsPass(plan, enabled=False)(m).modified
