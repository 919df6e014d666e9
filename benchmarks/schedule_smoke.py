"""Smoke benchmark of the CPU schedule rules (``sparsec.codegen.tvm.schedule``).

Times, as the median of repeated interleaved calls in one process, five dense graphs that TVM lowers
itself: TVM with ``relax_pipeline(target)``, TVM with its default pipeline (unscheduled
PrimFuncs), and onnxruntime. Prints a table of milliseconds and the ratio to onnxruntime.

Run: ``python benchmarks/schedule_smoke.py [--repeat N] [--threads T] [--skip-default]``.
Not a test. The default pipeline takes seconds per call on the matmul; it is timed with
fewer repeats.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from sparsec.codegen.tvm.schedule import relax_pipeline


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(
        nodes,
        "bench",
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


def cases(rng: np.random.Generator):
    """(name, model, feeds) for each benchmarked graph."""
    f32 = np.float32
    yield (
        "matmul 128x1024 . 1024x1024",
        _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
               [("a", [128, 1024]), ("b", [1024, 1024])], [("y", [128, 1024])]),
        {"a": rng.standard_normal((128, 1024)).astype(f32),
         "b": rng.standard_normal((1024, 1024)).astype(f32)},
    )
    shp = [1, 12, 128, 64]
    yield (
        "attention [1,12,128,64]",
        _model(
            [
                helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                helper.make_node("MatMul", ["q", "kt"], ["s"]),
                helper.make_node("Mul", ["s", "scale"], ["ss"]),
                helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
                helper.make_node("MatMul", ["p", "v"], ["y"]),
            ],
            [("q", shp), ("k", shp), ("v", shp)],
            [("y", shp)],
            [_const("scale", 1.0 / math.sqrt(64))],
        ),
        {n: rng.standard_normal(shp).astype(f32) for n in "qkv"},
    )
    yield (
        "depthwise 3x3 [1,144,56,56]",
        _model(
            [helper.make_node("Conv", ["x", "w"], ["y"], group=144, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])],
            [("x", [1, 144, 56, 56])], [("y", [1, 144, 56, 56])],
            [_const("w", rng.standard_normal((144, 1, 3, 3)))],
        ),
        {"x": rng.standard_normal((1, 144, 56, 56)).astype(f32)},
    )
    yield (
        "layernorm [128,768]",
        _model(
            [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1,
                              epsilon=1e-5)],
            [("x", [128, 768])], [("y", [128, 768])],
            [_const("g", rng.standard_normal(768)), _const("b", rng.standard_normal(768))],
        ),
        {"x": rng.standard_normal((128, 768)).astype(f32)},
    )
    yield (
        "softmax [12,128,128]",
        _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
               [("x", [12, 128, 128])], [("y", [12, 128, 128])]),
        {"x": rng.standard_normal((12, 128, 128)).astype(f32)},
    )


def _median_ms(fns, repeat: int) -> list[float]:
    """Median wall time of each callable in ms; calls interleave so all see the same load."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, acc in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _tvm_runner(model, feeds, target, pipeline):
    mod = from_onnx(model, keep_params_in_input=False)
    kwargs = {} if pipeline is None else {"relax_pipeline": pipeline}
    exe = tvm.compile(mod, target=target, **kwargs)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]
    return lambda: vm["main"](*args), lambda: vm["main"](*args).numpy()


def _ort_runner(model, feeds, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds), lambda: sess.run(None, feeds)[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-default", action="store_true",
                    help="do not time TVM's default (unscheduled) pipeline")
    ap.add_argument("--only", default="", help="substring of the case names to run")
    args = ap.parse_args(argv)
    # TVM's runtime pool defaults to hardware_concurrency / 2 on x86 (1 thread on a 2-vCPU
    # machine); it reads this once, at the first parallel launch, so set it before any run.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                                "num-cores": args.threads})
    rng = np.random.default_rng(0)
    rows = []
    for name, model, feeds in cases(rng):
        if args.only and args.only not in name:
            continue
        ort_run, ort_out = _ort_runner(model, feeds, args.threads)
        ours_run, ours_out = _tvm_runner(model, feeds, target, relax_pipeline(target))
        err = float(np.max(np.abs(ours_out() - ort_out())))
        t_ours, t_ort = _median_ms([ours_run, ort_run], args.repeat)
        t_def = float("nan")
        if not args.skip_default:
            def_run, _ = _tvm_runner(model, feeds, target, None)
            (t_def,) = _median_ms([def_run], max(3, args.repeat // 10))
        rows.append((name, t_ours, t_def, t_ort, err))
        print(f"done {name}", flush=True)

    print(f"\ntarget {target}, {args.threads} threads (TVM and onnxruntime), "
          f"median of {args.repeat} interleaved calls, ms")
    print(f"| case | tvm+schedule | tvm default | onnxruntime | schedule/ort | max abs err |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t_ours, t_def, t_ort, err in rows:
        print(f"| {name} | {t_ours:.3f} | {t_def:.3f} | {t_ort:.3f} | {t_ours / t_ort:.2f}x "
              f"| {err:.1e} |")


if __name__ == "__main__":
    main()
