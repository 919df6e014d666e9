"""Dense SparseLinear: a register-blocked GEMM over packed weight panels.

``Y[r, o] = epilogue(sum_k X[r, k] * W[o, k])``, computed as

- ``prepare``: W [O, K] -> panels ``w_panels`` [P, K, NB], panel p holding output columns
  [p*NB, p*NB+NB) (zero-padded past O), NB = 2 vectors of the target (1 when O fits one,
  4 when the plan runs the layer on one row: ``panel_width``);
- ``build``: X is packed into row blocks ``XP`` [ceil(R/MR), K, MR] when R > 2, K >= 2048
  and there are at least 8 panels to reuse it (contiguous broadcasts, no 4K-aliasing of
  strided rows); then a parallel loop over (panel, row chunk) tasks runs the micro-kernel:
  MR x NB accumulators in registers, one k at a time (``acc[i, :] += x[r0+i, k] *
  panel[k, :]``, vectorized over the NB columns), and the epilogue fused into the store.
  MR fills the register file (14 with 32 registers, 6 with 16). With one row (GEMV), or
  tiles of fewer than 4 accumulators, the k loop is split over two accumulator sets to
  hide FMA latency.

Over long reductions (k > ``CHUNK_ABOVE``, 1024) the sum runs in chunks of 256 whose sums
are added to a total, for accuracy (``tile_whole``). With more than one row block the chunks
are also the outermost loop of each task (GotoBLAS order, ``tile_chunk``): a chunk of
packed X is reused from L2 by every panel of the task. A weight that streams from memory
once (one row block of 2 or more rows, 32 MiB or more) is prefetched 32 k steps ahead,
except on CPUs that stream faster without (``linear_common.NO_PREFETCH_CPUS``: Zen 4).

Knobs (all optional): ``mr`` rows per micro-tile, ``k_chunk``, ``chunk_above`` (the k
above which the sum is chunked), ``prefetch`` (k steps, 0 off), ``pack`` (X into ``XP``:
True/False), ``threads``, ``lanes``.
"""

from __future__ import annotations

import numpy as np
from tvm.script.ir_builder import tirx as T

from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.codegen.tvm.kernels.linear_common import (
    F32,
    ZERO,
    LinearFunc,
    linear_func,
    loop,
    prefetch as emit_prefetch,
    software_prefetch,
    thread_count,
    vector_lanes,
    vector_registers,
)


K_CHUNK = 256  # terms summed before a partial sum joins the total (see ``tile_whole``)
# ... when k is longer than this. Up to it a single running sum is about 2x less accurate
# (relative error 1.0-1.3e-6 against 3.8-4.9e-7 at k = 768-1024; chunked matches MLAS bit for
# bit) and faster: the blocked order's partial sums and its per-chunk sweeps cost more than
# they save on a weight that short. Measured on AVX2 (Zen 3), 2 threads, kernels A/B in one
# process against chunks of 256: 128 rows 1.09-1.14x at 3072x768, 1.12x at 2304x768, 1.03x
# at 768x768, 1.07x at 1024x1024; 1-32 rows within noise (0.99-1.12x).
CHUNK_ABOVE = 1024
PREFETCH = 32  # k steps ahead to prefetch W when it streams through once ...
PREFETCH_MIN_BYTES = 32 << 20  # ... from memory, being this big
# Packing X pays back over many panels and long rows only. Measured on AVX2 (Zen 3), one
# kernel A/B'd in one process, unpacked over packed: 4096x4096 at 8-128 rows 0.95-0.99x and
# 768x3072 at 128 rows 0.90x (so packed there); 3072x768 1.0-1.05x, 1024x1024 1.00x,
# 256x64 and 256x256 at 360 rows 1.12-1.13x, 64x1024 at 512 rows 1.81x, 10x256 2.28x.
# Nor with one row block over a weight that stays in cache: the pack is a parallel region of
# its own for one tile's reuse. AVX-512 (Zen 4), A/B in one process, unpacked over packed:
# 768x3072 at 4 and 8 rows 1.10-1.11x (0.184 -> 0.166 ms, onnxruntime 0.181), and the AVX2
# build at 4 and 6 rows 1.08-1.09x; but 4096x4096 at 8 rows, which streams, 0.92x.
PACK_MIN_K = 2048
PACK_MIN_PANELS = 8
# Unpacked, the tile's rows of X are k floats apart; a multiple of 4 KiB apart they all fall
# in the same L1 sets, and more of them than the L1 has ways evict each other at every k
# step. There a tile takes at most L1_WAYS rows. Measured on AVX-512 (Zen 4, 14-row tiles
# by default), 2 threads, kernels A/B in one process, 8 rows against 14: 1024x1024 at 32
# rows 1.45x (0.444 -> 0.307 ms, onnxruntime 0.374), at 128 rows 1.31x (1.53 -> 1.17 ms,
# onnxruntime 1.35); 768x3072 at 14 rows, 7 against 14, 1.55x (0.481 -> 0.310 ms,
# onnxruntime 0.334), packing X 1.50x. 1024x512 (2 KiB apart: 7 rows a set) 1.02x.
ALIAS_BYTES = 4096
L1_WAYS = 8
# At one row (GEMV) a panel of 2 vectors broadcasts x[k] for every 2 vector loads of W; 4
# vectors (two accumulator sets: 8 chains) halve that. Measured on AVX2 (Zen 3), 2 threads,
# kernels A/B in one process against 2 vectors: 3072x768 1.27x (0.159 -> 0.115 ms, where
# onnxruntime takes 0.147), 768x3072 1.33x, 1024x1024 1.41x; 4096x4096, which streams
# from memory, 1.02x. 6 vectors spill: 0.27-0.43x.
GEMV_PANEL_VECTORS = 4


def panel_width(out_features: int, lanes: int, rows: int = 0) -> int:
    """Output columns per weight panel: 2 vectors, 1 when the output fits one, and
    ``GEMV_PANEL_VECTORS`` when the plan runs the layer on one row (``rows``)."""
    if rows == 1 and out_features >= GEMV_PANEL_VECTORS * lanes:
        return GEMV_PANEL_VECTORS * lanes
    return lanes if out_features <= lanes else 2 * lanes


def prepare(spec, arrays, target):
    """W [O, K] -> {"w_panels": [P, K, NB]} (columns past O are zero)."""
    w = np.asarray(arrays["w"], dtype=np.float32)
    o, k = w.shape
    nb = panel_width(o, vector_lanes(target), spec.rows)
    p = -(-o // nb)
    padded = np.zeros((p * nb, k), np.float32)
    padded[:o] = w
    return {"w_panels": np.ascontiguousarray(padded.reshape(p, nb, k).transpose(0, 2, 1))}


def build(spec, in_shape, arrays, target, knobs=None):
    knobs = knobs or {}
    panels = arrays["w_panels"]
    with linear_func(spec, in_shape, arrays, "sparse_linear_dense") as f:
        _body(f, panels.shape, vector_lanes(target, knobs), vector_registers(target),
              thread_count(target, knobs), knobs, software_prefetch(target))
    return f.func


def even_tiles(rows: int, most: int) -> int:
    """Rows per micro-tile: ``most`` (what the registers hold), unless as many tiles of
    fewer rows cover ``rows`` exactly. 8 rows on AVX2 run as 4 + 4 instead of 6 + 2: the
    2-row tile is bound by its loads. Measured, kernels A/B in one process: 8 rows 1.03-1.16x
    (4096x4096, 3072x768, 768x3072, 512x512, 512x256); 7 rows as 4 + 3 were 0.90x, so a
    ragged split keeps ``most``."""
    tiles = -(-rows // most)
    return rows // tiles if rows % tiles == 0 else most


def tile_rows(rows: int, nb: int, lanes: int, registers: int, forced=None) -> int:
    """Rows of X per micro-tile over a panel ``nb`` lanes wide: ``forced`` (the ``mr``
    knob), else as many as the register file holds beside the panel's vectors and a
    broadcast (``even_tiles``); never more than ``rows``."""
    nvec = max(1, nb // lanes)
    return min(rows, int(forced or even_tiles(rows, max(1, (registers - nvec - 1) // nvec))))


def _body(f: LinearFunc, panel_shape, lanes, registers, threads, knobs, prefetch=True):
    """The GEMM into ``f.Y``; ``prefetch``: the target gains from software prefetches of a
    streamed weight (``linear_common.software_prefetch``)."""
    npanel, k, nb = (int(d) for d in panel_shape)
    rows, out = f.rows, f.o
    nvec = max(1, nb // lanes)
    mr = tile_rows(rows, nb, lanes, registers, knobs.get("mr"))
    nrb = -(-rows // mr)  # row blocks; the last has rows - (nrb-1)*mr rows
    big = npanel * k * nb * 4 >= PREFETCH_MIN_BYTES  # (from memory, not from cache)
    pack = knobs.get("pack")
    if pack is None:  # (one row block of a cache-resident W: see ``PACK_MIN_K``)
        pack = k >= PACK_MIN_K and npanel >= PACK_MIN_PANELS and (nrb > 1 or big)
    pack = pack and rows > 2
    if not pack and not knobs.get("mr") and (k * 4) % ALIAS_BYTES == 0 and mr > L1_WAYS:
        mr = even_tiles(rows, L1_WAYS)  # (see ``L1_WAYS``)
        nrb = -(-rows // mr)
    tail_rows = rows - (nrb - 1) * mr
    tail_cols = out - (npanel - 1) * nb  # valid columns of the last panel
    W = f.arrays["w_panels"]

    # With one row block, W streams through once and nothing reuses it; when it is also too
    # big to stay in cache, prefetch it. Measured: 4096x4096 (64 MiB), 4-14 rows: 1.2-1.5x
    # faster; 3072x768 and 1024x1024 (cache-resident), 8 rows: 1.3-1.5x slower, so not there.
    # Not at one row either: the GEMV's 4-vector panels stream fine without, and the
    # prefetches (one per 2 loads) slowed it: 4096x4096 and 8192x2048 1.19-1.27x faster
    # without (2 threads, A/B in one process; onnxruntime 0.87-0.92x -> 1.08-1.10x). At 2
    # rows prefetching still pays (1.19-1.32x).
    streams = prefetch and nrb == 1 and rows > 1 and big
    pf = int(knobs.get("prefetch", PREFETCH if streams else 0))  # k steps ahead; 0: none

    xp = None
    if pack:
        xp = T.decl_buffer((nrb, k, mr), F32, scope="global")
        with loop(nrb, "parallel") as rb:
            with loop(T.min(mr, rows - rb * mr)) as i:
                with loop(k) as kk:
                    T.buffer_store(xp, f.X[rb * mr + i, kk], [rb, kk, i])

    def x_at(rb, i, kk):
        return f.X[rb * mr + i, kk] if xp is None else xp[rb, kk, i]

    kc = int(knobs.get("k_chunk", K_CHUNK))
    chunked = k > int(knobs.get("chunk_above", CHUNK_ABOVE))  # (see ``tile_whole``)
    blocked = chunked and nrb > 1  # ... and run the chunks outermost (see below)
    if blocked:
        # Partial sums of rows x panels between k chunks (the last chunk stores into Y).
        part = T.decl_buffer((nrb * mr * npanel * nb,), F32, scope="global")

    def part_at(p, rb, i, j):  # tile-contiguous: a [mr, nb] tile per (row block, panel)
        return ((rb * npanel + p) * mr + i) * nb + j

    def sum_terms(p, rb, m, k0, length):
        """acc[0] = rows [rb*mr, rb*mr+m) x panel p summed over k0 .. k0+length-1, from zero
        (two accumulator sets when the tile is too small to hide FMA latency)."""
        splits = 2 if (m * nvec < 4 or m == 1) and length >= 2 else 1
        acc = T.decl_buffer((splits, m, nb), F32, scope="local")
        with T.unroll(0, splits) as u:
            with T.unroll(0, m) as i:
                with T.vectorized(0, nb) as j:
                    T.buffer_store(acc, ZERO, [u, i, j])
        with loop(length // splits) as k2:
            if pf:
                for line in range(max(1, nb * 4 * splits // 64)):
                    at = (p * k + k0 + k2 * splits + pf) * nb + line * 16
                    emit_prefetch(W, at)
            with T.unroll(0, splits) as u:
                kk = k0 + k2 * splits + u
                with T.unroll(0, m) as i:
                    xv = x_at(rb, i, kk)
                    with T.vectorized(0, nb) as j:
                        T.buffer_store(acc, acc[u, i, j] + xv * W[p, kk, j], [u, i, j])
        if splits > 1:
            if length % splits:
                kk = k0 + length - 1
                with T.unroll(0, m) as i:
                    xv = x_at(rb, i, kk)
                    with T.vectorized(0, nb) as j:
                        T.buffer_store(acc, acc[0, i, j] + xv * W[p, kk, j], [0, i, j])
            with T.unroll(0, m) as i:
                with T.vectorized(0, nb) as j:
                    T.buffer_store(acc, acc[0, i, j] + acc[1, i, j], [0, i, j])
        return acc

    def store(p, rb, m, acc):
        """Y[rows of rb, columns of p] = epilogue(acc[0]) (the last panel may be narrower)."""
        def columns(width):
            with T.unroll(0, m) as i:
                with T.vectorized(0, width) as j:
                    r, o = rb * mr + i, p * nb + j
                    T.buffer_store(f.Y, f.epilogue(acc[0, i, j], r, o), [r, o])

        if tail_cols == nb:
            columns(nb)
        else:
            with T.If(p == npanel - 1):
                with T.Then():
                    columns(tail_cols)
                with T.Else():
                    columns(nb)

    def add_into(dst, src, m):
        with T.unroll(0, m) as i:
            with T.vectorized(0, nb) as j:
                T.buffer_store(dst, dst[0, i, j] + src[0, i, j], [0, i, j])

    def tile_whole(p, rb, m):
        """The tile over all of k. A long k is summed in chunks of kc whose sums are added
        to a total: float32 error then grows like kc + k/kc terms instead of k (MLAS does
        the same; at k = 4096 a single running sum was 5x less accurate)."""
        if not chunked:
            store(p, rb, m, sum_terms(p, rb, m, 0, k))
            return
        total = T.decl_buffer((1, m, nb), F32, scope="local")
        with T.unroll(0, m) as i:
            with T.vectorized(0, nb) as j:
                T.buffer_store(total, ZERO, [0, i, j])
        with loop(k // kc) as c:
            add_into(total, sum_terms(p, rb, m, c * kc, kc), m)
        if k % kc:
            add_into(total, sum_terms(p, rb, m, k // kc * kc, k % kc), m)
        store(p, rb, m, total)

    def tile_chunk(p, rb, m, k0, length, first, last):
        """The tile over one chunk of the blocked order, through the partial sums."""
        acc = sum_terms(p, rb, m, k0, length)
        if not first:
            with T.unroll(0, m) as i:
                with T.vectorized(0, nb) as j:
                    T.buffer_store(acc, acc[0, i, j] + part[part_at(p, rb, i, j)], [0, i, j])
        if last:
            store(p, rb, m, acc)
        else:
            with T.unroll(0, m) as i:
                with T.vectorized(0, nb) as j:
                    T.buffer_store(part, acc[0, i, j], [part_at(p, rb, i, j)])

    full_blocks = nrb if tail_rows == mr else nrb - 1

    def row_blocks_of(p, b0, b1, last_chunk, tile, *args):
        """tile(p, rb, m, *args) for row blocks [b0, b1) of panel p, and the tail block if
        ``last_chunk`` (the task holding the last rows)."""
        with loop(T.max(b1 - b0, 0)) as b:
            tile(p, b0 + b, mr, *args)
        if full_blocks < nrb:
            with T.If(last_chunk):
                with T.Then():
                    tile(p, nrb - 1, tail_rows, *args)

    if not blocked:
        # Tasks: every panel times `chunks` ranges of row blocks.
        chunks = min(nrb, max(1, -(-4 * threads // npanel)))
        with loop(npanel * chunks, "parallel") as task:
            c = task % chunks
            b0 = T.Bind((c * nrb) // chunks)
            b1 = T.Bind(T.min(((c + 1) * nrb) // chunks, full_blocks))
            row_blocks_of(task // chunks, b0, b1, c == chunks - 1, tile_whole)
        return

    # Long k and several row blocks, blocked (GotoBLAS order): a task owns a group of panels
    # and a range of row blocks; per chunk of kc terms it runs every (panel, row block) of
    # its share, so the chunk of packed X (rows x kc) is reused from L2 by all its panels and
    # each panel's [kc, NB] slice of W from L1 by all its row blocks. Partial sums wait in
    # ``part``.
    groups = min(npanel, 4 * threads)
    chunks = min(nrb, max(1, -(-4 * threads // groups)))
    spans = [(c0, min(kc, k - c0)) for c0 in range(0, k, kc)]
    with loop(groups * chunks, "parallel") as task:
        g, c = task // chunks, task % chunks
        p0 = T.Bind((g * npanel) // groups)
        np_ = T.Bind(((g + 1) * npanel) // groups - p0)
        b0 = T.Bind((c * nrb) // chunks)
        b1 = T.Bind(T.min(((c + 1) * nrb) // chunks, full_blocks))
        last_rows = c == chunks - 1

        def sweep(k0, length, first, last):
            with loop(np_) as pp:
                row_blocks_of(p0 + pp, b0, b1, last_rows, tile_chunk, k0, length, first, last)

        sweep(*spans[0], True, False)
        if len(spans) > 2:  # the middle chunks, all kc long
            with loop(len(spans) - 2) as cc:
                sweep((cc + 1) * kc, kc, False, False)
        sweep(*spans[-1], False, True)


KERNELS = {("SparseLinear", "dense"): KernelDef(prepare=prepare, build=build)}
