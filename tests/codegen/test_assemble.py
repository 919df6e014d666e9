"""An output stacked from kernel results is written in place: each kernel writes its slice
of the output, and no kernel copies the pieces together (``codegen/tvm/assemble.py``)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")

import sparsec  # noqa: E402
from sparsec.codegen.tvm.assemble import MARKER, mark_assembled  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402


def _model(axis: int = 0, x_shape=(2, 3, 4)):
    """``stacked`` = Concat(Unsqueeze(a), Unsqueeze(b), Unsqueeze(x), Unsqueeze(b)) on
    ``axis``, with a = Relu(x) and b = Sigmoid(x) kernel outputs, x an input, and ``b``
    twice; ``a`` is also an output of its own and ``e`` = Exp(a) reads it."""
    axes = numpy_helper.from_array(np.array([axis], np.int64), "axes")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Sigmoid", ["x"], ["b"]),
        helper.make_node("Exp", ["a"], ["e"]),
        *[helper.make_node("Unsqueeze", [t, "axes"], [f"{t}{i}"])
          for i, t in enumerate(["a", "b", "x", "b"])],
        helper.make_node("Concat", ["a0", "b1", "x2", "b3"], ["stacked"], axis=axis),
    ]
    out_shape = list(x_shape)
    out_shape.insert(axis, 4)
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("stacked", TensorProto.FLOAT, out_shape),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, list(x_shape)),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, list(x_shape))],
        [axes])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _reference(x, axis):
    a = np.maximum(x, 0)
    b = 1 / (1 + np.exp(-x))
    return np.stack([a, b, x, b], axis=axis), a, np.exp(a)


def _marker_calls(func) -> int:
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if isinstance(
        e, relax.ExternFunc) and str(e.global_symbol) == MARKER else None)
    return len(found)


def test_a_stack_on_the_leading_axis_is_marked():
    func, n = mark_assembled(from_onnx(_model(0), keep_params_in_input=False)["main"])
    assert n == 1 and _marker_calls(func) == 1


def test_a_stack_on_an_inner_axis_is_left_alone():
    """On axis 1 of [2, 4, 3, 4] the pieces interleave: no slice of the output is one
    piece's bytes."""
    func, n = mark_assembled(from_onnx(_model(1), keep_params_in_input=False)["main"])
    assert n == 0 and _marker_calls(func) == 0


@pytest.mark.parametrize("axis", [0, 1])
def test_results_match(axis):
    """Kernel outputs written in place (a, b), an input and a repeated piece copied in
    (x, and the second b from its slice at a byte offset); ``a`` as an output of its own
    (a view into ``stacked``) and read by another kernel (Exp)."""
    cm = sparsec.compile(_model(axis))
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for _ in range(2):  # the second call reuses the library's buffers
        got = cm(x)
        for g, want in zip(got, _reference(x, axis)):
            np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)


def test_no_kernel_copies_the_pieces_together():
    from sparsec.codegen.tvm.schedule import scheduled_module
    from sparsec.targets.cpu import tvm_target

    mod = scheduled_module(from_onnx(_model(0), keep_params_in_input=False), tvm_target())
    kernels = [gv.name_hint for gv, f in mod.functions_items()
               if not isinstance(f, relax.Function)]
    assert kernels and not any("concatenate" in k for k in kernels), kernels


def test_gpt2_present_is_assembled_in_place():
    """The decode step's ``present`` (the stack of every layer's keys and values)."""
    torch = pytest.importorskip("torch")
    from sparsec.models.zoo import gpt2
    from sparsec.models.zoo.export import to_onnx

    m, xs = gpt2.build_decode(**gpt2.TINY), gpt2.decode_inputs(**gpt2.TINY)
    with torch.no_grad():
        proto = to_onnx(m, xs)
        want = [t.numpy() for t in m(*xs)]
    func, n = mark_assembled(from_onnx(proto, keep_params_in_input=False)["main"])
    assert n == 1
    got = sparsec.compile(proto)(*[x.numpy() for x in xs])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
