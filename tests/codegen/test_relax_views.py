"""A slice read by two consumers is copied into each, so both fuse it and nothing copies
the sliced tensor out first (a KV cache split per layer, then into keys and values)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")

import sparsec  # noqa: E402
from sparsec.codegen.tvm.relax_views import (  # noqa: E402
    duplicate_shared_views,
    duplicate_shared_views_pass,
)
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402


def _cache_model():
    """past [1, 2, 3, 4, 8] (layers, keys/values, heads, positions, dims): the layer's slice
    is split into keys and values, each concatenated with a new position, as GPT-2's
    export reads its cache (TVM imports its Splits as one strided_slice per output)."""
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["past", "z", "one", "z"], ["layer0"]),
        helper.make_node("Squeeze", ["layer0", "z"], ["layer"]),  # [2, 3, 4, 8], two users
        helper.make_node("Slice", ["layer", "z", "one", "z"], ["k0"]),
        helper.make_node("Slice", ["layer", "one", "two", "z"], ["v0"]),
        helper.make_node("Squeeze", ["k0", "z"], ["k"]),
        helper.make_node("Squeeze", ["v0", "z"], ["v"]),
        helper.make_node("Concat", ["k", "new"], ["kc"], axis=1),
        helper.make_node("Concat", ["v", "new"], ["vc"], axis=1),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("past", TensorProto.FLOAT, [1, 2, 3, 4, 8]),
         helper.make_tensor_value_info("new", TensorProto.FLOAT, [3, 1, 8])],
        [helper.make_tensor_value_info("kc", TensorProto.FLOAT, [3, 5, 8]),
         helper.make_tensor_value_info("vc", TensorProto.FLOAT, [3, 5, 8])],
        [i64("z", [0]), i64("one", [1]), i64("two", [2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _ops(func) -> list[str]:
    names = []
    relax.analysis.post_order_visit(
        func, lambda e: names.append(str(e.op.name))
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return names


def test_shared_slices_are_copied_per_consumer():
    mod = from_onnx(_cache_model(), keep_params_in_input=False)
    before = _ops(mod["main"])
    _, copies = duplicate_shared_views(mod["main"])
    assert copies > 0
    new_mod = duplicate_shared_views_pass(mod)
    after = _ops(new_mod["main"])
    assert after.count("relax.concat") == before.count("relax.concat") == 2
    # each concatenation reads a chain of views of its own
    assert after.count("relax.strided_slice") + after.count("relax.squeeze") > (
        before.count("relax.strided_slice") + before.count("relax.squeeze"))
    assert relax.analysis.well_formed(new_mod) is not False  # (raises when ill-formed)


def test_fused_model_reads_the_cache_in_place_and_matches():
    from sparsec.codegen.tvm.schedule import scheduled_module
    from sparsec.targets.cpu import tvm_target

    mod = scheduled_module(from_onnx(_cache_model(), keep_params_in_input=False),
                           tvm_target())
    kernels = [gv.name_hint for gv, f in mod.functions_items()
               if not isinstance(f, relax.Function)]
    assert kernels and all("concatenate" in k for k in kernels), kernels  # no slice copies
    cm = sparsec.compile(_cache_model())
    rng = np.random.default_rng(0)
    past = rng.standard_normal((1, 2, 3, 4, 8)).astype(np.float32)
    new = rng.standard_normal((3, 1, 8)).astype(np.float32)
    kc, vc = cm(past, new)
    np.testing.assert_array_equal(kc, np.concatenate([past[0, 0], new], axis=1))
    np.testing.assert_array_equal(vc, np.concatenate([past[0, 1], new], axis=1))


def _split_model(sizes=None):
    """qkv [2, 4, 12] split on the last axis (into 3 equal parts, or ``sizes``), each part
    transposed: as BERT's ``qkv.chunk(3)`` before its heads are laid out."""
    inits, inputs = [], ["qkv"]
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        inputs.append("sizes")
    widths = sizes or [4, 4, 4]
    nodes = [helper.make_node("Split", inputs, ["q", "k", "v"], axis=2,
                              **({} if sizes else {"num_outputs": 3})),
             *[helper.make_node("Transpose", [t], [f"{t}t"], perm=[0, 2, 1]) for t in "qkv"]]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [2, 4, 12])],
        [helper.make_tensor_value_info(f"{t}t", TensorProto.FLOAT, [2, w, 4])
         for t, w in zip("qkv", widths)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("sizes", [None, [2, 4, 6]])
def test_split_outputs_fuse_into_their_consumers(sizes):
    from sparsec.codegen.tvm.relax_views import split_to_slices
    from sparsec.codegen.tvm.schedule import scheduled_module
    from sparsec.targets.cpu import tvm_target

    mod = from_onnx(_split_model(sizes), keep_params_in_input=False)
    assert "relax.split" in _ops(mod["main"])
    func, n = split_to_slices(mod["main"])
    assert n == 1 and "relax.split" not in _ops(func)
    kernels = [gv.name_hint for gv, f in scheduled_module(mod, tvm_target()).functions_items()
               if not isinstance(f, relax.Function)]
    assert len(kernels) == 3 and not any("split" in k for k in kernels), kernels
    qkv = np.random.default_rng(0).standard_normal((2, 4, 12)).astype(np.float32)
    got = sparsec.compile(_split_model(sizes))(qkv)
    parts = np.split(qkv, np.cumsum(sizes or [4, 4, 4])[:-1], axis=2)
    for g, want in zip(got, parts):
        np.testing.assert_array_equal(g, want.transpose(0, 2, 1))
