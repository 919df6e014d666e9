"""CSR SparseLinear: ``Y[r, o] = epilogue(sum_{j in row o} values[j] * X[r, indices[j]])``.

``prepare`` keeps the canonical arrays (values, indices int16/int32, indptr) and adds ``tasks``
[T+1]: output-row ranges for the parallel loop, balanced by nonzeros (4 per thread).

``build`` picks one of three schedules by the arrays and the number of rows R (static):

- rows path, R >= 2: X is transposed once into row blocks of 2 vectors (on AVX-512 of
  4 or 8 lanes for a few rows, ``rows_lanes``), 4 when such a
  block of k columns fits 128 KiB (``targetspec.rows_block_vectors``) (``XT``, scratch,
  [k, block] per block). For every output row and row block the kernel walks the
  row's nonzeros: ``acc[:] += values[j] * XT[indices[j], :]`` (vectorized over the rows of the
  block, two accumulator sets to hide FMA latency), then the epilogue, vectorized. Y is
  row-major, so one output row's results go to a column of Y: they wait in a stage of
  ``lanes`` output rows, which ``transpose_store`` transposes in registers and writes as
  one vector per row of X (3072x768 at 5%, 32 rows: 0.21 -> 0.095 ms; scalar stores were
  half the work of a short row). Column panels over these 2-vector blocks were measured
  twice and are slower (768x3072 at 128 rows: 1.34 against 1.29 ms; 3072x768: 1.82
  against 1.07; 4096x4096 at 5%: 6.6 against 4.4): the per-(row, panel) setup and partial
  sums cost more than the L2 loads they save. They pay with wider blocks (next).
- rows path with column panels, when the plan's rows (``spec.rows``) fill a 4-vector block
  and k > 256 (``targetspec.csr_panel_columns``): ``prepare`` stores the entries panel by
  panel (256 columns on AVX2; on AVX-512 64-256 by the rows and the density;
  ``panel_major``, ``pptr`` instead of ``indptr``). Row blocks are 8
  vectors when the rows fill them, else 4 (``panel_block_vectors``); each walks panel p of
  every output row of its task, keeping partial sums in a scratch ``[o, block]``, then
  panel p + 1. The panel's XT (256 x 64 rows: 64 KiB) stays close while the weight
  streams once per 64 rows instead of once per 16. Measured on AVX2 (Zen 3), 2 threads,
  kernels A/B in one process, against the rows path: 4096x4096 at 128 rows 1.27x (density
  0.05), 1.30-1.50x (0.1; 9.3 -> 6.6 ms), 1.49x (0.2); 3072x768 at 0.5 1.23x; at 32 rows
  4096x4096 1.05-1.23x; 768x3072 at 0.1 1.40x once X's transposition stopped gathering
  (``transpose_x``), 3072x768 (k = 768, whose 32-row XT already fitted) 1.0x. Each
  panel's sum is added to the partial sums, not continued from them, so it is also a
  partial sum (``sum_in_chunks``).
- nonzero path, R == 1 (GEMV): per output row, the nonzeros in chunks of one vector:
  ``acc[r, :] += values[j:j+V] * X[r, indices[j:j+V]]`` (a gather: AVX-512's vgatherdps,
  else lane by lane from scalar loads of the columns), a scalar tail, then a horizontal sum
  and the epilogue. int16 columns are read four at a time as one 64-bit word and split with
  shifts (``words``): the loads bound this loop, and that takes one load per four columns
  instead of four. Measured on AVX2 (Zen 3), one thread, hot: 1.08-1.14x (3072x768 at 30%,
  4096x4096 at 10%, 768x3072 at 5%); in GPT-2's decode step, where the weights come from
  memory, 1.00-1.03x. A second accumulator chain made no difference and was not kept.

Both walks are written once, over callbacks ``entries(o) -> (start, count)`` and
``term(o, j) -> (value, column)``, so ``linear_nm`` reuses them with its own addressing.

Knobs (all optional): ``path`` "rows" | "nnz" (nnz only up to 16 rows), ``block_vectors``
(vectors per row block, 2 or 4 by ``rows_block_vectors``, 4 or 8 with panels), ``unroll``
(accumulator sets, 2; 1 with panels), ``transpose_store`` (False:
scalar stores), ``gather`` ("lanes" | "vector": X gathered from scalar or from vector
column loads without AVX-512), ``words`` (False: int16 columns loaded one by one),
``threads``, ``lanes``.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.codegen.tvm.kernels.linear_common import (
    F32,
    ZERO,
    LinearFunc,
    bind,
    chunk_size,
    epilogue_lanes,
    fold_chains,
    gather,
    hardware_gather,
    i32,
    linear_func,
    loop,
    row_blocks,
    row_tasks,
    store_row_lanes,
    sum_in_chunks,
    transpose_store,
    transpose_x,
    vector_lanes,
)
from sparsec.targetspec import csr_panel_columns, panel_block_vectors, rows_block_vectors


def use_rows_path(rows: int, lanes: int, knobs: dict) -> bool:
    """Vectorize over rows (X transposed) or over the nonzeros of a row (gathers)."""
    path = knobs.get("path")
    if rows > 16:  # the nonzero path unrolls over rows
        return True
    if path in ("rows", "nnz"):
        return path == "rows"
    return rows >= 2  # measured: 2 rows padded to a vector beat two gathers per nonzero


def rows_lanes(rows: int, lanes: int) -> int:
    """Vector width of the rows path for ``rows`` rows of X on AVX-512 (``lanes`` 16): the
    one that pads the rows least, 4 only up to 4 rows, the wider on a tie. Each nonzero
    loads a row of the transposed X and does one FMA per vector, so a vector of 16 over 8
    rows moves and multiplies half zeros. Measured on Zen 4, 2 threads, kernels alone:
    4096x4096 at 0.1, 2 and 4 rows 0.56 -> 0.41 ms (4 lanes; 8: 0.48), 8 rows 0.64 -> 0.51
    (8 lanes), 24 rows 1.26 -> 1.08 (8 lanes), 16 and 32 rows the same either way;
    768x3072 at 8 rows 1.38x (0.05), 1.28x (0.1), 1.10x (0.2); 3072x768 at 0.1 1.29x.
    Narrower vectors at many rows lose (16 rows with 4 lanes: 1.8x slower). AVX2 keeps its
    8 lanes: not measured there."""
    if lanes != 16 or rows >= 2 * lanes:
        return lanes
    options = ([4] if rows <= 4 else []) + [8, lanes]
    return min(options, key=lambda w: (-(-rows // w) * w, -w))


def emit_rows_path(f: LinearFunc, lanes: int, ntasks: int, task_rows, entries, term, knobs,
                   longest: int = 0, panels=None):
    """The rows schedule (module docstring); ``task_rows(t) -> (first output row, count)``.

    ``longest``: entries of the longest row (of the longest panel segment with ``panels``);
    rows that long are summed in chunks (``sum_in_chunks``). ``panels``: (count,
    ``segment(p, o) -> (start, count)``) when the weight is stored panel by panel
    (``panel_major``); each row block then walks panel p of all its output rows before
    panel p + 1, keeping partial sums in a scratch ``[o, block]``."""
    vectors = panel_block_vectors(f.rows, lanes) if panels else rows_block_vectors(f.k, lanes)
    blocks = row_blocks(f.rows, lanes, int(knobs.get("block_vectors", vectors)))
    xt = transpose_x(f, blocks)
    # One accumulator set with panels: 4 vectors of FMAs per nonzero already hide their
    # latency, and a second set was 0.93-0.95x in C.
    unroll = int(knobs.get("unroll", 1 if panels else 2))
    k = f.k
    npanels, segment = panels if panels else (1, None)
    width = blocks.width
    part = T.decl_buffer((f.o * width,), F32, scope="global") if panels else None

    chunk = int(knobs["chunk"]) if "chunk" in knobs else chunk_size(longest)

    def wide(entries_range):
        """(start, count) bound as 64-bit: the nonzero index then folds into each load's
        address. With int32 every nonzero paid a lea and a sign extension; measured on AVX2
        (Zen 3), 128 rows: 1.10-1.19x faster at 768x3072 and 1.16-1.17x at 4096x4096, the
        same elsewhere."""
        start, count = entries_range
        return bind(T.Cast("int64", start)), bind(T.Cast("int64", count))

    def walk_into(acc, r0, w, o, first, n):
        """acc[0:w] = the sum of entries first .. first+n-1 of row o (``unroll`` chains,
        folded)."""
        base = r0 * k

        def step(j, u):
            val, col = term(o, j)
            with T.vectorized(0, w) as l:
                a = u * w + l
                T.buffer_store(acc, acc[a] + val * xt[base + i32(col) * w + l], [a])

        with T.vectorized(0, unroll * w) as l:
            T.buffer_store(acc, ZERO, [l])
        with loop(n // unroll) as jj:
            for u in range(unroll):
                step(first + jj * unroll + u, u)
        if unroll > 1:
            with loop(n % unroll) as jj:
                step(first + n // unroll * unroll + jj, 0)
        fold_chains(acc, w, unroll)

    def add_part(acc, o, w, when=True):
        """acc[0:w] += ``part``'s row o (when ``when``): a panel's sum is a partial sum,
        added to the others, not continued from them."""
        if when is not True:
            with T.If(when):
                with T.Then():
                    add_part(acc, o, w)
            return
        with T.vectorized(0, w) as l:
            T.buffer_store(acc, acc[l] + part[o * width + l], [l])

    def tile(o, r0, w, stage=None, g=None):
        """Output row o of the row block at r0 (width w): stored, or epilogued into row g
        of ``stage``."""
        acc = T.decl_buffer((unroll * w,), F32, scope="local")
        start, count = wide(segment(npanels - 1, o) if panels else entries(o))
        total = sum_in_chunks(start, count, chunk,
                              lambda first, n: walk_into(acc, r0, w, o, first, n), acc, w)
        if panels:
            add_part(total, o, w)
        if stage is None:
            store_row_lanes(f, total, r0, w, o)
        else:
            epilogue_lanes(f, total, r0, w, o)
            with T.vectorized(0, w) as l:
                T.buffer_store(stage, total[l], [g * w + l])

    def early_panels(o0, n, r0, w):
        """Panels 0 .. npanels-2 of output rows o0 .. o0+n-1: partial sums into ``part``."""
        with loop(npanels - 1) as p:
            with loop(n) as oo:
                o = bind(o0 + oo)
                acc = T.decl_buffer((unroll * w,), F32, scope="local")
                walk_into(acc, r0, w, o, *wide(segment(p, o)))
                add_part(acc, o, w, p > 0)
                with T.vectorized(0, w) as l:
                    T.buffer_store(part, acc[l], [o * width + l])

    group = lanes if knobs.get("transpose_store", True) else 0

    def block_rows(o0, n, r0, w):
        """Output rows o0 .. o0+n-1 of one row block: in groups of ``lanes`` through
        ``transpose_store``, the rest with scalar stores."""
        if panels:
            early_panels(o0, n, r0, w)
        if not group:
            with loop(n) as oo:
                tile(o0 + oo, r0, w)
            return
        stage = T.decl_buffer((group * w,), F32, scope="local")
        with loop(n // group) as q:
            with loop(group) as g:
                tile(o0 + q * group + g, r0, w, stage, g)
            transpose_store(f, stage, r0, w, o0 + q * group, group)
        with loop(n % group) as rr:
            tile(o0 + n // group * group + rr, r0, w)

    with loop(ntasks, "parallel") as t:
        o0, n = task_rows(t)
        o0, n = bind(o0), bind(n)
        blocks.each(lambda r0, w: block_rows(o0, n, r0, w))


def emit_nnz_path(f: LinearFunc, lanes: int, ntasks: int, task_rows, entries, term, hw: bool,
                  knobs=None, words=None):
    """The nonzero schedule (module docstring), for few rows; ``hw``: AVX-512 gathers.
    Without them X is gathered lane by lane (``_gather_lanes``), or with knob ``gather``
    "vector" from a vector of columns (``gather``). ``words(j)``, when given, is the 64-bit
    word holding the int16 columns of entries j .. j+3 (``_gather_words``)."""
    knobs = knobs or {}
    by_lane = not hw and knobs.get("gather", "lanes") == "lanes"
    by_word = by_lane and words is not None and knobs.get("words", True)
    rows, v = f.rows, lanes

    def vec(base):
        return T.Ramp(base, 1, v)

    with loop(ntasks, "parallel") as t:
        o0, n = task_rows(t)
        o0, n = bind(o0), bind(n)
        with loop(n) as oo:
            o = bind(o0 + oo)
            start, count = entries(o)
            start, count = bind(start), bind(count)
            acc = T.decl_buffer((rows, v), F32, scope="local")
            for r in range(rows):
                T.buffer_store(acc, T.Broadcast(ZERO, v), [r, vec(0)])
            with loop(count // v) as c:
                first = start + c * v
                val = term(o, vec(first))[0]
                if by_word:
                    xs = _gather_words(f.X, rows, v, first, words)
                elif by_lane:
                    xs = _gather_lanes(f.X, rows, v, o, first, term)
                else:
                    col = T.Bind(i32(term(o, vec(first))[1]))
                    xs = [gather(f.X, r, col, v, hw) for r in range(rows)]
                for r in range(rows):
                    T.buffer_store(acc, acc[r, vec(0)] + val * xs[r], [r, vec(0)])
            with loop(count % v) as jj:
                val, col = term(o, start + count // v * v + jj)
                for r in range(rows):
                    T.buffer_store(acc, acc[r, 0] + val * f.X[r, i32(col)], [r, 0])
            for r in range(rows):
                T.buffer_store(f.Y, f.epilogue(_hsum(acc, r, v), r, o), [r, o])


def _gather_words(x, rows: int, v: int, first, words) -> list:
    """``_gather_lanes`` with the int16 columns read four at a time, as one 64-bit word,
    and taken apart with shifts: one load per four nonzeros instead of one each (the
    loads, not the arithmetic, bound this loop)."""
    cols = []
    for q in range(v // 4):
        w = T.Bind(words(first + 4 * q))
        for lane in range(4):
            cols.append(T.Bind(i32(T.Cast("int16", T.shift_right(w, tirx.const(16 * lane,
                                                                             "int64"))))))
    return _vectors_of(x, rows, cols)


def _gather_lanes(x, rows: int, v: int, o, first, term) -> list:
    """x[r, column of entry first + l] for l < v, one vector per row r, built lane by lane
    from scalar loads of the columns. A vector load of the columns, as ``gather`` takes
    them, compiles to a vpextrw and a sign extension per lane: 3.3 instructions per nonzero
    where this takes 2."""
    cols = [T.Bind(i32(term(o, first + lane)[1])) for lane in range(v)]
    return _vectors_of(x, rows, cols)


def _vectors_of(x, rows: int, cols: list) -> list:
    """For each row r of x, the vector x[r, cols[0]], x[r, cols[1]], ... (scalar loads
    put together lane by lane)."""
    lanes = [tirx.const(i, "int32") for i in range(len(cols))]
    return [tirx.Shuffle([x[r, c] for c in cols], lanes) for r in range(rows)]


def _hsum(acc, r, v: int):
    """Pairwise sum of acc[r, 0:v] (v a power of two or not)."""
    terms = [acc[r, l] for l in range(v)]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def prepare(spec, arrays, target):
    """Canonical CSR arrays plus ``tasks``: row ranges balanced by nonzeros. When the node's
    GEMM has rows enough for column panels (``csr_panel_columns``), the entries are stored
    panel by panel instead (``panel_major``) and ``indptr`` becomes ``pptr``."""
    indptr = np.asarray(arrays["indptr"], np.int32)
    costs = np.diff(indptr).astype(np.int64) + 4  # a row costs its nonzeros plus a store
    values, indices = np.asarray(arrays["values"], np.float32), np.asarray(arrays["indices"])
    tasks = row_tasks(costs, target)
    density = int(indptr[-1]) / max(1, spec.out_features * spec.in_features)
    panel = csr_panel_columns(spec.in_features, spec.rows, vector_lanes(target), density)
    if panel:
        values, indices, pptr = panel_major(values, indices, indptr, panel, spec.in_features)
        return {"values": values, "indices": indices, "pptr": pptr, "tasks": tasks}
    return {"values": values, "indices": indices, "indptr": indptr, "tasks": tasks}


def panel_major(values, indices, indptr, panel: int, k: int):
    """The CSR entries reordered panel by panel (columns [p*panel, (p+1)*panel)), row by row
    within a panel, column order kept: (values, indices, pptr) where entries
    pptr[p*o + r] .. pptr[p*o + r + 1] - 1 are row r's in panel p."""
    o = len(indptr) - 1
    npanels = -(-k // panel)
    rows = np.repeat(np.arange(o, dtype=np.int64), np.diff(indptr))
    key = indices.astype(np.int64) // panel * o + rows
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=npanels * o)
    pptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return values[order], indices[order], pptr


def build(spec, in_shape, arrays, target, knobs=None):
    knobs = knobs or {}
    lanes = vector_lanes(target, knobs)
    ntasks = int(arrays["tasks"].shape[0]) - 1
    with linear_func(spec, in_shape, arrays, "sparse_linear_csr") as f:
        values, indices = f.arrays["values"], f.arrays["indices"]
        tasks = f.arrays["tasks"]

        def task_rows(t):
            return tasks[t], tasks[t + 1] - tasks[t]

        def term(o, j):
            return values[j], indices[j]

        if "pptr" in f.arrays:  # panel-major (``prepare``): the rows path with panels
            pptr, o_ = f.arrays["pptr"], spec.out_features

            def segment(p, o):
                return pptr[p * o_ + o], pptr[p * o_ + o + 1] - pptr[p * o_ + o]

            npanels = (int(arrays["pptr"].shape[0]) - 1) // o_
            emit_rows_path(f, lanes, ntasks, task_rows, None, term, knobs,
                           longest=int(np.diff(arrays["pptr"]).max(initial=0)),
                           panels=(npanels, segment))
        else:
            _canonical(f, arrays, target, knobs, lanes, ntasks, task_rows, term)
    return f.func


def _canonical(f, arrays, target, knobs, lanes, ntasks, task_rows, term):
    """The kernel over row-major CSR arrays (``indptr``): the rows or the nonzero path."""
    indptr, indices = f.arrays["indptr"], f.arrays["indices"]

    def entries(o):
        return indptr[o], indptr[o + 1] - indptr[o]

    if use_rows_path(f.rows, lanes, knobs):
        width = lanes if knobs.get("lanes") else rows_lanes(f.rows, lanes)
        emit_rows_path(f, width, ntasks, task_rows, entries, term, knobs,
                       longest=int(np.diff(arrays["indptr"]).max(initial=0)))
    else:
        words = None
        if str(indices.ty.dtype) == "int16" and lanes % 4 == 0:
            def words(j):
                return T.reinterpret("int64", indices[T.Ramp(j, 1, 4)])
        hw = bool(knobs.get("hw_gather", hardware_gather(target, lanes)))
        emit_nnz_path(f, lanes, ntasks, task_rows, entries, term, hw, knobs, words)


KERNELS = {("SparseLinear", "csr"): KernelDef(prepare=prepare, build=build)}
