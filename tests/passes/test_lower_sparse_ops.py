"""Lowering: every planned op + epilogue becomes one ai.sparsec node with the same numerics.

The lowered graph is evaluated by the numpy reference of SparseLinear / SparseConv in
conftest (weights recovered with sparsec.formats.unpack, epilogues by
sparsec.ops.apply_epilogue) and onnxruntime for the other nodes; every value that keeps
its name and shape must match the original model's (also evaluated node by node).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from sparsec import ops
from sparsec.options import CompileOptions
from sparsec.passes import pipeline
from sparsec.passes.invariants import verify
from sparsec.passes.lower_sparse_ops import LowerSparseOpsPass
from sparsec.targetspec import TargetSpec

rng = np.random.default_rng(8)
CPU = TargetSpec("cpu", "test cpu")


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def sparse(shape, density):
    w = f32(*shape)
    w[rng.random(shape) >= density] = 0
    return w


def two_four(o, k):
    w = f32(o, k)
    g = w.reshape(o, k // 4, 4)
    np.put_along_axis(g, np.argsort(rng.random(g.shape), axis=2)[:, :, :2], 0, axis=2)
    return w


def blocks(o, k, r, c, density):
    return (np.kron(rng.random((o // r, k // c)) < density, np.ones((r, c))) * f32(o, k)).astype(
        np.float32)


def lower(tools, m, feeds, options=None):
    """analyze -> lower; check structure and numerics; return (lowered model, plan, pass)."""
    options = options or CompileOptions()
    reference = tools.evaluate(m, feeds)
    am, plan = pipeline.analyze(m, options, CPU, on_step=tools.verify_each)
    p = LowerSparseOpsPass(plan, options.fuse_epilogues)
    assert p(am).modified
    verify(am, plan)
    assert p.counts["lowered"] == len(plan.entries)
    nodes = tools.sparse_nodes(am)
    assert sorted(n.attributes.get_string("entry") for n in nodes) == sorted(
        e.node for e in plan.entries)
    assert am.opset_imports[ops.DOMAIN] == 1
    for n in nodes:
        e = plan.by_node(n.attributes.get_string("entry"))
        assert n.name == e.node and n.attributes.get_string("layout") == e.layout
        assert n.op_type == (ops.CONV if e.op == "Conv" else ops.LINEAR)
        assert list(n.attributes.get_strings("epilogue")) == [s.op for s in e.epilogue]
        assert n.inputs[1].name.startswith(f"{e.weight}.{e.layout}.")
        assert not any(x.name in e.fused_nodes for x in am.graph)
    got = tools.evaluate(am, feeds)
    for out in m.graph.outputs:
        tools.assert_close(got[out.name], reference[out.name])
    compared = 0  # intermediates that kept their name and shape
    for name in (o.name for n in am.graph for o in n.outputs):
        if name in reference and reference[name].shape == got[name].shape:
            tools.assert_close(got[name], reference[name])
            compared += 1
    return am, plan, p, compared


def test_mlp_gemm_relu_2_4(tools):
    w1, b1, w2, b2 = two_four(128, 64), f32(128), two_four(32, 128), f32(32)
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1,
                              name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["y"], transB=1,
                              name="fc2")]
    m = tools.model(nodes, {"x": (4, 64)}, ["y"],
                    {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2})
    opts = CompileOptions(layouts={"fc1": "nm2:4", "fc2": "csr"})
    am, plan, p, compared = lower(tools, m, {"x": f32(4, 64)}, opts)
    assert p.counts["nm"] == 1 and p.counts["csr"] == 1
    assert tools.op_types(am) == ["SparseLinear", "SparseLinear"]
    assert [n.outputs[0].name for n in am.graph] == ["r", "y"]  # last fused values' names
    assert {"fc1.weight.nm2:4.values", "fc1.weight.nm2:4.indices", "fc2.weight.csr.values",
            "fc2.weight.csr.indices", "fc2.weight.csr.indptr"} <= set(am.graph.initializers)
    assert "fc1.weight" not in am.graph.initializers  # the original weights are gone
    assert am.graph.node("fc1").inputs[-1].name == "fc1.bias"  # an [out] bias is reused
    assert compared == 2  # r and y


def test_matmul_blocks_bias_residual(tools):
    wa = blocks(64, 128, 4, 4, 0.25)   # [out, in]; MatMul stores [in, out]
    wb = blocks(128, 64, 16, 1, 0.25)
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"], name="mm_a"),
             helper.make_node("Add", ["a", "ba"], ["ab"], name="bias_a"),
             helper.make_node("Relu", ["ab"], ["ar"], name="relu_a"),
             helper.make_node("MatMul", ["ar", "wb"], ["b"], name="mm_b"),
             helper.make_node("Add", ["b", "x"], ["y"], name="residual")]
    inits = {"wa": np.ascontiguousarray(wa.T), "ba": f32(1, 64), "wb": np.ascontiguousarray(wb.T)}
    m = tools.model(nodes, {"x": (2, 3, 128)}, ["y"], inits)
    opts = CompileOptions(layouts={"*": "bsr4x4", "wb": "bsr16x1"}, shrink_zero_channels=False)
    am, plan, p, _ = lower(tools, m, {"x": f32(2, 3, 128)}, opts)
    assert [e.layout for e in plan.entries] == ["bsr4x4", "bsr16x1"]
    assert [e.stats.block for e in plan.entries] == [(4, 4), (16, 1)]
    node_b = am.graph.node("mm_b")
    assert list(node_b.attributes.get_strings("epilogue")) == ["residual"]
    assert node_b.inputs[-1].name == "x"  # the residual operand
    assert am.graph.node("mm_a").inputs[-1].name == "mm_a.fused_bias"  # [1, 64] -> [64]


def test_convnet_bn_clip_depthwise_gap_gemm(tools):
    c0, c1, c2, nc = 3, 64, 128, 10
    inits = {"stem.weight": f32(c1, c0, 3, 3), "pw.weight": sparse((c2, c1, 1, 1), 0.1),
             "dw.weight": f32(c2, 1, 3, 3), "dw.bias": f32(c2),
             "fc.weight": f32(nc, c2), "fc.bias": f32(nc),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    for bn, c in (("bn1", c1), ("bn2", c2)):
        inits.update({f"{bn}.s": rng.uniform(0.5, 1.5, c).astype(np.float32), f"{bn}.b": f32(c),
                      f"{bn}.m": f32(c), f"{bn}.v": rng.uniform(0.5, 2, c).astype(np.float32)})
    bn = lambda p, x, y: helper.make_node(  # noqa: E731
        "BatchNormalization", [x, f"{p}.s", f"{p}.b", f"{p}.m", f"{p}.v"], [y], name=p)
    nodes = [
        helper.make_node("Conv", ["x", "stem.weight"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="stem"),
        bn("bn1", "c1", "n1"), helper.make_node("Clip", ["n1", "lo", "hi"], ["a1"], name="act1"),
        helper.make_node("Conv", ["a1", "pw.weight"], ["c2"], name="pw"),
        bn("bn2", "c2", "n2"), helper.make_node("Clip", ["n2", "lo", "hi"], ["a2"], name="act2"),
        helper.make_node("Conv", ["a2", "dw.weight", "dw.bias"], ["c3"], pads=[1, 1, 1, 1],
                         group=c2, name="dw"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1, name="fc"),
    ]
    m = tools.model(nodes, {"x": (2, c0, 16, 16)}, ["y"], inits)
    am, plan, p, compared = lower(tools, m, {"x": f32(2, c0, 16, 16)})
    layouts = {e.node: e.layout for e in plan.entries}
    assert layouts == {"stem": "dense", "pw": "chw-spmm", "fc": "dense"}
    assert [s.op for s in plan.by_node("pw").epilogue] == ["bias", "clip"]
    assert tools.op_types(am) == ["SparseConv", "SparseConv", "Conv", "GlobalAveragePool",
                                  "Flatten", "SparseLinear"]
    stem = am.graph.node("stem")
    assert list(stem.attributes.get_ints("pads")) == [1, 1, 1, 1]
    assert list(stem.attributes.get_ints("strides")) == [2, 2]
    assert stem.attributes.get_float("clip_max") == 6.0
    assert compared >= 5  # a1, a2, c3, g, f, y


def test_shrunk_gemm_then_lowered(tools):
    w1, b1, w2 = f32(96, 64), f32(96), sparse((64, 96), 0.05)
    w1[48:] = 0
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1, name="fc2")]
    m = tools.model(nodes, {"x": (8, 64)}, ["y"], {"w1": w1, "b1": b1, "w2": w2})
    am, plan, _, _ = lower(tools, m, {"x": f32(8, 64)})
    assert plan.by_node("fc1").removed_rows == 48
    assert [s.op for s in plan.by_node("fc2").epilogue] == ["bias"]  # created by shrinking
    assert am.graph.node("fc2").attributes.get_int("in_features") == 48


def test_gelu_erf_and_sigmoid(tools):
    w = sparse((256, 64), 0.05)
    w[:7] = 0
    consts = {"sqrt2": np.array(math.sqrt(2), np.float32), "one": np.array(1, np.float32),
              "half": np.array(0.5, np.float32), "w": np.ascontiguousarray(w.T), "b": f32(256),
              "w2": f32(64, 256) * 0.1}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
             helper.make_node("Div", ["hb", "sqrt2"], ["d"], name="div"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["t"], name="add1"),
             helper.make_node("Mul", ["hb", "t"], ["xt"], name="mul"),
             helper.make_node("Mul", ["xt", "half"], ["g"], name="half"),
             helper.make_node("Gemm", ["g", "w2"], ["z"], transB=1, name="fc"),
             helper.make_node("Sigmoid", ["z"], ["y"], name="sig")]
    m = tools.model(nodes, {"x": (16, 64)}, ["y"], consts)
    am, plan, _, _ = lower(tools, m, {"x": f32(16, 64)})
    assert [s.op for s in plan.by_node("mm").epilogue] == ["bias", "gelu"]
    zero_rows = int((w == 0).all(axis=1).sum())  # shrunk: gelu(b[o]) moves into fc's bias
    assert zero_rows > 0 and plan.by_node("mm").removed_rows == zero_rows
    assert [s.op for s in plan.by_node("fc").epilogue] == ["bias", "sigmoid"]
    assert plan.by_node("mm").layout == "csr"
    assert tools.op_types(am) == ["SparseLinear", "SparseLinear"]


def test_shared_weight_packs_once(tools):
    w = sparse((64, 64), 0.05)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], transB=1, name="fc_a"),
             helper.make_node("Gemm", ["a", "w"], ["y"], transB=1, name="fc_b")]
    m = tools.model(nodes, {"x": (2, 64)}, ["y"], {"w": w})
    am, plan, _, _ = lower(tools, m, {"x": f32(2, 64)}, CompileOptions(layouts={"*": "csr"},
                                                                   shrink_zero_channels=False))
    a, b = tools.sparse_nodes(am)
    assert [v.name for v in a.inputs[1:]] == [v.name for v in b.inputs[1:]]


def test_gemm_alpha_beta_transb0_and_conv_same_padding(tools):
    w = sparse((48, 96), 0.05)  # Gemm transB=0 stores [in, out]
    nodes = [helper.make_node("Conv", ["img", "cw", "cb"], ["c"], auto_pad="SAME_UPPER",
                              strides=[2, 2], dilations=[1, 1], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("Gemm", ["x", "gw", "gc"], ["y"], alpha=2.0, beta=0.5,
                              name="gemm")]
    inits = {"cw": sparse((64, 16, 3, 3), 0.1), "cb": f32(64), "gw": w, "gc": f32(1, 96)}
    m = tools.model(nodes, {"img": (1, 16, 9, 9), "x": (4, 48)}, ["s", "y"], inits)
    am, plan, _, _ = lower(tools, m, {"img": f32(1, 16, 9, 9), "x": f32(4, 48)},
                           CompileOptions(layouts={"*": "csr"}))
    conv = am.graph.node("conv")
    assert list(conv.attributes.get_ints("pads")) == [1, 1, 1, 1]
    assert list(conv.attributes.get_strings("epilogue")) == ["bias", "sigmoid"]
    gemm = am.graph.node("gemm")
    assert gemm.inputs[-1].name == "gemm.fused_bias"  # beta * C, reshaped to [out]
    assert (gemm.attributes.get_int("out_features"), gemm.attributes.get_int("in_features")) == (
        96, 48)
