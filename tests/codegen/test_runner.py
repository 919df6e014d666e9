"""The VM runner hands outputs to numpy without a copy, except when an output shares memory
with an input or a weight: writing to a result must never change the model or the input."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.errors import ArtifactError


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


def _misaligned(a: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``a`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _spy_on_inputs(cm) -> list[int]:
    """Data addresses of the tensors the runner hands to the library, call by call."""
    seen, real = [], cm._runner._from_dlpack

    def spy(x, **kw):
        seen.append(x.ctypes.data)
        return real(x, **kw)

    cm._runner._from_dlpack = spy
    return seen


def test_inputs_are_used_where_numpy_put_them():
    """numpy aligns to 16 bytes, TVM's code to 64 unless told otherwise (``unaligned``): an
    input 4, 16 or 32 bytes past a boundary is read in place, not copied, and gives the same
    result. A sparse kernel, a dense GEMM and TVM's own softmax all read ``x`` directly."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 96)) * (rng.random((64, 96)) < 0.2)).astype(np.float32)
    wd = rng.standard_normal((64, 96)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["s"], transB=1),
         helper.make_node("Gemm", ["x", "wd"], ["d"], transB=1),
         helper.make_node("Softmax", ["x"], ["p"], axis=-1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 96])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
         for n, s in (("s", [8, 64]), ("d", [8, 64]), ("p", [8, 96]))],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(wd, "wd")])
    cm = sparsec.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                         layouts={"w": "csr", "wd": "dense"})
    assert [i["align"] for i in cm.inputs] == [4]
    x = rng.standard_normal((8, 96)).astype(np.float32)
    want = cm(_misaligned(x, 0))
    seen = _spy_on_inputs(cm)
    for offset in (4, 16, 32):
        xm = _misaligned(x, offset)
        got = cm(xm)
        assert seen[-1] == xm.ctypes.data, offset  # no copy
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_input_misaligned_for_its_element_is_copied():
    """2 bytes past a boundary a float32 is misaligned even for its element (numpy's
    ``aligned`` flag is off): the runner hands the library an aligned copy."""
    from sparsec.codegen.tvm.runner import _aligned

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    xm = _misaligned(x, 2)
    assert not xm.flags.aligned
    y = _aligned(xm, 4)
    assert y.ctypes.data % 64 == 0
    np.testing.assert_array_equal(y, x)
    assert _aligned(_misaligned(x, 4), 4).ctypes.data % 64 == 4  # in place
    assert _aligned(_misaligned(x, 4), 64).ctypes.data % 64 == 0  # copied
    cm = sparsec.compile(_model([helper.make_node("Relu", ["x"], ["y"]),
                                 helper.make_node("Neg", ["x"], ["z"])]))
    y, z = cm(xm)
    np.testing.assert_array_equal(z, -x)


def test_artifact_without_input_alignment_gets_aligned_copies(tmp_path):
    """An artifact from before ``unaligned`` has no ``align`` in its manifest: its library
    assumes 64 bytes, so the runner copies a misaligned input."""
    import json

    cm = sparsec.compile(_model([helper.make_node("Relu", ["x"], ["y"]),
                                 helper.make_node("Neg", ["x"], ["z"])]))
    path = cm.save(tmp_path / "m.sparsec")
    manifest = json.loads((path / "manifest.json").read_text())
    for spec in manifest["inputs"]:
        del spec["align"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    old = sparsec.load(path)
    seen = _spy_on_inputs(old)
    x = _misaligned(np.arange(-3, 3, dtype=np.float32).reshape(2, 3), 16)
    y, z = old(x)
    assert seen[-1] % 64 == 0 and seen[-1] != x.ctypes.data
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(z, -x)


@pytest.mark.parametrize("key,value", [
    ("align", 0), ("align", 3), ("align", 128), ("align", "4"), ("align", True),
    ("dtype", "float99"), ("dtype", None), ("shape", [2, -3]), ("shape", "2x3"), ("name", 7),
])
def test_malformed_input_specs_are_one_clear_error(tmp_path, key, value):
    """The manifest is not covered by the checksums, and the runner trusts its input specs
    (an alignment of 0 divided by zero, 128 asked DLPack for more than the copy gives)."""
    import json

    cm = sparsec.compile(_model([helper.make_node("Relu", ["x"], ["y"]),
                                 helper.make_node("Neg", ["x"], ["z"])]))
    path = cm.save(tmp_path / "m.sparsec")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["inputs"][0][key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"invalid {'alignment' if key == 'align' else key}"):
        sparsec.load(path)
