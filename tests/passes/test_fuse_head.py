"""fuse_head: a dense 1x1 SparseConv, its mean pool and the dense SparseLinear after it ->
one SparseConv whose output is the linear's.

Each case runs the whole pipeline, checks the structure and the Plan's record, and
evaluates the result with the numpy reference of conftest against onnxruntime on the
original model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from sparsec import ops
from sparsec.options import CompileOptions
from sparsec.passes import pipeline
from sparsec.plan import Plan
from sparsec.targetspec import TargetSpec

rng = np.random.default_rng(21)
CPU = TargetSpec("cpu", "test cpu")


def head(tools, pool="GlobalAveragePool", flatten="Flatten", width=3, extra_use=False,
         residual=False, c=12, o=40, classes=10, batch=1):
    """x -> Conv 1x1 + bias + Clip (+ r) -> pool -> flatten -> Gemm(+ bias) -> y."""
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv")]
    act_in = "c"
    if residual:
        nodes.append(helper.make_node("Add", ["c", "r"], ["cr"], name="res"))
        act_in = "cr"
    nodes.append(helper.make_node("Clip", [act_in, "lo", "hi"], ["c6"], name="act"))
    inits = {"conv.weight": rng.standard_normal((o, c, 1, 1)).astype(np.float32),
             "conv.bias": rng.standard_normal(o).astype(np.float32),
             "lo": np.float32(0), "hi": np.float32(6),
             "fc.weight": rng.standard_normal((classes, o)).astype(np.float32),
             "fc.bias": rng.standard_normal(classes).astype(np.float32)}
    if pool == "GlobalAveragePool":
        nodes.append(helper.make_node("GlobalAveragePool", ["c6"], ["m"], name="pool"))
    else:  # ReduceMean over H, W (opset 18: axes as an input), keepdims 1 or 0
        keep = 0 if pool == "ReduceMean0" else 1
        nodes.append(helper.make_node("ReduceMean", ["c6", "axes"], ["m"], keepdims=keep,
                                      name="pool"))
        inits["axes"] = np.array([-2, -1] if keep else [2, 3], np.int64)
    feat = "m"
    if flatten == "Flatten":
        nodes.append(helper.make_node("Flatten", ["m"], ["f"], axis=1, name="flat"))
        feat = "f"
    elif flatten == "Reshape":
        nodes.append(helper.make_node("Reshape", ["m", "shape"], ["f"], name="flat"))
        inits["shape"] = np.array([batch, o], np.int64)
        feat = "f"
    nodes.append(helper.make_node("Gemm", [feat, "fc.weight", "fc.bias"], ["y"], transB=1,
                                  name="fc"))
    outputs = ["y"]
    if extra_use:
        nodes.append(helper.make_node("Neg", ["m"], ["side"], name="side"))
        outputs.append("side")
    inputs = {"x": (batch, c, width, width)}
    if residual:
        inputs["r"] = (batch, o, width, width)
    return tools.model(nodes, inputs, outputs, inits, opset=18)


def run(tools, m, layouts=None, **opts):
    opts = CompileOptions(layouts=layouts or {"*": "dense"}, **opts)
    lm, plan = pipeline.run(m, opts, CPU, on_step=tools.verify_each)
    feeds = {v.name: rng.standard_normal(tuple(int(d) for d in v.shape)).astype(np.float32)
             for v in m.graph.inputs}
    got, want = tools.evaluate(lm, feeds), tools.ort(m, feeds)
    for o in m.graph.outputs:
        tools.assert_close(got[o.name], want[o.name])
    return lm, plan


@pytest.mark.parametrize("pool,flatten,residual", [
    ("GlobalAveragePool", "Flatten", False), ("ReduceMean", "Reshape", False),
    ("ReduceMean0", None, False), ("GlobalAveragePool", "Flatten", True)])
def test_fuses_conv_pool_and_linear(tools, pool, flatten, residual):
    lm, plan = run(tools, head(tools, pool, flatten, residual=residual))
    assert tools.op_types(lm) == ["SparseConv"]
    (node,) = tools.sparse_nodes(lm)
    assert node.outputs[0].name == "y" and node.attributes.get_string("pool") == "mean"
    a = node.attributes
    assert (a.get_string("ln_entry"), a.get_string("ln_layout"), a.get_int("ln_out_features"),
            list(a.get_strings("ln_epilogue"))) == ("fc", "dense", 10, ["bias"])
    conv, fc = plan.entries
    assert conv.pool_nodes == ["pool"] + (["flat"] if flatten else [])
    assert fc.fused_into == "conv" and conv.fused_into is None
    want = ["bias", "residual", "clip"] if residual else ["bias", "clip"]
    assert [s.op for s in conv.epilogue] == want
    assert "fused with pool pool" in conv.report_row()["reason"]
    assert "computed inside conv's kernel" in fc.report_row()["reason"]
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("case,opts,reason", [
    (dict(width=17), {}, "289 pixels, more than 256"),
    (dict(extra_use=True), {}, "has another use"),
    ({}, dict(layouts={"conv": "csr", "fc": "dense"}), "conv layout csr"),
    ({}, dict(layouts={"conv": "dense", "fc": "csr"}), "linear layout csr"),
    ({}, dict(fuse_head=False), None),
])
def test_left_alone(tools, case, opts, reason):
    m = head(tools, **case)
    lm, plan = run(tools, m, **opts)
    assert "SparseLinear" in tools.op_types(lm)
    assert all(n.attributes.get_string("pool", None) is None for n in tools.sparse_nodes(lm)
               if n.op_type == ops.CONV)
    assert not plan.entries[0].pool_nodes and plan.entries[1].fused_into is None
    if reason is not None:
        from sparsec.passes.fuse_head import FuseHeadPass
        layouts = opts.get("layouts", {"*": "dense"})
        lowered, plan = pipeline.run(m, CompileOptions(layouts=layouts, fuse_head=False), CPU)
        p = FuseHeadPass(plan)
        p(lowered)
        assert any(reason in k for k in p.counts), dict(p.counts)
