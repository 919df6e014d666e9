"""sparsec.codegen.tvm.schedule: the CPU pipeline schedules every PrimFunc TVM lowers itself,
and the compiled graphs match onnxruntime (rtol = atol = 1e-4, fp32)."""

from __future__ import annotations

import collections
import math
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.special
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, tirx
from tvm.relax.frontend.onnx import from_onnx
from tvm.script import tirx as T

from sparsec.codegen.tvm.schedule import (
    Guarded,
    legalize_passes,
    relax_pipeline,
    schedule_pass,
    scheduled_module,
    undefined_buffers,
)
from sparsec.codegen.tvm.schedule_common import vector_lanes
from sparsec.codegen.tvm.schedule_conv import SpatialReduction
from sparsec.codegen.tvm.schedule_fastmath import rewrite_fast_math
from sparsec.codegen.tvm.schedule_fallback import Fallback
from sparsec.codegen.tvm.schedule_injective import Injective
from sparsec.codegen.tvm.schedule_matmul import Matmul
from sparsec.codegen.tvm.schedule_reduction import Reduction

RTOL = ATOL = 1e-4


def _target(cores: int = 2) -> tvm.target.Target:
    return tvm.target.Target(
        {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": cores}
    )


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


_W = np.random.default_rng(7)
node = helper.make_node

# name -> ONNX model (fp32); symbolic dims ("N") run with 5.
CASES = {
    "softmax": _model([node("Softmax", ["x"], ["y"], axis=-1)],
                      [("x", [4, 64, 64])], [("y", [4, 64, 64])]),
    "layernorm": _model(
        [node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)],
        [("x", [64, 256])], [("y", [64, 256])],
        [_const("g", _W.standard_normal(256)), _const("b", _W.standard_normal(256))]),
    "gelu_erf": _model(
        [node("Div", ["x", "sqrt2"], ["a"]), node("Erf", ["a"], ["e"]),
         node("Add", ["e", "one"], ["f"]), node("Mul", ["x", "f"], ["g"]),
         node("Mul", ["g", "half"], ["y"])],
        [("x", [64, 384])], [("y", [64, 384])],
        [_const("sqrt2", math.sqrt(2.0)), _const("one", 1.0), _const("half", 0.5)]),
    "attention_reshape_transpose": _model(
        [node("Reshape", ["x", "s1"], ["r"]), node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
         node("Transpose", ["t"], ["k"], perm=[0, 1, 3, 2]), node("MatMul", ["t", "k"], ["p"]),
         node("Softmax", ["p"], ["sm"], axis=-1), node("MatMul", ["sm", "t"], ["o"]),
         node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]), node("Reshape", ["ot", "s2"], ["y"])],
        [("x", [1, 64, 128])], [("y", [1, 64, 128])],
        [numpy_helper.from_array(np.array([1, 64, 4, 32], np.int64), "s1"),
         numpy_helper.from_array(np.array([1, 64, 128], np.int64), "s2")]),
    "batch_matmul": _model([node("MatMul", ["a", "b"], ["y"])],
                           [("a", [1, 4, 64, 32]), ("b", [1, 4, 32, 64])],
                           [("y", [1, 4, 64, 64])]),
    # Decode attention's probabilities x values: one row per head (the row loop is gone).
    "batch_matmul_one_row": _model([node("MatMul", ["a", "b"], ["y"])],
                                   [("a", [1, 4, 1, 33]), ("b", [1, 4, 33, 64])],
                                   [("y", [1, 4, 1, 64])]),
    "matmul_const_weight_bias": _model(
        [node("MatMul", ["x", "w"], ["m"]), node("Add", ["m", "b"], ["y"])],
        [("x", [24, 96])], [("y", [24, 80])],
        [_const("w", _W.standard_normal((96, 80))), _const("b", _W.standard_normal(80))]),
    "depthwise_conv": _model(
        [node("Conv", ["x", "w", "b"], ["y"], group=32, kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [("x", [1, 32, 28, 28])], [("y", [1, 32, 28, 28])],
        [_const("w", _W.standard_normal((32, 1, 3, 3))), _const("b", _W.standard_normal(32))]),
    "depthwise_conv_bias_hardswish": _model(  # epilogue reads the conv output twice
        [node("Conv", ["x", "w", "b"], ["c"], group=16, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         node("HardSwish", ["c"], ["y"])],
        [("x", [2, 16, 16, 16])], [("y", [2, 16, 16, 16])],
        [_const("w", _W.standard_normal((16, 1, 3, 3))), _const("b", _W.standard_normal(16))]),
    "grouped_conv_stride2": _model(
        [node("Conv", ["x", "w"], ["y"], group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
              strides=[2, 2])],
        [("x", [1, 32, 24, 24])], [("y", [1, 32, 12, 12])],
        [_const("w", _W.standard_normal((32, 8, 3, 3)))]),
    "global_avg_pool_flatten": _model(
        [node("GlobalAveragePool", ["x"], ["p"]), node("Flatten", ["p"], ["y"], axis=1)],
        [("x", [2, 64, 14, 14])], [("y", [2, 64])]),
    "clip_sigmoid": _model(
        [node("Clip", ["x", "lo", "hi"], ["c"]), node("Sigmoid", ["c"], ["y"])],
        [("x", [32, 512])], [("y", [32, 512])],
        [_const("lo", -2.0), _const("hi", 3.0)]),
    "add_mul_broadcast": _model(
        [node("Add", ["x", "b"], ["a"]), node("Mul", ["a", "s"], ["y"])],
        [("x", [8, 64, 48]), ("s", [8, 64, 1])], [("y", [8, 64, 48])],
        [_const("b", _W.standard_normal(48))]),
    "split_concat": _model(
        [node("Split", ["x", "sizes"], ["a", "b"], axis=1),
         node("Concat", ["b", "a", "z"], ["y"], axis=1)],
        [("x", [64, 128]), ("z", [64, 32])], [("y", [64, 160])],
        [numpy_helper.from_array(np.array([48, 80], np.int64), "sizes")]),
    "softmax_middle_axis": _model([node("Softmax", ["x"], ["y"], axis=1)],
                                  [("x", [3, 50, 20])], [("y", [3, 50, 20])]),
    "depthwise_conv_7x7_map": _model(
        [node("Conv", ["x", "w"], ["y"], group=64, kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [("x", [1, 64, 7, 7])], [("y", [1, 64, 7, 7])],
        [_const("w", _W.standard_normal((64, 1, 3, 3)))]),
    "dynamic_batch_matmul_layernorm_tanh": _model(
        [node("MatMul", ["x", "w"], ["m"]),
         node("LayerNormalization", ["m", "g", "b"], ["l"], axis=-1),
         node("Tanh", ["l"], ["y"])],
        [("x", ["N", 64])], [("y", ["N", 48])],
        [_const("w", _W.standard_normal((64, 48))), _const("g", _W.standard_normal(48)),
         _const("b", _W.standard_normal(48))]),
    "reduce_mean_axis1": _model(
        [node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)],
        [("x", [4, 64, 256])], [("y", [4, 1, 256])]),
}


def _feeds(model, rng):
    feeds = {}
    for inp in model.graph.input:
        shape = [d.dim_value or 5 for d in inp.type.tensor_type.shape.dim]  # symbolic: 5
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _loop_kinds(func: tirx.PrimFunc) -> collections.Counter:
    kinds = collections.Counter()
    tvm_ffi.structural_walk(func.body, [(tirx.For, lambda loop: kinds.update([loop.kind]))])
    return kinds


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_onnxruntime_and_is_scheduled(name):
    model = CASES[name]
    target = _target()
    feeds = _feeds(model, np.random.default_rng(0))

    # Every PrimFunc TVM lowered is scheduled, and the graph has a parallel or vector loop.
    scheduled = scheduled_module(from_onnx(model, keep_params_in_input=False), target)
    funcs = {gv.name_hint: f for gv, f in scheduled.functions_items()
             if isinstance(f, tirx.PrimFunc)}
    assert funcs
    unscheduled = [n for n, f in funcs.items() if not f.attrs.get("tirx.is_scheduled", False)]
    assert not unscheduled, f"{name}: unscheduled PrimFuncs {unscheduled}"
    for fname, f in funcs.items():
        assert not undefined_buffers(f), (name, fname)
    kinds = collections.Counter()
    for f in funcs.values():
        kinds.update(_loop_kinds(f))
    assert kinds[tirx.ForKind.VECTORIZED] + kinds[tirx.ForKind.PARALLEL] > 0, name

    exe = tvm.compile(from_onnx(model, keep_params_in_input=False), target=target,
                      relax_pipeline=relax_pipeline(target))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    refs = sess.run(None, feeds)
    assert len(outs) == len(refs)
    for got, ref in zip(outs, refs):
        np.testing.assert_allclose(got.numpy(), ref, rtol=RTOL, atol=ATOL, err_msg=name)


def test_heavy_ops_get_parallel_and_vector_loops():
    """The big-ticket PrimFuncs get both a parallel and a vectorized loop."""
    target = _target()
    for name in ("softmax", "layernorm", "batch_matmul", "depthwise_conv", "gelu_erf"):
        mod = scheduled_module(from_onnx(CASES[name], keep_params_in_input=False), target)
        kinds = collections.Counter()
        for _, f in mod.functions_items():
            if isinstance(f, tirx.PrimFunc):
                kinds.update(_loop_kinds(f))
        assert kinds[tirx.ForKind.PARALLEL] >= 1, name
        assert kinds[tirx.ForKind.VECTORIZED] >= 1, name


RULE_FOR = [  # (case, rule that must take its main PrimFunc, PrimFunc name substring)
    ("batch_matmul", Matmul, "matmul"),
    ("batch_matmul_one_row", Matmul, "matmul"),
    ("matmul_const_weight_bias", Matmul, "matmul"),
    ("softmax", Reduction, "softmax"),
    ("layernorm", Reduction, "layer_norm"),
    ("global_avg_pool_flatten", Reduction, "mean"),
    ("depthwise_conv", SpatialReduction, "conv2d"),
    ("depthwise_conv_bias_hardswish", SpatialReduction, "conv2d"),
    ("grouped_conv_stride2", SpatialReduction, "conv2d"),
    ("reduce_mean_axis1", SpatialReduction, "mean"),
    ("gelu_erf", Injective, "erf"),
    ("split_concat", Injective, "concat"),
    ("softmax_middle_axis", Fallback, "softmax"),
]


@pytest.mark.parametrize("case,rule,func_name", RULE_FOR)
def test_intended_rule_applies_cleanly(case, rule, func_name):
    """Each rule, unguarded, schedules its PrimFunc without raising or dangling buffers."""
    target = _target()
    with target:
        mod = tvm.transform.Sequential(legalize_passes(target))(
            from_onnx(CASES[case], keep_params_in_input=False))
    funcs = [f for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and func_name in gv.name_hint]
    assert len(funcs) == 1, case
    sch = rule().apply(funcs[0], target, False)
    assert sch is not None, (case, rule.__name__)
    assert not undefined_buffers(sch.mod["main"])


def test_already_scheduled_primfunc_is_left_alone():
    mod = from_onnx(CASES["softmax"], keep_params_in_input=False)
    target = _target()
    with target:
        mod = tvm.transform.Sequential(
            [relax.transform.LegalizeOps(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
        )(mod)
    marked = tvm.IRModule({gv: (f.with_attr("tirx.is_scheduled", True)
                                if isinstance(f, tirx.PrimFunc) else f)
                           for gv, f in mod.functions_items()})
    with target:
        out = schedule_pass(target)(marked)
    for gv, f in out.functions_items():
        if isinstance(f, tirx.PrimFunc):
            assert tvm_ffi.structural_equal(f, marked[gv])


def test_failing_rule_is_not_applicable():
    class Boom:
        def apply(self, func, target, tunable):
            raise RuntimeError("boom")

    mod = from_onnx(CASES["softmax"], keep_params_in_input=False)
    func = next(f for _, f in scheduled_module(mod, _target()).functions_items()
                if isinstance(f, tirx.PrimFunc))
    assert Guarded(Boom()).apply(func, _target(), False) is None


def _unary_kernel(fn, n: int):
    @T.prim_func(s_tir=True)
    def kernel(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
        for i0 in range(n // 16):
            for i1 in T.vectorized(16):
                with T.sblock("b"):
                    vi = T.axis.spatial(n, i0 * 16 + i1)
                    b[vi] = fn(a[vi])

    return kernel


@pytest.mark.parametrize(
    "name,lo,hi",
    [("exp", -87.0, 88.0), ("erf", -6.0, 6.0), ("sigmoid", -40.0, 40.0), ("tanh", -12.0, 12.0)],
)
def test_fast_math_accuracy(name, lo, hi):
    """The polynomial exp / erf / sigmoid / tanh stay within 1e-6 relative (or absolute for
    |y| < 1) of float64 references; exp is checked relative over its float range."""
    fn = {"exp": T.exp, "erf": T.erf, "sigmoid": T.sigmoid, "tanh": T.tanh}[name]
    ref = {"exp": np.exp, "erf": scipy.special.erf, "sigmoid": scipy.special.expit,
           "tanh": np.tanh}[name]
    n = 1 << 14
    func = rewrite_fast_math(_unary_kernel(fn, n))
    lib = tvm.compile(func, target=_target())
    x = np.linspace(lo, hi, n).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros(n, np.float32))
    lib(tvm.runtime.tensor(x), y)
    want = ref(x.astype(np.float64))
    err = np.abs(y.numpy() - want) / np.maximum(np.abs(want), 1.0 if name != "exp" else 1e-30)
    assert err.max() < 1e-6, (name, float(err.max()))


def test_vector_width_comes_from_target():
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    assert vector_lanes(avx2) == 8
    assert vector_lanes(avx512) == 16


def _heads_transpose(perm: list[int], out: list[int]):
    """x [1, 128, 768] as heads [1, 128, 12, 64], transposed by ``perm``: (its one
    scheduled PrimFunc, its loops innermost first, x, and what the compiled model gives)."""
    i64 = numpy_helper.from_array(np.array([1, 128, 12, 64], np.int64), "shape")
    model = _model([node("Reshape", ["x", "shape"], ["r"]),
                    node("Transpose", ["r"], ["y"], perm=perm)],
                   [("x", [1, 128, 768])], [("y", out)], [i64])
    mod = scheduled_module(from_onnx(model, keep_params_in_input=False), _target())
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    loops = []
    tvm_ffi.structural_walk(func.body, [(tirx.For, loops.append)])  # innermost first
    x = np.random.default_rng(0).standard_normal((1, 128, 768)).astype(np.float32)
    exe = tvm.compile(from_onnx(model, keep_params_in_input=False), target=_target(),
                      relax_pipeline=relax_pipeline(_target()))
    got = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    return func, loops, x, got


def test_injective_parallel_loop_fuses_only_what_it_needs():
    """[1, 128, 768] -> heads [1, 12, 128, 64]: the parallel loop covers heads x positions
    (1536 iterations, ``PARALLEL_ITERS`` is 64), the vectors of a head's row (8 on AVX2, 4
    on AVX-512) run serially inside it, and the result is still the transpose."""
    from sparsec.codegen.tvm.schedule_injective import PARALLEL_ITERS

    _func, loops, x, got = _heads_transpose([0, 2, 1, 3], [1, 12, 128, 64])
    parallel = [lp for lp in loops if lp.kind == tirx.ForKind.PARALLEL]
    assert len(parallel) == 1 and int(parallel[0].extent) == 12 * 128 >= PARALLEL_ITERS
    per_row = 64 // vector_lanes(_target())
    assert any(lp.kind == tirx.ForKind.SERIAL and int(lp.extent) == per_row for lp in loops)
    np.testing.assert_array_equal(got, x.reshape(1, 128, 12, 64).transpose(0, 2, 1, 3))


def test_transpose_walks_a_line_of_its_input_inside_the_vector_loop():
    """[1, 128, 768] -> [1, 12, 64, 128] (attention's k^T): vectorized over the 128
    positions, each vector loads a lane's worth of rows of x (8 on AVX2, 16 on AVX-512). A
    line of x's contiguous axis (16 floats of d) is walked inside the positions' vector loop
    (``tile_strided_read``)."""
    func, loops, x, got = _heads_transpose([0, 2, 3, 1], [1, 12, 64, 128])
    assert [(lp.kind, int(lp.extent)) for lp in loops][:2] == [
        (tirx.ForKind.VECTORIZED, vector_lanes(_target())), (tirx.ForKind.SERIAL, 16)]
    # the serial loop walks x's contiguous axis (its last index), not its rows
    text = func.script().splitlines()
    (load,) = [ln for ln in text if "= x[" in ln]
    block_vars = re.findall(r"\bv\d+\b", load.rsplit(",", 1)[1])
    bindings = [ln for ln in text if any(ln.strip().startswith(f"{v} = T.axis")
                                         for v in block_vars)]
    assert any(str(loops[1].loop_var.name) in ln for ln in bindings), (load, bindings)
    np.testing.assert_array_equal(got, x.reshape(1, 128, 12, 64).transpose(0, 2, 3, 1))
