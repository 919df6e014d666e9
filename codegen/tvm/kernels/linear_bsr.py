"""BSR SparseLinear: r x c blocks. For block q of block row br at block column indices[q]:
``Y[row, br*r + i] += sum_jj values[q, i, jj] * X[row, indices[q]*c + jj]``, then the epilogue.

``prepare`` keeps the blocks as [nb, r, c] when c >= r and transposes them to [nb, c, r]
otherwise (the one-row path vectorizes along the longer side), and adds ``tasks``: block-row
ranges balanced by block count (4 per thread).

``build``:
- rows path (R >= 2): X transposed into row blocks (``XT``, as in ``linear_csr``); for every
  block row, rows i of the block in register groups, ``acc[i, :] += values[q, i, jj] *
  XT[col + jj, :]``, vectorized over the rows of X (so each XT load feeds up to r FMAs).
- one-row path (R == 1): vectorized along the block: over c with ``acc[i, :] +=
  values[q, i, :] * X[0, col : col + c]`` and a horizontal sum at the end, or over r with
  ``acc[:] += values[q, jj, :] * X[0, col + jj]`` and a contiguous store of r outputs.

Knobs (all optional): ``path`` "rows" (forces the rows path for one row), ``block_vectors``,
``transpose_store`` (False: scalar stores), ``threads``, ``lanes``.
"""

from __future__ import annotations

import numpy as np
from tvm.script.ir_builder import tirx as T

from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.codegen.tvm.kernels.linear_common import (
    F32,
    ZERO,
    LinearFunc,
    balanced_splits,
    bind,
    chunk_size,
    epilogue_lanes,
    fold_chains,
    i32,
    linear_func,
    loop,
    row_blocks,
    store_row_lanes,
    sum_in_chunks,
    thread_count,
    transpose_store,
    transpose_x,
    vector_lanes,
    vector_registers,
)
from sparsec.layouts import parse_layout

_MAX_UNROLL = 128  # FMAs of one unrolled block step; beyond it the c loop stays a loop


def along_c(r: int, c: int) -> bool:
    """The storage and one-row vectorization follow c when c >= r, else r."""
    return c >= r


def prepare(spec, arrays, target):
    r, c = parse_layout(spec.layout).params
    values = np.asarray(arrays["values"], np.float32)
    if not along_c(r, c):
        values = values.transpose(0, 2, 1)
    indptr = np.asarray(arrays["indptr"], np.int32)
    return {
        "values": np.ascontiguousarray(values),
        "indices": np.asarray(arrays["indices"]),
        "indptr": indptr,
        "tasks": balanced_splits(np.diff(indptr) + 1, 4 * thread_count(target)),
    }


def build(spec, in_shape, arrays, target, knobs=None):
    knobs = knobs or {}
    r, c = parse_layout(spec.layout).params
    lanes = vector_lanes(target, knobs)
    budget = max(4, vector_registers(target) - 4)  # accumulator registers
    ntasks = int(arrays["tasks"].shape[0]) - 1
    with linear_func(spec, in_shape, arrays, "sparse_linear_bsr") as f:
        if f.rows > 1 or knobs.get("path") == "rows":
            _rows_path(f, r, c, lanes, budget, ntasks, knobs, arrays["indptr"])
        elif along_c(r, c):
            _one_row_along_c(f, r, c, lanes, budget, ntasks, _chunk(arrays["indptr"], c))
        else:
            _one_row_along_r(f, r, c, lanes, budget, ntasks, _chunk(arrays["indptr"], c))
    return f.func


def _value(f: LinearFunc, r: int, c: int, q, i, jj):
    values = f.arrays["values"]
    return values[q, i, jj] if along_c(r, c) else values[q, jj, i]


def _block_rows(f: LinearFunc, ntasks: int, body):
    """Parallel over tasks; body(br, start, count) for every block row of the task."""
    with loop(ntasks, "parallel") as t:
        b0, nbr = _task(f, t)
        with loop(nbr) as bb:
            br = bind(b0 + bb)
            body(br, *_blocks_of(f, br))


def _task(f: LinearFunc, t):
    """(first block row, block rows) of task t."""
    tasks = f.arrays["tasks"]
    b0 = bind(tasks[t])
    return b0, bind(tasks[t + 1] - b0)


def _blocks_of(f: LinearFunc, br):
    """(first block, block count) of block row br."""
    indptr = f.arrays["indptr"]
    # 64-bit, as in csr's rows path: block indices fold into the loads' addresses
    # (AVX2, Zen 3, 8-128 rows: 1.01-1.13x, no point slower at the median of 9 rounds).
    start = bind(T.Cast("int64", indptr[br]))
    return start, bind(T.Cast("int64", indptr[br + 1]) - start)


def _in_groups(total: int, size: int, emit):
    """emit(first, length) over consecutive groups of ``size`` covering ``total``: a loop over
    the full groups (code emitted once) and the remainder group."""
    size = min(size, total)
    full, rest = divmod(total, size)
    if full == 1:
        emit(0, size)
    else:
        with loop(full) as g:
            emit(g * size, size)
    if rest:
        emit(full * size, rest)


def _rows_path(f: LinearFunc, r: int, c: int, lanes: int, budget: int, ntasks: int, knobs,
               f_indptr: np.ndarray):
    nvec = 2 if 2 * r <= budget else 1  # vectors of X rows per block step
    blocks = row_blocks(f.rows, lanes, int(knobs.get("block_vectors", nvec)))
    xt = transpose_x(f, blocks)
    k, indices = f.k, f.arrays["indices"]
    group = max(1, budget // max(1, blocks.width // lanes))
    chunk = _chunk(f_indptr, c)
    transposed = knobs.get("transpose_store", True)

    def tile(br, start, count, r0, w, i0, ih, stage=None, srow=None):
        """Rows i0 .. i0+ih of block row br for the X row block at r0 (width w): stored, or
        epilogued into rows srow + i of ``stage`` ([lanes, padded X rows])."""
        base = r0 * k
        chains = ih * (w // lanes)
        sets = max(1, min(c, -(-8 // chains), budget // chains))  # >= 8 independent FMA chains
        size = ih * w
        acc = T.decl_buffer((sets * size,), F32, scope="local")

        def walk(first, n):
            """acc[0:size] = the sum over blocks first .. first+n-1 (``sets`` chains, folded)."""
            with T.vectorized(0, sets * size) as l:
                T.buffer_store(acc, ZERO, [l])
            with loop(n) as qq:
                q = bind(first + qq)
                col = bind(i32(indices[q]) * c)

                def step(jj, s):
                    for i in range(ih):
                        val = _value(f, r, c, q, i0 + i, jj)
                        with T.vectorized(0, w) as l:
                            a = s * size + i * w + l
                            T.buffer_store(acc, acc[a] + val * xt[base + (col + jj) * w + l], [a])

                if ih * c <= _MAX_UNROLL:
                    for jj in range(c):
                        step(jj, jj % sets)
                else:
                    with loop(c // sets) as j2:
                        for s in range(sets):
                            step(j2 * sets + s, s)
                    for jj in range(c // sets * sets, c):
                        step(jj, 0)
            fold_chains(acc, size, sets)

        out = sum_in_chunks(start, count, chunk, walk, acc, size)
        if stage is not None:
            for i in range(ih):
                epilogue_lanes(f, out, r0, w, br * r + i0 + i, offset=i * w)
                with T.vectorized(0, w) as l:
                    T.buffer_store(stage, out[i * w + l], [(srow + i) * blocks.padded + r0 + l])
        elif transposed and ih % lanes == 0:  # whole groups of output columns: vector stores
            for i in range(ih):
                epilogue_lanes(f, out, r0, w, br * r + i0 + i, offset=i * w)
            for g0 in range(0, ih, lanes):
                transpose_store(f, out, r0, w, br * r + i0 + g0, lanes, offset=g0 * w)
        else:
            for i in range(ih):
                store_row_lanes(f, out, r0, w, br * r + i0 + i, offset=i * w)

    def rows_of_x(br, start, count, i0, ih):
        blocks.each(lambda r0, w: tile(br, start, count, r0, w, i0, ih))

    def body(br, start, count):
        _in_groups(r, group, lambda i0, ih: rows_of_x(br, start, count, i0, ih))

    span = lanes // r  # block rows per group of output columns, for blocks shorter than lanes
    if not (transposed and r < lanes and lanes % r == 0 and group >= r):
        _block_rows(f, ntasks, body)
        return
    # Blocks shorter than the lanes: `span` block rows fill a stage of `lanes` output rows
    # for every X row, which goes out through ``transpose_store``; the remaining block
    # rows of the task store as above.
    with loop(ntasks, "parallel") as t:
        b0, nbr = _task(f, t)
        stage = T.decl_buffer((lanes * blocks.padded,), F32, scope="global")
        with loop(nbr // span) as q:
            with loop(span) as s:
                br = bind(b0 + q * span + s)
                start, count = _blocks_of(f, br)
                blocks.each(lambda r0, w: tile(br, start, count, r0, w, 0, r, stage, s * r))
            o0 = (b0 + q * span) * r
            blocks.each(lambda r0, w: transpose_store(f, stage, r0, w, o0, lanes, offset=r0,
                                                      stride=blocks.padded))
        with loop(nbr % span) as rr:
            br = bind(b0 + nbr // span * span + rr)
            body(br, *_blocks_of(f, br))


def _chunk(indptr: np.ndarray, c: int) -> int:
    """Blocks per partial sum of the longest block row (``sum_in_chunks``), 0 for none."""
    return chunk_size(int(np.diff(indptr).max(initial=0)), c)


def _one_row_along_c(f: LinearFunc, r: int, c: int, lanes: int, budget: int, ntasks: int,
                     chunk: int):
    """One row of X; per block row, r accumulators of c lanes, summed horizontally."""
    indices = f.arrays["indices"]
    group = max(1, budget // -(-c // lanes))

    def rows(br, start, count, i0, ih):
        acc = T.decl_buffer((ih * c,), F32, scope="local")  # [ih, c], flat

        def walk(first, n):
            with T.vectorized(0, ih * c) as l:
                T.buffer_store(acc, ZERO, [l])
            with loop(n) as qq:
                q = bind(first + qq)
                col = bind(i32(indices[q]) * c)
                with T.unroll(0, ih) as i:
                    with T.vectorized(0, c) as l:
                        val = _value(f, r, c, q, i0 + i, l)
                        T.buffer_store(acc, acc[i * c + l] + val * f.X[0, col + l], [i * c + l])

        total = sum_in_chunks(start, count, chunk, walk, acc, ih * c)
        for i in range(ih):
            o = br * r + i0 + i
            T.buffer_store(f.Y, f.epilogue(_pairwise([total[i * c + l] for l in range(c)]), 0, o),
                           [0, o])

    _block_rows(f, ntasks, lambda br, start, count: _in_groups(
        r, group, lambda i0, ih: rows(br, start, count, i0, ih)))


def _one_row_along_r(f: LinearFunc, r: int, c: int, lanes: int, budget: int, ntasks: int,
                     chunk: int):
    """One row of X; per block row, the r outputs as vectors, stored contiguously."""
    indices = f.arrays["indices"]
    width = min(r, budget * lanes)

    def rows(br, start, count, i0, ih):
        acc = T.decl_buffer((ih,), F32, scope="local")

        def walk(first, n):
            with T.vectorized(0, ih) as l:
                T.buffer_store(acc, ZERO, [l])
            with loop(n) as qq:
                q = bind(first + qq)
                col = bind(i32(indices[q]) * c)
                with T.unroll(0, c) as jj:
                    xs = f.X[0, col + jj]
                    with T.vectorized(0, ih) as l:
                        val = _value(f, r, c, q, i0 + l, jj)
                        T.buffer_store(acc, acc[l] + val * xs, [l])

        total = sum_in_chunks(start, count, chunk, walk, acc, ih)
        with T.vectorized(0, ih) as l:
            o = br * r + i0 + l
            T.buffer_store(f.Y, f.epilogue(total[l], 0, o), [0, o])

    _block_rows(f, ntasks, lambda br, start, count: _in_groups(
        r, width, lambda i0, ih: rows(br, start, count, i0, ih)))


def _pairwise(terms):
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


KERNELS = {("SparseLinear", "bsr"): KernelDef(prepare=prepare, build=build)}
