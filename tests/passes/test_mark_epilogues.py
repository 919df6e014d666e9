"""Epilogue chains: bias, relu, clip, gelu (op and erf forms), sigmoid, residual; stops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from sparsec.passes.analyze_sparsity import AnalyzeSparsityPass
from sparsec.passes.cleanup import ShapesPass
from sparsec.passes.invariants import verify
from sparsec.passes.mark_epilogues import MarkEpiloguesPass
from sparsec.plan import Plan

rng = np.random.default_rng(5)
O, K = 16, 8


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def plan_of(tools, nodes, inits, inputs=None, outputs=("y",), opset=17, fuse=True):
    base = {"W": f32(K, O), "b": f32(O), "b2d": f32(1, O), "r": f32(4, O),
            "half": np.array(0.5, np.float32), "two": np.array(2.0, np.float32),
            "one": np.array(1.0, np.float32), "sqrt2": np.array(math.sqrt(2), np.float32),
            "isqrt2": np.array(1 / math.sqrt(2), np.float32),
            "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    m = tools.model(nodes, inputs or {"x": (4, K), "res": (4, O)}, list(outputs),
                    {**base, **inits}, opset=opset)
    ShapesPass()(m)
    plan = Plan(target="cpu")
    AnalyzeSparsityPass(plan)(m)
    p = MarkEpiloguesPass(plan, fuse)
    assert not p(m).modified  # marking does not change the model
    verify(m, plan)
    return plan, p


def ops_of(entry):
    return [s.op for s in entry.epilogue]


def mm(y="h"):
    return helper.make_node("MatMul", ["x", "W"], [y], name="mm")


def test_bias_relu_residual_in_order(tools):
    nodes = [mm(), helper.make_node("Add", ["b", "h"], ["hb"], name="bias"),
             helper.make_node("Relu", ["hb"], ["hr"], name="relu"),
             helper.make_node("Add", ["hr", "res"], ["y"], name="resid")]
    plan, p = plan_of(tools, nodes, {})
    (e,) = plan.entries
    assert ops_of(e) == ["bias", "relu", "residual"]
    assert e.fused_nodes == ["bias", "relu", "resid"]
    assert p.counts["steps"] == 3 and p.counts["fused_nodes"] == 3


def test_residual_then_relu_and_2d_bias(tools):
    nodes = [mm(), helper.make_node("Add", ["h", "b2d"], ["hb"], name="bias"),
             helper.make_node("Add", ["res", "hb"], ["hr"], name="resid"),
             helper.make_node("Relu", ["hr"], ["y"], name="relu")]
    plan, _ = plan_of(tools, nodes, {})
    assert ops_of(plan.entries[0]) == ["bias", "residual", "relu"]


def test_gemm_own_bias_merges_with_bias_add_and_clip_sigmoid(tools):
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm"),
             helper.make_node("Add", ["h", "b"], ["h2"], name="bias2"),
             helper.make_node("Clip", ["h2", "lo", "hi"], ["h3"], name="relu6"),
             helper.make_node("Sigmoid", ["h3"], ["y"], name="sig")]
    plan, _ = plan_of(tools, nodes, {})
    (e,) = plan.entries
    assert ops_of(e) == ["bias", "clip", "sigmoid"]
    assert (e.epilogue[1].min, e.epilogue[1].max) == (0.0, 6.0)
    assert e.fused_nodes == ["bias2", "relu6", "sig"]


def gelu_erf(form: str, x: str = "h", y: str = "y"):
    """The three usual associations of 0.5 * x * (1 + erf(x / sqrt2))."""
    head = (helper.make_node("Div", [x, "sqrt2"], ["d"], name="g_div") if form != "mul_head"
            else helper.make_node("Mul", ["isqrt2", x], ["d"], name="g_div"))
    common = [head, helper.make_node("Erf", ["d"], ["e"], name="g_erf"),
              helper.make_node("Add", ["one", "e"], ["t"], name="g_add")]
    if form in ("xt_half", "mul_head"):  # (x * t) * 0.5
        return common + [helper.make_node("Mul", [x, "t"], ["xt"], name="g_mul"),
                         helper.make_node("Mul", ["xt", "half"], [y], name="g_half")]
    if form == "xhalf_t":  # (x * 0.5) * t
        return common + [helper.make_node("Mul", [x, "half"], ["xh"], name="g_half"),
                         helper.make_node("Mul", ["t", "xh"], [y], name="g_mul")]
    return common + [helper.make_node("Div", ["t", "two"], ["th"], name="g_half"),  # x * (t/2)
                     helper.make_node("Mul", [x, "th"], [y], name="g_mul")]


@pytest.mark.parametrize("form", ["xt_half", "xhalf_t", "x_thalf", "mul_head"])
def test_gelu_erf_forms(tools, form):
    nodes = [mm(), *gelu_erf(form)]
    plan, _ = plan_of(tools, nodes, {})
    (e,) = plan.entries
    assert ops_of(e) == ["gelu"]
    assert sorted(e.fused_nodes) == sorted(["g_div", "g_erf", "g_add", "g_mul", "g_half"])


def test_gelu_op(tools):
    nodes = [mm(), helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
             helper.make_node("Gelu", ["hb"], ["y"], name="gelu")]
    plan, _ = plan_of(tools, nodes, {}, opset=20)
    assert ops_of(plan.entries[0]) == ["bias", "gelu"]
    nodes[-1] = helper.make_node("Gelu", ["hb"], ["y"], name="gelu", approximate="tanh")
    plan, _ = plan_of(tools, nodes, {}, opset=20)
    assert ops_of(plan.entries[0]) == ["bias"]


def test_stops(tools):
    # the op's own output is a graph output: nothing fuses
    nodes = [mm(), helper.make_node("Relu", ["h"], ["y"], name="relu")]
    plan, _ = plan_of(tools, nodes, {}, outputs=("h", "y"))
    assert ops_of(plan.entries[0]) == []
    # an intermediate value with two uses stops the chain after it
    nodes = [mm(), helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
             helper.make_node("Add", ["a", "s"], ["y"], name="add")]
    plan, _ = plan_of(tools, nodes, {})
    assert ops_of(plan.entries[0]) == ["relu"] and plan.entries[0].fused_nodes == ["relu"]
    # a broadcasting (non-bias) constant, a bias after relu, a residual of another shape
    nodes = [mm(), helper.make_node("Add", ["h", "r"], ["y"], name="add")]
    assert ops_of(plan_of(tools, nodes, {})[0].entries[0]) == []
    nodes = [mm(), helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    assert ops_of(plan_of(tools, nodes, {})[0].entries[0]) == ["relu"]
    nodes = [mm(), helper.make_node("Add", ["h", "res"], ["y"], name="add")]
    plan, _ = plan_of(tools, nodes, {}, inputs={"x": (4, K), "res": (1, O)})
    assert ops_of(plan.entries[0]) == []


def test_fusion_disabled_keeps_only_own_bias(tools):
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    plan, _ = plan_of(tools, nodes, {}, fuse=False)
    assert ops_of(plan.entries[0]) == ["bias"] and plan.entries[0].fused_nodes == []


def test_conv_bias_shapes(tools):
    inits = {"Wc": f32(4, 3, 1, 1), "cb": f32(1, 4, 1, 1), "cb3": f32(4, 1, 1), "cb1": f32(4)}
    for const, fused in (("cb", True), ("cb3", True), ("cb1", False)):
        nodes = [helper.make_node("Conv", ["img", "Wc"], ["c"], name="conv"),
                 helper.make_node("Add", ["c", const], ["y"], name="add")]
        plan, _ = plan_of(tools, nodes, inits, inputs={"img": (1, 3, 4, 4)})
        assert ops_of(plan.entries[0]) == (["bias"] if fused else [])


def test_clip_attributes_in_old_opsets(tools):
    nodes = [mm(), helper.make_node("Clip", ["h"], ["y"], name="relu6", min=0.0, max=6.0)]
    plan, _ = plan_of(tools, nodes, {}, opset=10)
    (step,) = plan.entries[0].epilogue
    assert (step.op, step.min, step.max) == ("clip", 0.0, 6.0)
    nodes = [mm(), helper.make_node("Clip", ["h", "", "hi"], ["y"], name="clip")]
    (step,) = plan_of(tools, nodes, {})[0].entries[0].epilogue
    assert (step.min, step.max) == (None, 6.0)
