"""Error classes reached through the API (the CLI tests check the same lines and codes)."""

import platform
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.errors import (LayoutError, RunInputError, SparsecWarning, ToolchainError,
                            UnsupportedOpError, UsageError)


def _model(nodes, inits, x_shape=(2, 8), y_shape=(2, 4), domains=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))], inits)
    ops = [helper.make_opsetid("", 17), *[helper.make_opsetid(d, 1) for d in domains]]
    return helper.make_model(g, opset_imports=ops, ir_version=8)


def test_unsupported_op_names_node_and_nearest():
    m = _model([helper.make_node("Relu", ["x"], ["h"], name="r"),
                helper.make_node("FancyGemm", ["h"], ["y"], name="mystery", domain="com.acme")],
               [], y_shape=(2, 8), domains=["com.acme"])
    with pytest.raises(UnsupportedOpError, match=r"com.acme::FancyGemm \(node 'mystery'\).*nearest supported alternative: Gemm"):
        sparsec.compile(m)


def test_nan_weight_warns_and_stays_dense():
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    w[np.random.default_rng(1).random(w.shape) < 0.9] = 0
    w[0, 0] = np.nan
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
               [numpy_helper.from_array(w, "w")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cm = sparsec.compile(m)
    assert any(issubclass(c.category, SparsecWarning) and "NaN" in str(c.message) for c in caught)
    assert cm.report[0]["layout"] == "dense"
    assert cm.verification["ok"]  # NaN where onnxruntime has NaN


def test_forced_layout_that_does_not_fit_is_refused():
    w = np.ones((8, 4), np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
               [numpy_helper.from_array(w, "w")])
    with pytest.raises(LayoutError, match="mm"):
        sparsec.compile(m, layout="nm2:4")
    with pytest.raises(LayoutError, match="chw-spmm"):
        sparsec.compile(m, layout="chw-spmm")


def test_unknown_target_and_layout():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [], y_shape=(2, 8))
    with pytest.raises(UsageError, match="unknown target 'cpux'; did you mean 'cpu'"):
        sparsec.compile(m, target="cpux")
    with pytest.raises(UsageError, match="unknown layout"):
        sparsec.compile(m, layout="coo")


def test_missing_toolchain(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [], y_shape=(2, 8))
    with pytest.raises(ToolchainError, match="riscv64"):
        sparsec.compile(m)


def test_run_input_checks():
    w = np.ones((8, 4), np.float32)
    cm = sparsec.compile(_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                                [numpy_helper.from_array(w, "w")]))
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(cm(x), x @ w, rtol=1e-6)
    with pytest.raises(RunInputError, match="shape"):
        cm(np.ones((3, 8), np.float32))
    with pytest.raises(RunInputError, match="dtype float64"):
        cm(np.ones((2, 8)))
    with pytest.raises(RunInputError, match="unknown input 'z'"):
        cm(z=x)
    with pytest.raises(RunInputError, match="missing input"):
        cm()
    with pytest.raises(RunInputError, match="given twice"):
        cm(x, x=x)


@pytest.mark.parametrize("node,outputs,needle", [
    (helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean"], name="ln", axis=-1),
     ["y", "mean"], "Mean / InvStdDev"),
    (helper.make_node("BiasGelu", ["x", "b"], ["y"], name="bg", domain="com.microsoft"), ["y"],
     r"com.microsoft::BiasGelu \(node 'bg'\).*Add then Gelu"),
])
def test_refusals_name_the_reason(node, outputs, needle):
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "s"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 8] if o == "y" else [2, 1])
            for o in outputs]
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.microsoft", 1)], ir_version=8)
    with pytest.raises(UnsupportedOpError, match=needle):
        sparsec.compile(m)


def test_zero_d_and_empty_inputs():
    g = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"], name="mul")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    cm = sparsec.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    np.testing.assert_allclose(cm(np.ones((2, 3), np.float32), np.float32(3.0)), np.full((2, 3), 3.0))
