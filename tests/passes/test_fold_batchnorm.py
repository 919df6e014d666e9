"""BN(Conv(x)) -> Conv'(x): same outputs (onnxruntime), one node fewer, names kept."""

from __future__ import annotations

import numpy as np
from onnx import helper

from sparsec.passes.fold_batchnorm import FoldBatchNormPass, match_conv_bn
from sparsec.passes.invariants import verify

rng = np.random.default_rng(3)


def bn_inits(prefix: str, c: int) -> dict[str, np.ndarray]:
    return {f"{prefix}.s": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}.b": rng.standard_normal(c).astype(np.float32),
            f"{prefix}.m": rng.standard_normal(c).astype(np.float32),
            f"{prefix}.v": rng.uniform(0.2, 2.0, c).astype(np.float32)}


def bn(prefix: str, x: str, y: str, **kw):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in "sbmv"], [y],
                            name=prefix, **kw)


def test_folds_conv_without_and_with_bias_and_depthwise(tools):
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
             "b2": rng.standard_normal(8).astype(np.float32),
             "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
             **bn_inits("bn1", 8), **bn_inits("bn2", 8), **bn_inits("bn3", 8)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        bn("bn1", "c1", "n1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        bn("bn2", "c2", "n2"),
        helper.make_node("Conv", ["n2", "wd"], ["c3"], group=8, pads=[1, 1, 1, 1], name="dw"),
        bn("bn3", "c3", "y"),
    ]
    m = tools.model(nodes, {"x": (2, 3, 6, 6)}, ["y"], inits)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    before = tools.ort(m, {"x": x})
    p = FoldBatchNormPass()
    assert p(m).modified
    verify(m)
    assert p.counts["folded"] == 3
    assert tools.op_types(m) == ["Conv", "Relu", "Conv", "Conv"]
    # the conv outputs took over the BN outputs' names; the graph output is still "y"
    assert [n.outputs[0].name for n in m.graph] == ["n1", "r1", "n2", "y"]
    # weights kept their names (updated in place); the new bias is named after the node
    assert [n.inputs[1].name for n in m.graph if n.op_type == "Conv"] == ["w1", "w2", "wd"]
    assert m.graph.node(0).inputs[2].name == "conv1.bias"
    tools.assert_close(tools.ort(m, {"x": x})["y"], before["y"])
    assert not FoldBatchNormPass()(m).modified


def test_not_folded_when_conv_output_is_shared_or_bn_trains(tools):
    inits = {"w": rng.standard_normal((4, 4, 1, 1)).astype(np.float32), **bn_inits("bn", 4)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        bn("bn", "c", "n"),
        helper.make_node("Add", ["n", "c"], ["y"], name="add"),
    ]
    m = tools.model(nodes, {"x": (1, 4, 3, 3)}, ["y"], inits)
    reason = match_conv_bn(m.graph.node(1))
    assert "conv" in reason and "other users" in reason
    p = FoldBatchNormPass()
    assert not p(m).modified and p.counts["folded"] == 0

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             bn("bn", "c", "y", training_mode=1)]
    m = tools.model(nodes, {"x": (1, 4, 3, 3)}, ["y"], inits)
    assert "training mode" in match_conv_bn(m.graph.node(1))


def test_shared_weight_is_copied_not_overwritten(tools):
    inits = {"w": rng.standard_normal((4, 4, 1, 1)).astype(np.float32), **bn_inits("bn", 4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             bn("bn", "c", "a"),
             helper.make_node("Conv", ["x", "w"], ["b"], name="other"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    m = tools.model(nodes, {"x": (1, 4, 3, 3)}, ["y"], inits)
    x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    before = tools.ort(m, {"x": x})["y"]
    assert FoldBatchNormPass()(m).modified
    verify(m)
    assert m.graph.node("conv").inputs[1].name == "w_1"
    assert m.graph.node("other").inputs[1].name == "w"
    np.testing.assert_array_equal(m.graph.initializers["w"].const_value.numpy(), inits["w"])
    tools.assert_close(tools.ort(m, {"x": x})["y"], before)
