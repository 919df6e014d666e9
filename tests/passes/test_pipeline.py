"""analyze / run: the step list, numerics end to end, errors naming pass, node and weight."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from sparsec.errors import CompileError, LayoutError
from sparsec.options import CompileOptions
from sparsec.passes import choose_layouts, pipeline
from sparsec.plan import Plan
from sparsec.targetspec import TargetSpec

rng = np.random.default_rng(10)
CPU = TargetSpec("cpu", "test cpu")


def mlp(tools):
    """x -> MatMul(Transpose(W1)) + b1 -> Relu -> Gemm(W2, b2) + x: folds, shrink, residual."""
    w1 = rng.standard_normal((128, 64)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.95] = 0
    w1[:16] = 0
    w2 = rng.standard_normal((64, 128)).astype(np.float32)
    w2[rng.random(w2.shape) < 0.5] = 0
    nodes = [helper.make_node("Transpose", ["fc1.weight"], ["w1t"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["x", "w1t"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "fc1.bias"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["z"], transB=1,
                              name="fc2"),
             helper.make_node("Add", ["z", "x"], ["y"], name="residual")]
    inits = {"fc1.weight": w1, "fc1.bias": rng.standard_normal(128).astype(np.float32),
             "fc2.weight": w2, "fc2.bias": rng.standard_normal(64).astype(np.float32)}
    return tools.model(nodes, {"x": (8, 64)}, ["y"], inits)


def test_analyze_then_run(tools):
    m = mlp(tools)
    snapshot = ir.serde.serialize_model(m).SerializeToString()
    x = rng.standard_normal((8, 64)).astype(np.float32)
    ref = tools.ort(m, {"x": x})["y"]
    steps: list[str] = []

    def on_step(name, model, plan):
        steps.append(name)
        tools.verify_each(name, model, plan)

    am, plan = pipeline.analyze(m, CompileOptions(), CPU, on_step=on_step)
    assert steps == ["cleanup", "name_nodes", "fold_transpose", "fold_batchnorm",
                     "cleanup_after_folds", "shapes", "analyze_sparsity", "mark_epilogues",
                     "shrink_zero_channels", "choose_layouts"]
    assert "Transpose" not in tools.op_types(am)
    tools.assert_close(tools.ort(am, {"x": x})["y"], ref)  # analyze keeps standard ONNX
    fc1, fc2 = plan.entries
    zero_rows = int((m.graph.initializers["fc1.weight"].const_value.numpy() == 0).all(1).sum())
    assert zero_rows >= 16 and fc1.removed_rows == zero_rows
    assert (fc1.node, fc1.weight, fc1.layout) == ("fc1", "fc1.weight", "csr")
    assert [s.op for s in fc1.epilogue] == ["bias", "relu"]
    assert [s.op for s in fc2.epilogue] == ["bias", "residual"] and fc2.layout == "dense"
    assert Plan.from_json(plan.to_json()) == plan

    steps.clear()
    lm, plan = pipeline.run(m, CompileOptions(), CPU, on_step=on_step)
    assert steps[-5:] == ["lower_sparse_ops", "fuse_depthwise", "fuse_head",
                          "transposed_matvec", "final_cleanup"]
    assert tools.op_types(lm) == ["SparseLinear", "SparseLinear"]
    assert set(lm.graph.initializers) == {
        "fc1.weight.csr.values", "fc1.weight.csr.indices", "fc1.weight.csr.indptr",
        "fc1.bias", "fc2.weight.dense.w", "fc2.bias"}
    tools.assert_close(tools.evaluate(lm, {"x": x})["y"], ref)
    # the caller's model is untouched
    assert ir.serde.serialize_model(m).SerializeToString() == snapshot


def test_options_turn_fusion_and_shrinking_off(tools):
    m = mlp(tools)
    opts = CompileOptions(fuse_epilogues=False, shrink_zero_channels=False)
    lm, plan = pipeline.run(m, opts, CPU, on_step=tools.verify_each)
    assert plan.entries[0].removed_rows == 0 and plan.entries[0].epilogue == []
    assert tools.op_types(lm) == ["SparseLinear", "Add", "Relu", "SparseLinear", "Add"]
    x = rng.standard_normal((8, 64)).astype(np.float32)
    tools.assert_close(tools.evaluate(lm, {"x": x})["y"], tools.ort(m, {"x": x})["y"])


def test_failure_names_pass_node_and_weight(tools, monkeypatch):
    def boom(wop):
        raise RuntimeError("no rows today\nsecond line")

    monkeypatch.setattr(choose_layouts, "kernel_rows", boom)
    with pytest.raises(CompileError) as info:
        pipeline.analyze(mlp(tools), CompileOptions(), CPU)
    assert str(info.value) == ("pass choose_layouts failed on node fc1 (weight fc1.weight): "
                               "RuntimeError: no rows today")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_layout_error_passes_through(tools):
    with pytest.raises(LayoutError, match=r"nm2:4 for node fc2 \(weight fc2.weight\)"):
        pipeline.run(mlp(tools), CompileOptions(layouts={"fc2": "nm2:4"}), CPU)
