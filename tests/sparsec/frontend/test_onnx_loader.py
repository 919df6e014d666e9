"""Every bad ONNX input ends in one ModelError/UsageError line that names the problem."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import ModelError, UsageError
from sparsec.frontend import load


def _mlp(dims=(2, 8), opset=17, elem=TensorProto.FLOAT):
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", elem, list(dims))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_good_model_gets_concrete_shapes(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(_mlp(("N", 8)).SerializeToString())
    cap = load(str(p), {"x": (3, 8)})
    assert cap.name == "m.onnx" and cap.kind == "onnx"
    assert [int(d) for d in cap.model.graph.inputs[0].shape] == [3, 8]
    assert [int(d) for d in cap.model.graph.outputs[0].shape] == [3, 4]


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\x08\x07\x12\x04junk-not-onnx" * 3, "not a valid ONNX model"),
    (b"hello, I am a text file\n", "not a valid ONNX model"),
])
def test_unreadable_files(tmp_path, content, match):
    p = tmp_path / "bad.onnx"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        load(str(p))


def test_truncated_file(tmp_path):
    data = _mlp().SerializeToString()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated|not a valid"):
        load(str(p))


def test_checker_failure():
    m = _mlp()
    m.graph.node[0].input[1] = "nowhere"
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        load(m)


@pytest.mark.parametrize("opset", [7, 30])
def test_opset_out_of_range(opset):
    m = _mlp(opset=opset)
    with pytest.raises(ModelError, match=f"opset {opset}"):
        load(m)


def test_control_flow_refused():
    m = _mlp()
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "t", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 8])])
    cond = numpy_helper.from_array(np.array(True), "c")
    m.graph.initializer.append(cond)
    m.graph.node.append(helper.make_node("If", ["c"], ["z"], name="branch",
                                         then_branch=then, else_branch=then))
    with pytest.raises(ModelError, match="control flow.*If.*branch"):
        load(m)


def test_non_float_input():
    with pytest.raises(ModelError, match="input 'x' has dtype int64"):
        load(_mlp(elem=TensorProto.INT64))


def test_float64_weight():
    m = _mlp()
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((8, 4)), "w"))
    with pytest.raises(ModelError, match="initializer 'w' has dtype float64"):
        load(m)


def test_symbolic_dims_need_a_shape():
    with pytest.raises(ModelError, match=r"input 'x'.*--input-shape x=Nx8"):
        load(_mlp(("batch", 8)))


def test_shape_given_must_fit():
    with pytest.raises(UsageError, match="rank"):
        load(_mlp(("N", 8)), {"x": (2, 8, 1)})
    with pytest.raises(UsageError, match="contradicts"):
        load(_mlp(("N", 8)), {"x": (2, 9)})
    with pytest.raises(UsageError, match="has inputs: x"):
        load(_mlp(), {"y": (2, 8)})


def test_not_a_model_object():
    with pytest.raises(UsageError, match="cannot compile a int"):
        load(42)
