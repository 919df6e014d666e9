"""Smoke benchmark of the SparseLinear TIR kernels (``sparsec.codegen.tvm.kernels.linear_*``).

For each case (layout, weight [out, in], density, rows) it builds the kernel alone
(``prepare`` + ``build`` + ``tvm.compile``), times it, checks it against numpy, and compares
with onnxruntime dense MatMul, numpy dense (``x @ W.T``) and, for sparse layouts, scipy CSR
(``W_csr @ x.T``, one thread). Prints a table of median milliseconds and the kernel's ratio to
onnxruntime.

numpy and scipy run first, in a child process: numpy's OpenBLAS threads keep competing for
the cores long after their last call (on a 2-core machine that halves TVM's parallel loops),
so they never share a process with the kernels. The kernel and onnxruntime alternate, in
blocks of calls (see ``median_ms``), so their ratio sees the same machine load.

Run: ``python benchmarks/kernel_smoke.py [--repeat N] [--threads T] [--rows R ...] [--only S]``.
Not a test. The machines are shared: quote ratios, and rerun when the numbers look odd.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import numpy as np
import tvm

from sparsec.codegen.tvm.kernels import kernel_for
from sparsec.codegen.tvm.stack_locals import compile_kernel
from sparsec.formats import pack, unpack
from sparsec.layouts import parse_layout
from sparsec.ops import SparseOpSpec
from sparsec.timing import ort_session

# (layout, out, in, density); every case runs at each --rows.
CASES = [
    ("dense", 1024, 1024, 1.0),
    ("dense", 4096, 4096, 1.0),
    ("csr", 4096, 4096, 0.1),
    ("bsr4x4", 4096, 4096, 0.1),
    ("nm2:4", 4096, 4096, 0.5),
]


def host_target(threads: int) -> tvm.target.Target:
    """The host as ``sparsec compile`` sees it (``targets/cpu.py``), with ``threads`` cores."""
    from sparsec.targets.cpu import detect_host

    return tvm.target.Target({"kind": "llvm", "mcpu": detect_host().mcpu, "num-cores": threads})


def weight(layout: str, out: int, inp: int, density: float, rng) -> np.ndarray:
    lay = parse_layout(layout)
    w = rng.standard_normal((out, inp)).astype(np.float32)
    if lay.kind == "bsr":
        r, c = lay.params
        keep = rng.random((out // r, inp // c)) < density
        return w * np.kron(keep, np.ones((r, c), np.float32))
    if lay.kind == "nm":
        n, m = lay.params
        groups = w.reshape(out, inp // m, m)
        order = np.argsort(-np.abs(groups), axis=2)
        np.put_along_axis(groups, order[:, :, n:], 0.0, axis=2)
        return w
    return w * (rng.random((out, inp)) < density) if density < 1.0 else w


def kernel_runner(layout, w, x, target):
    """(call, output, build seconds, packed weight) of the compiled kernel on fixed inputs."""
    packed = pack(w, layout)
    spec = SparseOpSpec("SparseLinear", layout, w.shape[0], w.shape[1], "bench", [],
                        list(packed.arrays))
    kdef = kernel_for(spec)
    t0 = time.perf_counter()
    arrays = kdef.prepare(spec, packed.arrays, target)
    func = kdef.build(spec, x.shape, arrays, target, None)
    fn = compile_kernel(func, target)["main"]
    seconds = time.perf_counter() - t0
    args = [tvm.runtime.tensor(a) for a in (x, *arrays.values())]
    y = tvm.runtime.tensor(np.zeros((x.shape[0], w.shape[0]), np.float32))
    return (lambda: fn(*args, y)), (lambda: (fn(*args, y), y.numpy())[1]), seconds, packed


def ort_runner(w, x, threads):
    from benchmarks.kernels import onnx_matmul

    sess = ort_session(onnx_matmul(w, x.shape[0]), threads)
    return lambda: sess.run(None, {"x": x})


def median_ms(fns, repeat: int, rounds: int = 3) -> list[float]:
    """Median wall time of each callable in ms.

    Calls run in blocks (one warm-up, then ``repeat / rounds`` timed calls) with a pause
    between blocks: TVM, onnxruntime and numpy's BLAS each keep a spinning thread pool, and
    interleaving single calls makes each pay for the others' spinning on a 2-core machine.
    The rounds of blocks spread the machine's changing load over all of them.
    """
    times = [[] for _ in fns]
    per_block = max(1, repeat // rounds)
    for _ in range(rounds):
        for fn, acc in zip(fns, times):
            time.sleep(0.05)
            fn()
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def case_data(layout, out, inp, density, rows, seed):
    """The weight and input of one case, the same in every process."""
    rng = np.random.default_rng(seed)
    w = weight(layout, out, inp, density, rng)
    return np.ascontiguousarray(w), rng.standard_normal((rows, inp)).astype(np.float32)


def numpy_times(cases, repeat: int) -> list[list[float]]:
    """[numpy dense, scipy csr] ms per case (scipy nan for dense); runs in the child process."""
    import scipy.sparse as sp

    result = []
    for case in cases:
        w, x = case_data(*case)
        w_csr = sp.csr_matrix(w)
        fns = [lambda: x @ w.T] + ([lambda: w_csr @ x.T] if case[0] != "dense" else [])
        result.append([*median_ms(fns, _repeat(repeat, case[4], case[1])), float("nan")][:2])
    return result


def _repeat(repeat: int, rows: int, out: int) -> int:
    return repeat if rows < 64 or out < 4096 else max(3, repeat // 2)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--only", default="", help="substring of the layout names to run")
    args = ap.parse_args(argv)
    cases = [
        (layout, out, inp, density, rows, seed)
        for seed, (layout, out, inp, density) in enumerate(CASES)
        if not args.only or args.only in layout
        for rows in args.rows
    ]

    # 1. numpy and scipy, in a child process (see the module docstring).
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peers = pool.apply(numpy_times, (cases, args.repeat))
    print("numpy and scipy timed", flush=True)

    # 2. The kernels, in blocks alternating with onnxruntime. TVM's pool defaults to
    # hardware_concurrency / 2 threads on x86 (1 on a 2-vCPU VM); configure it before the
    # first parallel launch of this thread.
    tvm.get_global_func("runtime.config_threadpool")(
        -3, args.threads, [str(i) for i in range(os.cpu_count() or 1)])
    target = host_target(args.threads)
    kernels = []
    for layout, out, inp, density, rows, seed in cases:
        w, x = case_data(layout, out, inp, density, rows, seed)
        run, output, build_s, packed = kernel_runner(layout, w, x, target)
        t_kernel, t_ort = median_ms([run, ort_runner(w, x, args.threads)],
                                    _repeat(args.repeat, rows, out))
        kernels.append((t_kernel, t_ort, build_s, output(), x, packed))
        print(f"done {layout} {out}x{inp} rows={rows}", flush=True)

    # 3. Errors, after all timing (numpy's BLAS starts its threads here).
    print(f"\ntarget {target.attrs.get('mcpu')}, {args.threads} threads (TVM and onnxruntime), "
          f"median of blocks of calls, ms")
    print("| layout | W [out x in] | density | rows | kernel | onnxruntime dense | numpy dense "
          "| scipy csr | kernel/ort | build s | max abs err |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (layout, out, inp, density, rows, _), (t_np, t_sp), kern in zip(cases, peers, kernels):
        t_k, t_ort, build_s, y, x, packed = kern
        ref = x.astype(np.float64) @ unpack(packed).astype(np.float64).T
        err = float(np.max(np.abs(y - ref)))
        print(f"| {layout} | {out}x{inp} | {density:g} | {rows} | {t_k:.3f} | {t_ort:.3f} "
              f"| {t_np:.3f} | {t_sp:.3f} | {t_k / t_ort:.2f}x | {build_s:.2f} | {err:.1e} |")


if __name__ == "__main__":
    main()
