"""Bitmap SparseLinear: ``Y[r, o] = epilogue(sum_k X[r, k] * W[o, k])`` with W stored as its
nonzero values row by row and one bit per weight (``sparsec.formats``: values, mask,
indptr).

For moderate sparsity on few rows. A layer at batch 1-8 streams its weight once and does
little arithmetic per byte, so its time is the bytes it reads: at density 0.5 CSR's int16
columns make 6 bytes a nonzero (0.75 of dense) and its gathers cost more than the bytes
save, where the bitmap reads 4 bytes a nonzero plus one bit a weight (0.53 of dense).

The walk is dense-shaped: per output row, per group of one vector of columns (``lanes``),
the group's bits m say which of its weights are stored; the next popcount(m) values are
loaded as one (unaligned) vector and spread to their columns (``expand``), multiplied
with X's columns of the group for every row, and the value pointer moves by popcount(m).
``expand`` is AVX-512's vexpandps (16 lanes, a 16-bit mask), else a permutation looked
up by the 8-bit mask (``prepare``'s ``lut``: vpermps on AVX2) with the lanes not in the
mask cleared. ``prepare`` pads the values by one vector so the last loads stay inside.

Work is the same per group whatever the density, so the cost is dense-like in
arithmetic and sparse in bytes: it pays while bytes bound the layer (few rows, density
above where CSR's gathers win).

For rows > 1 every expanded group feeds one FMA per row (X copied group by group first,
against 4K aliasing of its rows, measured the same: not kept). Up to
``targetspec.BITMAP_KERNEL_ROWS`` rows (their accumulators are registers); the cost model
offers the layout up to ``BITMAP_MAX_ROWS``.

Measured on Zen 4 (AVX-512), 2 threads, kernels A/B in one process, 4096x4096, one row:
density 0.5 0.70 ms against dense 1.35-1.44 and csr 1.50 (onnxruntime 1.48-1.53); 0.35
0.59 against csr 1.07 and dense 1.51; 0.2 0.50 against csr 0.43. Rows cost more than
their FMAs: at 0.5, 2 rows 1.11-1.25 ms (dense 1.26-1.54), 4 rows 1.69 (dense 1.51-1.57),
8 rows 2.9-3.2 (dense 1.76-1.80). L3-resident layers are bound by the walk, 3-4 cycles a
group, not by bytes: 3072x768 at 0.5 0.067-0.090 ms against dense 0.050. The AVX2 form
(vpermps over a table row, a blend) was 2.3x slower than the AVX-512 one on the same
host (1.64 ms at 4096x4096, 0.5): not calibrated, so not picked (``CostConstants``).

Knobs (all optional): ``together`` (output rows walked side by side), ``unroll``
(accumulator sets: 2 when rows x together < 4, else 1), ``prefetch`` (floats ahead, 0
off).
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.codegen.tvm.kernels.linear_common import (
    F32,
    ZERO,
    _as_target,
    _has,
    bind,
    linear_func,
    loop,
    prefetch as emit_prefetch,
    row_tasks,
    vector_lanes,
)
from sparsec.errors import CompileError
from sparsec.targetspec import BITMAP_KERNEL_ROWS

# Output rows walked side by side (``together``), each with its own value pointer. Two
# were 1.16x slower on 4096x4096 (memory-bound) and 1.35x faster on 3072x768 (L3-resident)
# at density 0.5, one row, Zen 4; one keeps the large layers, where the layout pays.
OUT_ROWS_TOGETHER = 1
# Values prefetched this many floats (4 KiB) ahead (``prefetch``, 0 off). The pointer moves
# by a popcount a group, and the hardware prefetcher alone streamed the values at 35 GB/s
# where dense weights stream at 47: 4096x4096 at density 0.5, one row, Zen 4, A/B in one
# process: 0.97 ms without, 0.96 at 256 floats, 0.81 at 512, 0.70 at 1024, 0.71 at 2048,
# 0.83 at 4096.
PREFETCH = 1024


def expand_table(lanes: int) -> np.ndarray:
    """[2**lanes, lanes] int32: for mask m, lane l takes value number popcount(m & (2**l-1))
    of its group (any in-range index where bit l is clear: those lanes are cleared)."""
    m = np.arange(1 << lanes)[:, None]
    below = (m & ((1 << np.arange(lanes)) - 1)[None, :])
    counts = np.array([bin(v).count("1") for v in range(1 << lanes)])
    return np.ascontiguousarray(counts[below], np.int32)


def prepare(spec, arrays, target):
    """values padded by one vector, mask as one 8- or 16-bit word per group of columns,
    ``tasks`` (output rows split evenly by bytes), and for 8 lanes the ``lut``."""
    lanes = vector_lanes(target)
    if lanes != 16 and not _has("avx2", _as_target(target)):
        raise CompileError(f"codegen/tvm: bitmap SparseLinear {spec.entry} needs AVX2 or "
                           "AVX-512 (its expand is x86 code)")
    lanes = 16 if lanes == 16 else 8
    values = np.concatenate([np.asarray(arrays["values"], np.float32),
                             np.zeros(lanes, np.float32)])
    mask = np.ascontiguousarray(arrays["mask"], np.uint8)
    if lanes == 16:
        mask = mask.view(np.uint16) if mask.shape[1] % 2 == 0 else None
    if mask is None:
        raise CompileError(f"codegen/tvm: bitmap SparseLinear {spec.entry} on AVX-512 needs "
                           f"in ({spec.in_features}) divisible by 16")
    indptr = np.asarray(arrays["indptr"], np.int32)
    groups = mask.shape[1]
    tasks = row_tasks(np.diff(indptr).astype(np.int64) + groups, target)
    out = {"values": values, "mask": mask, "indptr": indptr, "tasks": tasks}
    if lanes == 8:
        out["lut"] = expand_table(8)
    return out


def _expand(values, ptr, m, lanes: int, lut):
    """The popcount(m) values at ``ptr`` spread to the lanes whose bit of m is set, zeros
    elsewhere."""
    data = values[T.Ramp(ptr, 1, lanes)]
    if lanes == 16:
        return T.call_llvm_pure_intrin(
            f"float32x{lanes}", "llvm.x86.avx512.mask.expand", data,
            T.Broadcast(ZERO, lanes), _lane_bits(m, lanes))
    idx = lut[T.Cast("int32", m), T.Ramp(0, 1, lanes)]
    spread = T.call_llvm_pure_intrin(f"float32x{lanes}", "llvm.x86.avx2.permps", data, idx)
    return T.Select(_lane_bits(m, lanes), spread, T.Broadcast(ZERO, lanes))


def _lane_bits(m, lanes: int):
    """bool vector: lane l is bit l of m."""
    bits = T.Broadcast(T.Cast("int32", m), lanes)
    keep = tirx.bitwise_and(tirx.shift_right(bits, T.Ramp(0, 1, lanes)),
                            T.Broadcast(tirx.const(1, "int32"), lanes))
    return keep != T.Broadcast(tirx.const(0, "int32"), lanes)


def build(spec, in_shape, arrays, target, knobs=None):
    knobs = knobs or {}
    lanes = 16 if arrays["mask"].dtype == np.uint16 else 8
    groups = int(arrays["mask"].shape[1])
    ntasks = int(arrays["tasks"].shape[0]) - 1
    with linear_func(spec, in_shape, arrays, "sparse_linear_bitmap") as f:
        values, mask, indptr = f.arrays["values"], f.arrays["mask"], f.arrays["indptr"]
        tasks, lut = f.arrays["tasks"], f.arrays.get("lut")
        rows = f.rows
        if rows > BITMAP_KERNEL_ROWS:
            raise CompileError(f"codegen/tvm: bitmap SparseLinear {spec.entry} runs up to "
                               f"{BITMAP_KERNEL_ROWS} rows of input, got {rows}")
        together = int(knobs.get("together", OUT_ROWS_TOGETHER))
        unroll = int(knobs.get("unroll", 2 if rows * together < 4 else 1))
        prefetch = int(knobs.get("prefetch", PREFETCH))

        def x_at(r, g):
            return f.X[r, T.Ramp(g * lanes, 1, lanes)]

        def walk(o, n):
            """Output rows o .. o+n-1 (n static), each with its own value pointer."""
            chains = unroll * n * rows
            acc = T.decl_buffer((chains * lanes,), F32, scope="local")
            ptr = T.decl_buffer((n,), "int64", scope="local")
            with T.vectorized(0, chains * lanes) as l:
                T.buffer_store(acc, ZERO, [l])
            for p in range(n):
                T.buffer_store(ptr, T.Cast("int64", indptr[o + p]), [p])

            def step(g, u):
                if prefetch and u == 0:
                    for p in range(n):
                        emit_prefetch(values, ptr[p] + prefetch)
                xs = [bind(x_at(r, g)) for r in range(rows)]
                for p in range(n):
                    m = bind(mask[o + p, g])
                    w = bind(_expand(values, ptr[p], m, lanes, lut))
                    for r in range(rows):
                        a = T.Ramp(((u * n + p) * rows + r) * lanes, 1, lanes)
                        T.buffer_store(acc, acc[a] + w * xs[r], [a])
                    T.buffer_store(ptr, ptr[p] + T.Cast("int64", tirx.popcount(m)), [p])

            with loop(groups // unroll) as gg:
                for u in range(unroll):
                    step(gg * unroll + u, u)
            for u in range(groups % unroll):
                step(groups // unroll * unroll + u, 0)
            for p in range(n):
                for r in range(rows):
                    a = T.Ramp((p * rows + r) * lanes, 1, lanes)
                    total = acc[a]
                    for u in range(1, unroll):
                        total = total + acc[T.Ramp(((u * n + p) * rows + r) * lanes, 1, lanes)]
                    T.buffer_store(acc, total, [a])
                    terms = [acc[(p * rows + r) * lanes + l] for l in range(lanes)]
                    while len(terms) > 1:
                        terms = [terms[i] + terms[i + 1] for i in range(0, len(terms), 2)]
                    T.buffer_store(f.Y, f.epilogue(terms[0], r, o + p), [r, o + p])

        with loop(ntasks, "parallel") as t:
            o0 = bind(tasks[t])
            n = bind(tasks[t + 1] - o0)
            with loop(n // together) as q:
                walk(bind(o0 + q * together), together)
            if together > 1:
                with loop(n % together) as q:
                    walk(bind(o0 + n // together * together + q), 1)
    return f.func


KERNELS = {("SparseLinear", "bitmap"): KernelDef(prepare=prepare, build=build)}
