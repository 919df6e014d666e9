"""The plan's GEMM rows reach the csr kernel: a batch big enough for column panels gets its
weight stored panel by panel (``linear_csr.prepare``), and the model still matches
onnxruntime; at batch 1 the weight stays row-major."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

import sparsec

pytest.importorskip("tvm")


def _linear_model(rows: int, k: int = 600, out: int = 48):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, out)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0.0
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, out])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w


@pytest.mark.parametrize("rows,panels", [(64, True), (1, False)])
def test_plan_rows_choose_the_csr_storage(tmp_path, rows, panels):
    model, w = _linear_model(rows)
    cm = sparsec.compile(model, layouts={"*": "csr"})  # verified against onnxruntime
    x = np.random.default_rng(1).standard_normal((rows, w.shape[0])).astype(np.float32)
    np.testing.assert_allclose(cm(x), x @ w, rtol=1e-4, atol=1e-4)
    names = set(load_file(str(cm.save(tmp_path / "m") / "weights.safetensors")))
    assert any(n.endswith(".pptr") for n in names) == panels
    assert any(n.endswith(".indptr") for n in names) != panels
