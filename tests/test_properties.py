"""Property tests: random small graphs with random sparsity, compiled with every layout
forced in turn, must match onnxruntime at rtol = atol = 1e-4 (or refuse the layout with a
LayoutError when it does not fit — never a silent densify, never a wrong number).

CI runs the default profile; a longer one: ``pytest tests/test_properties.py
--hypothesis-profile=long``.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec import verify
from sparsec.errors import LayoutError
from sparsec.formats import check_fits

settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("long", max_examples=200, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("ci")

ACTS = [None, "Relu", "Sigmoid", "Clip"]


@st.composite
def patterns(draw, rows, cols):
    """A weight [rows, cols] with one of the sparsity patterns sparsec recognises."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    kind = draw(st.sampled_from(["unstructured", "nm", "block", "zero_rows", "zero_cols",
                                 "all_zero", "dense"]))
    if kind == "unstructured":
        w *= rng.random(w.shape) < draw(st.sampled_from([0.02, 0.1, 0.3, 0.7]))
    elif kind == "nm":
        m = draw(st.sampled_from([m for m in (2, 4, 8) if cols % m == 0] or [1]))
        if m > 1:
            n = draw(st.integers(1, m - 1))
            keep = np.argsort(rng.random((rows, cols // m, m)), axis=2)[:, :, :n]
            mask = np.zeros((rows, cols // m, m), bool)
            np.put_along_axis(mask, keep, True, axis=2)
            w *= mask.reshape(rows, cols)
    elif kind == "block":
        r = draw(st.sampled_from([r for r in (1, 2, 4) if rows % r == 0]))
        c = draw(st.sampled_from([c for c in (1, 2, 4) if cols % c == 0]))
        w *= np.kron(rng.random((rows // r, cols // c)) < 0.3, np.ones((r, c))).astype(bool)
    elif kind == "zero_rows":
        w[rng.random(rows) < 0.5] = 0
    elif kind == "zero_cols":
        w[:, rng.random(cols) < 0.5] = 0
    elif kind == "all_zero":
        w[:] = 0
    return w


def _layouts(w2d, conv_1x1):
    return ["dense", "csr", "bsr4x4", "bsr2x1", "nm2:4", "nm1:2"] + (["chw-spmm"] if conv_1x1 else [])


def _act(nodes, inits, x, act):
    if act is None:
        return x
    ins = [x]
    if act == "Clip":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
        ins += ["lo", "hi"]
    nodes.append(helper.make_node(act, ins, ["act"], name="act"))
    return "act"


def _check_all_layouts(model, feeds, w2d, conv_1x1=False):
    want = verify.onnxruntime_outputs(model, feeds)
    for layout in _layouts(w2d, conv_1x1):
        fits = check_fits(w2d, layout) is None
        if not fits:
            with pytest.raises(LayoutError):
                sparsec.compile(model, layout=layout, verify=False)
            continue
        cm = sparsec.compile(model, layout=layout, verify=False)
        assert {r["layout"] for r in cm.report} == {layout}
        got = cm(**feeds)
        np.testing.assert_allclose(got, want["y"], rtol=1e-4, atol=1e-4, err_msg=layout)


@given(data=st.data(), rows=st.sampled_from([1, 3, 8]), k=st.sampled_from([4, 8, 12, 16]),
       o=st.sampled_from([1, 4, 6, 8]), use_gemm=st.booleans(), bias=st.booleans(),
       act=st.sampled_from(ACTS))
@settings(max_examples=8)
def test_linear(data, rows, k, o, use_gemm, bias, act):
    w = data.draw(patterns(o, k))
    nodes, inits = [], [numpy_helper.from_array(w if use_gemm else np.ascontiguousarray(w.T), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, o).astype(np.float32), "b"))
    if use_gemm:
        nodes.append(helper.make_node("Gemm", ins + (["b"] if bias else []), ["h"], name="fc",
                                      transB=1))
        h = "h"
    else:
        nodes.append(helper.make_node("MatMul", ins, ["h0"], name="fc"))
        h = "h0"
        if bias:
            nodes.append(helper.make_node("Add", ["h0", "b"], ["h"], name="bias"))
            h = "h"
    y = _act(nodes, inits, h, act)
    nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, o])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(rows * 31 + k).standard_normal((rows, k)).astype(np.float32)
    _check_all_layouts(model, {"x": x}, w)


@given(data=st.data(), n=st.sampled_from([1, 2]), c=st.sampled_from([1, 4, 8]),
       o=st.sampled_from([2, 4, 8]), hw=st.sampled_from([(5, 5), (8, 7), (1, 1)]),
       ksize=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]),
       act=st.sampled_from(ACTS))
@settings(max_examples=6)
def test_conv(data, n, c, o, hw, ksize, stride, pad, act):
    if hw[0] + 2 * pad < ksize or hw[1] + 2 * pad < ksize:
        return
    w2d = data.draw(patterns(o, c * ksize * ksize))
    w = w2d.reshape(o, c, ksize, ksize)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.linspace(-1, 1, o).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", kernel_shape=[ksize] * 2,
                              strides=[stride] * 2, pads=[pad] * 4)]
    y = _act(nodes, inits, "h", act)
    nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    oh = (hw[0] + 2 * pad - ksize) // stride + 1
    ow = (hw[1] + 2 * pad - ksize) // stride + 1
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, *hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, o, oh, ow])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(c * 7 + o).standard_normal((n, c, *hw)).astype(np.float32)
    one_by_one = ksize == 1 and stride == 1 and pad == 0
    _check_all_layouts(model, {"x": x}, w2d, conv_1x1=one_by_one)
    if not one_by_one:  # XNNPACK's layout is for 1x1 convs only: a refusal, not a densify
        with pytest.raises(LayoutError, match="chw-spmm"):
            sparsec.compile(model, layout="chw-spmm", verify=False)
