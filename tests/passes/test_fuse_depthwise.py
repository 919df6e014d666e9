"""fuse_depthwise: SparseConv 1x1 + depthwise Conv + activation -> one SparseConv.

Each case runs the whole pipeline, checks the structure (which nodes are left, the Plan's
record) and evaluates the result with the numpy reference of conftest against onnxruntime
on the original model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from sparsec import ops
from sparsec.options import CompileOptions
from sparsec.passes import pipeline
from sparsec.plan import Plan
from sparsec.targetspec import TargetSpec

rng = np.random.default_rng(12)
CPU = TargetSpec("cpu", "test cpu")


def block(tools, stride=1, width=10, act="Clip", layout_density=0.2, dw_bias=True,
          extra_use=False, project=False):
    """x -> Conv 1x1 (sparse) + Clip -> depthwise 3x3 -> act -> y (and maybe a 2nd use);
    with ``project``, then -> Conv 1x1 "proj" (sparse, bias) + x -> out."""
    e, c = 24, 8
    we = rng.standard_normal((e, c, 1, 1)).astype(np.float32)
    we[rng.random(we.shape) >= layout_density] = 0
    nodes = [helper.make_node("Conv", ["x", "pw.weight", "pw.bias"], ["p"], name="pw"),
             helper.make_node("Clip", ["p", "lo", "hi"], ["p6"], name="pw_act"),
             helper.make_node("Conv", ["p6", "dw.weight"] + (["dw.bias"] if dw_bias else []),
                              ["d"], group=e, pads=[1, 1, 1, 1], strides=[stride, stride],
                              name="dw")]
    out = "d"
    if act == "Clip":
        nodes.append(helper.make_node("Clip", ["d", "lo", "hi"], ["y"], name="dw_act"))
        out = "y"
    elif act == "Relu":
        nodes.append(helper.make_node("Relu", ["d"], ["y"], name="dw_act"))
        out = "y"
    if project:
        nodes += [helper.make_node("Conv", [out, "proj.weight", "proj.bias"], ["pr"],
                                   name="proj"),
                  helper.make_node("Add", ["pr", "x"], ["out"], name="residual")]
        out = "out"
    outputs = [out]
    if extra_use:
        nodes.append(helper.make_node("Neg", ["p6"], ["side"], name="side"))
        outputs.append("side")
    inits = {"pw.weight": we, "pw.bias": rng.standard_normal(e).astype(np.float32),
             "dw.weight": rng.standard_normal((e, 1, 3, 3)).astype(np.float32),
             "lo": np.float32(0), "hi": np.float32(6)}
    if dw_bias:
        inits["dw.bias"] = rng.standard_normal(e).astype(np.float32)
    if project:
        wp = rng.standard_normal((c, e, 1, 1)).astype(np.float32)
        wp[rng.random(wp.shape) >= 0.3] = 0
        inits["proj.weight"], inits["proj.bias"] = wp, rng.standard_normal(c).astype(np.float32)
    return tools.model(nodes, {"x": (1, c, width, width)}, outputs, inits)


def run(tools, m, **opts):
    layouts = {"pw": opts.pop("layout", "chw-spmm"), "proj": opts.pop("proj", "chw-spmm")}
    opts = CompileOptions(layouts=layouts, **opts)
    lm, plan = pipeline.run(m, opts, CPU, on_step=tools.verify_each)
    x = rng.standard_normal(tuple(int(d) for d in m.graph.inputs[0].shape)).astype(np.float32)
    got, want = tools.evaluate(lm, {"x": x}), tools.ort(m, {"x": x})
    for o in m.graph.outputs:
        tools.assert_close(got[o.name], want[o.name])
    return lm, plan


@pytest.mark.parametrize("stride,act", [(1, "Clip"), (2, "Clip"), (2, "Relu"), (1, None)])
def test_fuses_expand_and_depthwise(tools, stride, act):
    lm, plan = run(tools, block(tools, stride, act=act, dw_bias=act != "Relu"))
    assert tools.op_types(lm) == ["SparseConv"]
    (node,) = tools.sparse_nodes(lm)
    assert node.outputs[0].name == ("y" if act else "d")
    (entry,) = plan.entries
    dw = entry.depthwise
    assert (dw.node, dw.weight, dw.conv.strides, dw.conv.group) == ("dw", "dw.weight",
                                                                   (stride, stride), 24)
    want = (["bias"] if act != "Relu" else []) + ([act.lower()] if act else [])
    assert [s.op for s in dw.epilogue] == want
    assert dw.fused_nodes == (["dw_act"] if act else [])
    assert list(node.attributes.get_strings("dw_epilogue")) == want
    assert "fused with depthwise dw" in entry.report_row()["reason"]
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("case,reason", [
    (dict(layout="bsr2x2"), "layout bsr2x2"),
    (dict(extra_use=True), "does not feed exactly one Conv"),
    (dict(stride=2, width=9), "odd width"),
    (dict(fuse_depthwise=False), None),
])
def test_left_alone(tools, case, reason):
    layout = case.pop("layout", "chw-spmm")
    fuse = case.pop("fuse_depthwise", True)
    lm, plan = run(tools, block(tools, **case), layout=layout, fuse_depthwise=fuse)
    assert "Conv" in tools.op_types(lm) and plan.entries[0].depthwise is None
    assert all(n.attributes.get_ints("dw_kernel_shape", None) is None
               for n in tools.sparse_nodes(lm) if n.op_type == ops.CONV)


def test_skip_reasons_are_counted(tools):
    from sparsec.passes.fuse_depthwise import FuseDepthwisePass, match_depthwise

    m = block(tools, stride=2, width=9)
    opts = CompileOptions(layouts={"pw": "chw-spmm"}, fuse_depthwise=False)
    lm, plan = pipeline.run(m, opts, CPU)
    (node,) = tools.sparse_nodes(lm)
    assert "odd width 9" in match_depthwise(node)
    p = FuseDepthwisePass(plan)
    assert not p(lm).modified
    assert p.counts == {"skipped: Conv dw: stride 2 over an odd width 9": 1}


@pytest.mark.parametrize("layout", ["chw-spmm", "dense"])
def test_fuses_the_projection_too(tools, layout):
    lm, plan = run(tools, block(tools, project=True), layout=layout)
    assert tools.op_types(lm) == ["SparseConv"]
    (node,) = tools.sparse_nodes(lm)
    assert node.outputs[0].name == "out"
    a = node.attributes
    assert (a.get_string("pj_entry"), a.get_string("pj_layout"), a.get_int("pj_out_features"),
            list(a.get_strings("pj_epilogue"))) == ("proj", "chw-spmm", 8, ["bias", "residual"])
    pw, proj = plan.entries
    assert pw.depthwise.node == "dw" and proj.fused_into == "pw" and pw.fused_into is None
    assert "computed inside pw's kernel" in proj.report_row()["reason"]
    assert Plan.from_json(plan.to_json()) == plan


def test_dense_projection_is_kept(tools):
    from sparsec.passes.fuse_depthwise import FuseDepthwisePass

    m = block(tools, project=True)
    lm, plan = run(tools, m, proj="dense")
    assert tools.op_types(lm) == ["SparseConv", "SparseConv"]
    assert plan.entries[1].fused_into is None and plan.entries[0].depthwise is not None
    opts = CompileOptions(layouts={"pw": "chw-spmm", "proj": "dense"}, fuse_depthwise=False)
    lm, plan = pipeline.run(m, opts, CPU)
    p = FuseDepthwisePass(plan)
    assert p(lm).modified
    assert p.counts["projection kept: projection layout dense is not csr or chw-spmm"] == 1


def first_block(tools, stride=1, act="Clip", other_use=False, residual=False):
    """x -> depthwise 3x3 (bias) -> act -> Conv 1x1 "proj" (sparse, bias) [+ x] -> out: a
    MobileNetV2's first block, with no expand conv before its depthwise conv."""
    c = 8
    nodes = [helper.make_node("Conv", ["x", "dw.weight", "dw.bias"], ["d"], group=c,
                              pads=[1, 1, 1, 1], strides=[stride, stride], name="dw")]
    y = "d"
    if act:
        nodes.append(helper.make_node(act, ["d"] + (["lo", "hi"] if act == "Clip" else []),
                                      ["y"], name="dw_act"))
        y = "y"
    nodes.append(helper.make_node("Conv", [y, "proj.weight", "proj.bias"], ["pr"],
                                  name="proj"))
    out = "pr"
    if residual:
        nodes.append(helper.make_node("Add", ["pr", "x"], ["out"], name="residual"))
        out = "out"
    outputs = [out] + (["y" if act else "d"] if other_use else [])
    wp = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
    wp[rng.random(wp.shape) >= 0.3] = 0
    inits = {"dw.weight": rng.standard_normal((c, 1, 3, 3)).astype(np.float32),
             "dw.bias": rng.standard_normal(c).astype(np.float32),
             "proj.weight": wp, "proj.bias": rng.standard_normal(c).astype(np.float32),
             "lo": np.float32(0), "hi": np.float32(6)}
    return tools.model(nodes, {"x": (1, c, 10, 10)}, outputs, inits)


@pytest.mark.parametrize("stride,act,residual", [(1, "Clip", False), (2, "Clip", False),
                                                 (2, "Relu", False), (1, None, True)])
def test_fuses_depthwise_before_projection(tools, stride, act, residual):
    lm, plan = run(tools, first_block(tools, stride, act, residual=residual))
    assert tools.op_types(lm) == ["SparseConv"]
    (node,) = tools.sparse_nodes(lm)
    assert node.inputs[0].name == "x" and node.attributes.get_int("dw_before") == 1
    (entry,) = plan.entries
    dw = entry.depthwise
    assert (dw.node, dw.before, dw.conv.strides, dw.conv.group) == ("dw", True,
                                                                   (stride, stride), 8)
    assert [s.op for s in dw.epilogue] == ["bias"] + ([act.lower()] if act else [])
    assert dw.fused_nodes == (["dw_act"] if act else [])
    assert "fused with depthwise dw before it" in entry.report_row()["reason"]
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("case,proj", [(dict(other_use=True), "chw-spmm"),
                                       (dict(), "dense"), (dict(), "bsr2x2")])
def test_depthwise_before_left_alone(tools, case, proj):
    from sparsec.passes.fuse_depthwise import match_depthwise_before

    lm, plan = run(tools, first_block(tools, **case), proj=proj)
    assert "Conv" in tools.op_types(lm) and plan.entries[0].depthwise is None
    if proj == "chw-spmm":
        (node,) = tools.sparse_nodes(lm)
        assert "has another use" in match_depthwise_before(node)


def stem(tools, dw_stride=1):
    """x -> Conv 3x3 stride 2 "stem" + Clip -> depthwise 3x3 + Clip -> Conv 1x1 "proj"."""
    nodes = [helper.make_node("Conv", ["x", "stem.weight", "stem.bias"], ["s"], name="stem",
                              pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Clip", ["s", "lo", "hi"], ["s6"], name="stem_act"),
             helper.make_node("Conv", ["s6", "dw.weight", "dw.bias"], ["d"], group=8,
                              pads=[1, 1, 1, 1], strides=[dw_stride] * 2, name="dw"),
             helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="dw_act"),
             helper.make_node("Conv", ["d6", "proj.weight"], ["y"], name="proj")]
    inits = {"stem.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "stem.bias": rng.standard_normal(8).astype(np.float32),
             "dw.weight": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
             "dw.bias": rng.standard_normal(8).astype(np.float32),
             "proj.weight": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
             "lo": np.float32(0), "hi": np.float32(6)}
    return tools.model(nodes, {"x": (1, 3, 18, 18)}, ["y"], inits)


@pytest.mark.parametrize("proj,dw_stride,fused", [("dense", 1, "stem"), ("chw-spmm", 1, "proj"),
                                                  ("dense", 2, None)])
def test_depthwise_after_a_dense_kxk_conv(tools, proj, dw_stride, fused):
    """A stem's depthwise conv joins the stem when the projection after it is dense (a
    sparse one takes it first, ``dw_before``), and that dense projection joins too; only
    3x3 stride 1 depthwise convs."""
    from sparsec.passes.fuse_depthwise import match_conv_depthwise

    m = stem(tools, dw_stride)
    lm, plan = pipeline.run(m, CompileOptions(layouts={"stem": "dense", "proj": proj}), CPU,
                            on_step=tools.verify_each)
    x = rng.standard_normal((1, 3, 18, 18)).astype(np.float32)
    tools.assert_close(tools.evaluate(lm, {"x": x})["y"], tools.ort(m, {"x": x})["y"])
    entries = {e.node: e for e in plan.entries}
    assert [n for n, e in entries.items() if e.depthwise is not None] == (
        [fused] if fused else [])
    if fused == "stem":
        dw = entries["stem"].depthwise
        assert (dw.node, dw.before, dw.fused_nodes) == ("dw", False, ["dw_act"])
        assert "Conv" not in tools.op_types(lm)
        assert entries["proj"].fused_into == "stem"
        (node,) = tools.sparse_nodes(lm)  # one kernel: stem, depthwise conv, projection
        assert node.attributes.get_string("pj_layout") == "dense"
    if dw_stride == 2:
        node = next(n for n in tools.sparse_nodes(lm) if n.name == "stem")
        assert "not a 3x3 conv with stride 1" in match_conv_depthwise(node)
