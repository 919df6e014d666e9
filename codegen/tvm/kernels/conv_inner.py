"""Inner loops of the SparseConv kernels: one pixel tile times a range of output rows.

Every layout computes ``acc[o, l] = sum_k Wc[o, k] * src[base + coff(k) + l]`` for the
``width`` pixels of one tile (``conv_geometry``), vectorized over pixels with the accumulators
in registers, then hands ``acc`` to ``ctx.store`` (epilogue and write-back):

- ``csr`` / ``chw-spmm``: walk output channel o's nonzeros (XNNPACK's spmm: one broadcast
  weight times a run of pixels per nonzero).
- ``nm``: the same over a fixed count of stored values per channel (ELL: ``prepare`` turns the
  in-group positions into absolute columns); n:m denser than ``conv.NM_DENSE_RATIO`` runs as
  ``dense`` instead.
- ``bsr{r}x{c}``: per r x c block, c column runs each feed r accumulator rows.
- ``dense``: register-blocked GEMM, ``DENSE_ROWS`` output channels share every column run;
  ``prepare`` packs W as ``[ceil(O/rows), K, rows]`` so the broadcasts are contiguous.

``Inner.lanes`` is the tile width (pixels) that keeps the accumulators within the register
file: ``acc_vectors(vl)`` vectors (AVX-512 has 32 registers, AVX2 16), or ``knobs["tile_lanes"]``.
Every loop starts at 0 (``span``): see its docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.tirx.script import builder as T

from sparsec.codegen.tvm.kernels.conv_geometry import F32, vloop

DENSE_ROWS = 6


def acc_vectors(vl: int) -> int:
    """Accumulator vectors one tile may hold in registers."""
    return 24 if vl >= 16 else 12


@dataclass
class TileCtx:
    src: object  # flat source buffer (X or Z)
    base: tirx.PrimExpr  # element offset of this image's pixel q0 in src
    coff: Callable[[tirx.PrimExpr], tirx.PrimExpr]  # column k -> element offset
    width: int  # pixels computed
    store: Callable[[tirx.PrimExpr, object, int], None]  # (o, acc, acc offset) -> writes Y


@dataclass(frozen=True)
class Inner:
    lanes: int  # tile width in pixels
    rows: int  # output channels per row block
    blocks: int  # row blocks
    stored: int  # weight values the kernel multiplies (nonzeros, block or padding zeros)
    share: int  # accumulator rows fed by one column load (1: the loop is load-bound)
    emit: Callable[[TileCtx, dict, tirx.PrimExpr, tirx.PrimExpr], None]


def _zero(acc, start: int, width: int) -> None:
    vloop(width, lambda l: T.buffer_store(acc, tirx.const(0.0, F32), [start + l]))


def _fma(acc, start: int, w, ctx: TileCtx, off) -> None:
    """acc[start + l] += w * src[off + l] over the tile's pixels."""
    src = ctx.src
    vloop(ctx.width, lambda l: T.buffer_store(acc, acc[start + l] + w * src[off + l], [start + l]))


def _i32(e):
    return tirx.Cast("int32", e) if str(e.ty) != "int32" else e


@contextmanager
def span(lo, hi):
    """``for v in range(lo, hi)`` as a zero-based loop: TVM 0.27 mis-lowers a loop with a
    non-zero start whose body holds a loop with bounds depending on it."""
    with T.serial(hi - lo) as i:
        yield T.Bind(lo + i)


def csr_inner(arrays: dict[str, np.ndarray], out: int, vl: int, knobs: dict) -> Inner:
    lanes = int(knobs.get("tile_lanes", 4 * vl))

    def emit(ctx: TileCtx, bufs: dict, lo, hi) -> None:
        vals, idx, ptr = bufs["values"], bufs["indices"], bufs["indptr"]
        acc = T.decl_buffer((ctx.width,), F32, scope="local")
        with span(lo, hi) as o:
            _zero(acc, 0, ctx.width)
            with span(ptr[o], ptr[o + 1]) as nz:
                off = T.Bind(ctx.base + ctx.coff(_i32(idx[nz])))
                w = T.Bind(vals[nz])
                _fma(acc, 0, w, ctx, off)
            ctx.store(o, acc, 0)

    return Inner(lanes, 1, out, int(arrays["indptr"][-1]), 1, emit)


def ell_inner(arrays: dict[str, np.ndarray], out: int, vl: int, knobs: dict) -> Inner:
    lanes = int(knobs.get("tile_lanes", 4 * vl))
    per_row = arrays["values"].shape[1]

    def emit(ctx: TileCtx, bufs: dict, lo, hi) -> None:
        vals, cols = bufs["values"], bufs["indices"]
        acc = T.decl_buffer((ctx.width,), F32, scope="local")
        with span(lo, hi) as o:
            _zero(acc, 0, ctx.width)
            with T.serial(per_row) as j:
                off = T.Bind(ctx.base + ctx.coff(_i32(cols[o, j])))
                w = T.Bind(vals[o, j])
                _fma(acc, 0, w, ctx, off)
            ctx.store(o, acc, 0)

    return Inner(lanes, 1, out, int(arrays["values"].size), 1, emit)


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def bsr_inner(arrays: dict[str, np.ndarray], out: int, vl: int, knobs: dict) -> Inner:
    _, r, c = arrays["values"].shape
    budget = acc_vectors(vl)
    vecs = _pow2_floor(min(4, max(1, budget // r)))
    lanes = int(knobs.get("tile_lanes", vecs * vl))
    chunk = max(1, min(r, budget // max(1, lanes // vl)))  # rows held at once
    parts = [(r0, min(chunk, r - r0)) for r0 in range(0, r, chunk)]
    unroll_cols = chunk * c <= 64

    def emit(ctx: TileCtx, bufs: dict, lo, hi) -> None:
        vals, idx, ptr = bufs["values"], bufs["indices"], bufs["indptr"]
        wd = ctx.width
        acc = T.decl_buffer((chunk * wd,), F32, scope="local")

        def column(b, r0, nr, kb, cc):
            off = T.Bind(ctx.base + ctx.coff(kb + cc))
            for rr in range(nr):
                _fma(acc, rr * wd, vals[b, r0 + rr, cc], ctx, off)

        with span(lo, hi) as ob:
            for r0, nr in parts:
                _zero(acc, 0, nr * wd)
                with span(ptr[ob], ptr[ob + 1]) as b:
                    kb = T.Bind(_i32(idx[b]) * c)
                    if unroll_cols:
                        for cc in range(c):
                            column(b, r0, nr, kb, cc)
                    else:
                        with T.serial(c) as cc:
                            column(b, r0, nr, kb, cc)
                for rr in range(nr):
                    ctx.store(ob * r + r0 + rr, acc, rr * wd)

    return Inner(lanes, r, out // r, int(arrays["indptr"][-1]) * r * c, r, emit)


def dense_rows(out: int) -> int:
    return min(DENSE_ROWS, out)


def dense_inner(arrays: dict[str, np.ndarray], out: int, vl: int, knobs: dict) -> Inner:
    blocks, k, rows = arrays["w"].shape
    vecs = _pow2_floor(min(4, max(1, acc_vectors(vl) // rows)))
    lanes = int(knobs.get("tile_lanes", vecs * vl))

    def emit(ctx: TileCtx, bufs: dict, lo, hi) -> None:
        wp = bufs["w"]
        wd = ctx.width
        acc = T.decl_buffer((rows * wd,), F32, scope="local")
        with span(lo, hi) as ob:
            _zero(acc, 0, rows * wd)
            with T.serial(k) as kk:
                off = T.Bind(ctx.base + ctx.coff(kk))
                for rr in range(rows):
                    _fma(acc, rr * wd, wp[ob, kk, rr], ctx, off)
            for rr in range(rows):
                if out % rows:
                    with T.If(ob * rows + rr < out):
                        with T.Then():
                            ctx.store(ob * rows + rr, acc, rr * wd)
                else:
                    ctx.store(ob * rows + rr, acc, rr * wd)

    return Inner(lanes, rows, blocks, out * k, rows, emit)
