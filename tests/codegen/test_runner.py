"""The VM runner hands outputs to numpy without a copy, except when an output shares memory
with an input or a weight: writing to a result must never change the model or the input."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import sparsec


def _model(nodes, inits=()):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_results_are_independent_of_inputs_weights_and_each_other():
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    cm = sparsec.compile(_model(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["c"], ["z"])],
        [numpy_helper.from_array(c, "c")]))
    x = np.ones((2, 3), np.float32)
    y, z = cm(x)
    y[...] = 7
    z[...] = 9
    assert np.all(x == 1)  # the input is untouched
    y2, z2 = cm(x)
    np.testing.assert_array_equal(y2, x)
    np.testing.assert_array_equal(z2, c)  # the weight is untouched


def test_fresh_outputs_survive_the_next_call():
    cm = sparsec.compile(_model([helper.make_node("Relu", ["x"], ["y"]),
                                 helper.make_node("Neg", ["x"], ["z"])]))
    a = np.ones((2, 3), np.float32)
    y1, _ = cm(a)
    y2, _ = cm(-a)
    np.testing.assert_array_equal(y1, np.ones((2, 3)))  # not overwritten by the second call
    np.testing.assert_array_equal(y2, np.zeros((2, 3)))


def test_only_kernel_outputs_are_fresh():
    """A kernel's output is handed out as is; an input, a weight, or a second name for an
    output (Identity, Reshape: views in the VM) is copied, so the two results stay apart."""
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    cases = {
        "kernel and its view": ([helper.make_node("Relu", ["x"], ["y"]),
                                 helper.make_node("Identity", ["y"], ["z"])], [True, False]),
        "input and weight": ([helper.make_node("Identity", ["x"], ["y"]),
                              helper.make_node("Identity", ["c"], ["z"])], [False, False]),
        "two kernels": ([helper.make_node("Relu", ["x"], ["y"]),
                         helper.make_node("Neg", ["x"], ["z"])], [True, True]),
    }
    for name, (nodes, fresh) in cases.items():
        cm = sparsec.compile(_model(nodes, [numpy_helper.from_array(c, "c")]))
        assert [o["fresh"] for o in cm.outputs] == fresh, name
        y, z = cm(np.ones((2, 3), np.float32))
        y[...] = 7
        assert not np.any(z == 7), name  # writing one result leaves the other alone
