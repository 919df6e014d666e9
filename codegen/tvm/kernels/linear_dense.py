"""Dense SparseLinear: a register-blocked GEMM over packed weight panels.

``Y[r, o] = epilogue(sum_k X[r, k] * W[o, k])``, computed as

- ``prepare``: W [O, K] -> panels ``w_panels`` [P, K, NB], panel p holding output columns
  [p*NB, p*NB+NB) (zero-padded past O), NB = 2 vectors of the target (1 when O fits one);
- ``build``: X is packed into row blocks ``XP`` [ceil(R/MR), K, MR] when R > 2 (contiguous
  broadcasts, no 4K-aliasing of strided rows); then a parallel loop over (panel, row chunk)
  tasks runs the micro-kernel: MR x NB accumulators in registers, one k at a time
  (``acc[i, :] += x[r0+i, k] * panel[k, :]``, vectorized over the NB columns), and the epilogue
  fused into the store. MR fills the register file (14 with 32 registers, 6 with 16).
  With 1-2 rows (GEMV) the k loop is split over two accumulator sets to hide FMA latency.

Knobs (all optional): ``mr`` rows per micro-tile, ``threads``, ``lanes``.
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
    thread_count,
    vector_lanes,
    vector_registers,
)


def panel_width(out_features: int, lanes: int) -> int:
    return lanes if out_features <= lanes else 2 * lanes


def prepare(spec, arrays, target):
    """W [O, K] -> {"w_panels": [P, K, NB]} (columns past O are zero)."""
    w = np.asarray(arrays["w"], dtype=np.float32)
    o, k = w.shape
    nb = panel_width(o, vector_lanes(target))
    p = -(-o // nb)
    padded = np.zeros((p * nb, k), np.float32)
    padded[:o] = w
    return {"w_panels": np.ascontiguousarray(padded.reshape(p, nb, k).transpose(0, 2, 1))}


def build(spec, in_shape, arrays, target, knobs=None):
    knobs = knobs or {}
    panels = arrays["w_panels"]
    with linear_func(spec, in_shape, arrays, "sparse_linear_dense") as f:
        _body(f, panels.shape, vector_lanes(target, knobs), vector_registers(target),
              thread_count(target, knobs), knobs)
    return f.func


def _body(f: LinearFunc, panel_shape, lanes, registers, threads, knobs):
    npanel, k, nb = (int(d) for d in panel_shape)
    rows, out = f.rows, f.o
    nvec = max(1, nb // lanes)
    mr = int(knobs.get("mr") or max(1, (registers - nvec - 1) // nvec))
    mr = min(mr, rows)
    nrb = -(-rows // mr)  # row blocks; the last has rows - (nrb-1)*mr rows
    tail_rows = rows - (nrb - 1) * mr
    tail_cols = out - (npanel - 1) * nb  # valid columns of the last panel
    W = f.arrays["w_panels"]

    xp = None
    if rows > 2:
        xp = T.decl_buffer((nrb, k, mr), F32, scope="global")
        with loop(nrb, "parallel") as rb:
            with loop(T.min(mr, rows - rb * mr)) as i:
                with loop(k) as kk:
                    T.buffer_store(xp, f.X[rb * mr + i, kk], [rb, kk, i])

    def x_at(rb, i, kk):
        return f.X[rb * mr + i, kk] if xp is None else xp[rb, kk, i]

    def tile(p, rb, m):
        """Rows [rb*mr, rb*mr+m) x panel p: accumulate over k, then the fused store."""
        splits = 2 if m * nvec < 4 and k >= 2 else 1
        acc = T.decl_buffer((splits, m, nb), F32, scope="local")
        with T.unroll(0, splits) as u:
            with T.unroll(0, m) as i:
                with T.vectorized(0, nb) as j:
                    T.buffer_store(acc, ZERO, [u, i, j])
        with loop(k // splits) as k2:
            with T.unroll(0, splits) as u:
                kk = k2 * splits + u
                with T.unroll(0, m) as i:
                    xv = x_at(rb, i, kk)
                    with T.vectorized(0, nb) as j:
                        T.buffer_store(acc, acc[u, i, j] + xv * W[p, kk, j], [u, i, j])
        if splits > 1:
            if k % splits:
                kk = k - 1
                with T.unroll(0, m) as i:
                    xv = x_at(rb, i, kk)
                    with T.vectorized(0, nb) as j:
                        T.buffer_store(acc, acc[0, i, j] + xv * W[p, kk, j], [0, i, j])
            with T.unroll(0, m) as i:
                with T.vectorized(0, nb) as j:
                    T.buffer_store(acc, acc[0, i, j] + acc[1, i, j], [0, i, j])

        def store(width):
            with T.unroll(0, m) as i:
                with T.vectorized(0, width) as j:
                    r, o = rb * mr + i, p * nb + j
                    T.buffer_store(f.Y, f.epilogue(acc[0, i, j], r, o), [r, o])

        if tail_cols == nb:
            store(nb)
        else:
            with T.If(p == npanel - 1):
                with T.Then():
                    store(tail_cols)
                with T.Else():
                    store(nb)

    # Tasks: every panel times `chunks` ranges of row blocks, enough for all threads.
    chunks = min(nrb, max(1, -(-4 * threads // npanel)))
    full_blocks = nrb if tail_rows == mr else nrb - 1
    with loop(npanel * chunks, "parallel") as task:
        p = task // chunks
        c = task % chunks
        b0 = T.Bind((c * nrb) // chunks)
        b1 = T.Bind(T.min(((c + 1) * nrb) // chunks, full_blocks))
        with loop(T.max(b1 - b0, 0)) as b:
            tile(p, b0 + b, mr)
        if full_blocks < nrb:
            with T.If(c == chunks - 1):
                with T.Then():
                    tile(p, nrb - 1, tail_rows)


KERNELS = {("SparseLinear", "dense"): KernelDef(prepare=prepare, build=build)}
