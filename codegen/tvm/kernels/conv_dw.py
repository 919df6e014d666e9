"""Fused sparse 1x1 expand conv + depthwise conv (+ projection): the expanded tensor never
leaves cache.

``D[n, e] = ep_d(dwconv(ep_e(sum_k We[e, k] * X[n, k]), Wd[e]))`` for an inverted-residual
block's expand conv (``csr`` / ``chw-spmm`` weight ``We [E, C]``, 1x1, stride 1, no padding)
followed by its depthwise conv (``Wd [E, kh*kw]``, group E, stride 1 or 2, zero padding).
Unfused, the expand conv writes ``E x H x W`` floats (MobileNetV2-224's 16->96 expand: 4.8
MB) that the depthwise conv reads back from L3 or from the other core's cache; fused, one
channel at a time lives in a per-task buffer Z of ``(H+2)(W+2)`` floats in L1/L2:

    for n: for task in parallel(channel ranges):
      Z = 0                                  # its padding stays 0: only the interior is written
      for e in task's channels:
        for tile of X's pixels:              # the chw-spmm loop, vectorized over pixels
          acc = sum over e's nonzeros k of We[e, k] * X[n, k, tile]
          Z[interior of tile] = ep_e(acc)    # stride 2: deinterleaved into the 4 phase planes
        for tile of D[n, e]'s rows:          # kh*kw taps, each a contiguous run of Z
          D[n, e, tile] = ep_d(sum_taps Wd[e, tap] * Z[plane(tap) + shift(tap) + tile])

Z is cut into stride-phase planes like ``conv_geometry``'s shifted source: padded pixel
(pu, pv) lives in plane ``(pu % s, pv % s)`` at ``(pu // s, pv // s)``, so tap (i, j) of output
pixel (oh, ow) reads plane ``(i % s, j % s)`` at ``(oh + i // s, ow + j // s)`` and a tile of
whole wide rows (``Wq`` columns, the ones past ``OW`` computed and dropped) is one contiguous
run per tap. The stride-2 scatter deinterleaves pairs of vectors with two shuffles, or,
on images of ``DEINTERLEAVE_MIN_PIXELS`` and more, copies runs of an X deinterleaved once per
image (``_Fused._scatter``).

How an image's work is split into parallel tasks, over channel ranges or, where a fused
projection's partial sums outgrow L2, over bands of output rows, is ``conv_dw_schedule``;
the projection is added a group of channels at a time (``conv_dw_project``); how an
image's rows are tiled, and when X is copied with its rows padded or deinterleaved, is
``conv_dw_rows``. This module computes a block's channels into Z and through the depthwise
conv (``_Fused``).

Depthwise first (``spec.dw_before``, MobileNetV2's first block): there is no expand conv, Z
takes X's channels as they are, and the node's own 1x1 conv is the projection. Its first
block at 224x224 (32 channels at 112x112, 90% sparse projection to 16) took 0.62 ms as
TVM's depthwise conv and a chw-spmm kernel, about 0.2-0.28 ms fused.

Knobs: ``vector_lanes``, ``threads`` (as ``conv``), ``tile_lanes`` (pixels per tile, both
loops), ``expand_lanes`` (pixels per expand tile only; overrides ``tile_lanes`` there),
``pad_rows`` (copy each image's X with its rows padded to whole vectors; default:
``pad_rows_default``),
``tasks_per_core`` (channel blocks are split into this many tasks per core), ``band_rows``
(0: channel tasks), ``deinterleave`` (stride 2: copy X's rows deinterleaved),
``expand_rows`` (channels of a dense block accumulated per pass: all, or half where
``conv_dw_rows.half_block_lanes`` finds tiles of whole vectors), ``z_pitch`` (Z's rows
padded to whole vectors) and ``dw_lanes`` (lanes of a depthwise tile; both
``conv_dw_rows.z_rows``), ``prefetch_next`` (``PREFETCH_NEXT_MIN_PIXELS``). On
MobileNetV2-224 at 90%, tile_lanes 32/64/128 and tasks_per_core 2/4/8 measured within noise.
At 0% (dense expand, AVX2, Zen 3, kernels A/B in one process, before rows were padded) the
expand tile mattered and no single width won: ``expand_lanes`` 8 against the default 16
was 1.18-1.25x at 14x14 (64->384, 96->576), 0.97-1.08x at 28x28 and 0.5x at 7x7
(160->960), where 32 was 1.0-1.2x. With padded rows the default is faster than 8 at 14x14
(1.3x). A tuner should search it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.codegen.tvm.kernels import epilogue as epi
from sparsec.codegen.tvm.kernels.conv import _cores, _prepare_dense, _prepare_same, simd_lanes
from sparsec.codegen.tvm.kernels.conv_geometry import F32, _round_up, vloop
from sparsec.codegen.tvm.kernels.conv_dw_project import (
    Projection,
    group_channels,
    grouped_arrays,
)
from sparsec.codegen.tvm.kernels.conv_dw_rows import (
    DEINTERLEAVE_MIN_PIXELS,
    copy_rows,
    deinterleave_into,
    half_block_lanes,
    pad_rows_default,
    row_tiles,
    tiles,
    z_rows,
)
from sparsec.codegen.tvm.kernels.conv_dw_schedule import band_rows, emit_bands, emit_channel_tasks
from sparsec.codegen.tvm.kernels.conv_inner import _i32, _pow2_floor, _zero, acc_vectors, span
from sparsec.codegen.tvm.kernels.linear_common import prefetch
from sparsec.errors import CompileError
from sparsec.ops import SparseOpSpec
from sparsec.plan import ConvAttrs

# Images of at least this many pixels prefetch the next block's dense expand weight into L2
# while the current block's depthwise conv runs (``_Fused.expand``; the ``prefetch_next``
# knob): in a model the weights come from L3 or memory, each block's at the start of its
# expand. MobileNetV2 at 0%, AVX-512 (Zen 4), per kernel in the model, A/B in one process,
# two runs: 224's 7x7 blocks (160 -> 960) 1.025-1.065x, 14x14 1.00-1.03x, larger within
# 0.99-1.01x; 96's 6x6 blocks 1.02-1.08x, its 3x3 ones 0.93-0.97x (little work a block
# for the prefetches).
PREFETCH_NEXT_MIN_PIXELS = 36


@dataclass(frozen=True)
class DwGeometry:
    """Shapes of the fused pair on one input shape."""

    n: int
    c: int
    h: int
    w: int
    e: int  # expanded channels
    kh: int
    kw: int
    s: int  # stride (both axes)
    pt: int
    pl: int
    oh: int
    ow: int
    hq: int  # plane rows
    wq: int  # plane columns


def dw_geometry(dw: ConvAttrs, in_shape, e: int, entry: str) -> DwGeometry:
    n, c, h, w = (int(d) for d in in_shape)
    (kh, kw), (sh, sw) = dw.kernel_shape, dw.strides
    pt, pl, pb, pr = dw.pads
    if tuple(dw.dilations) != (1, 1) or sh != sw or sh not in (1, 2):
        raise CompileError(f"codegen/tvm: fused depthwise after {entry}: needs stride 1 or 2 on "
                           f"both axes and no dilation, got strides {tuple(dw.strides)}, "
                           f"dilations {tuple(dw.dilations)}")
    if sh == 2 and w % 2:
        raise CompileError(f"codegen/tvm: fused depthwise after {entry}: stride 2 needs an even "
                           f"width, got {w}")
    hp, wp = h + pt + pb, w + pl + pr
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if oh <= 0 or ow <= 0 or min(dw.pads) < 0:
        raise CompileError(f"codegen/tvm: fused depthwise after {entry}: empty output or "
                           f"negative pads (input {h}x{w}, kernel {kh}x{kw}, pads {dw.pads})")
    return DwGeometry(n, c, h, w, e, kh, kw, sh, pt, pl, oh, ow, -(-hp // sh), -(-wp // sh))


def build(spec: SparseOpSpec, in_shape, arrays: dict[str, np.ndarray], target,
          knobs=None) -> tirx.PrimFunc:
    """PrimFunc of a SparseConv with ``spec.depthwise``:
    after (``dw_before`` false): ``(x, <arrays>, [bias], dw_weight, [dw_bias], [pj_bias],
    [pj_residual], y)``, with a projection ``<arrays>`` ending in its pj_values, pj_cols,
    pj_gptr (``conv_dw_project.grouped_arrays``) and Y having its channels;
    before: ``(x, pj_values, pj_cols, pj_gptr, [bias], [residual], dw_weight, [dw_bias],
    y)``: the depthwise conv reads X and the node's own 1x1 conv is the projection."""
    knobs = dict(knobs or {})
    vl = simd_lanes(target, knobs)
    before = spec.dw_before
    pj = spec if before else spec.project
    c = spec.conv
    if (tuple(c.kernel_shape) != (1, 1) or tuple(c.strides) != (1, 1) or any(c.pads)
            or c.group != 1 or (spec.has_residual and not before)):
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: a fused depthwise conv "
                           f"needs a 1x1 conv with stride 1, no padding and no residual")
    if int(in_shape[1]) != spec.in_features:
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: input has {in_shape[1]} "
                           f"channels, the weight in_features {spec.in_features}")
    e = spec.in_features if before else spec.out_features
    g = dw_geometry(spec.depthwise, in_shape, e, spec.entry)
    dense = "w" in arrays
    rows = arrays["w"].shape[2] if dense else 1  # channels per block (sharing X's loads)
    budget = int(knobs.get("tile_lanes", 4 * vl))
    # the expand tile's rows x lanes accumulators stay within the register file
    e_budget = budget if not dense else int(knobs.get(
        "tile_lanes", max(1, _pow2_floor(acc_vectors(vl) // rows)) * vl))
    sub = rows  # channels one expand pass accumulates (``half_block_lanes``)
    if "expand_rows" in knobs:
        sub = int(knobs["expand_rows"])
        if sub < 1 or rows % sub:
            raise CompileError(f"codegen/tvm: expand_rows {sub} does not divide the weight's "
                               f"blocks of {rows} channels")
    elif dense and not any(k in knobs for k in ("tile_lanes", "expand_lanes", "pad_rows")):
        if lanes := half_block_lanes(g, rows, vl):
            sub, e_budget = rows // 2, lanes
            knobs["pad_rows"] = False
    e_budget = int(knobs.get("expand_lanes", e_budget))
    if g.s == 2:
        budget -= budget % 2
        e_budget -= e_budget % 2
    zq, dw_budget = z_rows(g, vl, budget, knobs)
    pad = bool(knobs.get("pad_rows", pad_rows_default(g, sub, e_budget, vl, before)))
    pad = pad and g.w % vl != 0
    wp = _round_up(g.w, vl) if pad else g.w
    deinterleave = g.s == 2 and bool(knobs.get(
        "deinterleave", pad or g.h * g.w >= DEINTERLEAVE_MIN_PIXELS))  # ``_Fused._scatter``
    copy = pad or deinterleave
    cores = _cores(target, knobs)
    blocks = -(-g.e // rows)
    o_out = pj.out_features if pj else g.e
    band = band_rows(g, o_out if pj else None, cores, knobs)
    group = group_channels(spec, dense) if pj else 1
    if pj and (arrays["pj_gptr"].shape[0] - 1) != -(-g.e // group) * o_out:
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: the projection's arrays "
                           f"are not grouped by {group} channels")
    p = g.h * g.w
    px = g.oh * g.ow
    y_shape = (g.n, o_out, g.oh, g.ow)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            x = T.arg("x", T.buffer((g.n, g.c, g.h, g.w), F32))
            bufs = {name: T.arg(name, T.buffer(a.shape, str(a.dtype)))
                    for name, a in arrays.items()}
            bias = pj_bias = res = None
            if before:
                pj_bias = T.arg("bias", T.buffer((o_out,), F32)) if spec.has_bias else None
                res = T.arg("residual", T.buffer(y_shape, F32)) if spec.has_residual else None
            elif spec.has_bias:
                bias = T.arg("bias", T.buffer((g.e,), F32))
            bufs["dw_weight"] = T.arg("dw_weight", T.buffer((g.e, 1, g.kh, g.kw), F32))
            dbias = T.arg("dw_bias", T.buffer((g.e,), F32)) if spec.has_dw_bias else None
            if not before and pj is not None:
                if pj.has_bias:
                    pj_bias = T.arg("pj_bias", T.buffer((o_out,), F32))
                if pj.has_residual:
                    res = T.arg("pj_residual", T.buffer(y_shape, F32))
            y = T.arg("y", T.buffer(y_shape, F32))
            pj_res = None if res is None else T.decl_buffer((g.n * o_out * px,), F32,
                                                            data=res.data)
            xf = T.decl_buffer((g.n * g.c * p,), F32, data=x.data)
            yf = T.decl_buffer((g.n * o_out * px,), F32, data=y.data)
            xp = T.decl_buffer((g.c * g.h * wp,), F32) if copy else None
            proj = None if pj is None else Projection(pj, bufs, g.e, group, vl, yf, pj_bias,
                                                      pj_res)
            k = _Fused(g, vl, dw_budget, e_budget, rows, bufs, xf if xp is None else xp, yf,
                       bias, dbias, [] if before else spec.epilogue, spec.dw_epilogue, proj,
                       before, wp, deinterleave, band or g.oh, sub, zq,
                       bool(knobs.get("prefetch_next", p >= PREFETCH_NEXT_MIN_PIXELS)))
            with T.serial(g.n) as n:
                if xp is not None:
                    copy_rows(xf, xp, g, n, wp, vl, deinterleave)
                if band:
                    emit_bands(k, n, blocks, cores)
                else:
                    emit_channel_tasks(k, n, blocks, cores, knobs)
    return ib.get()


@dataclass
class _Fused:
    g: DwGeometry
    vl: int
    budget: int  # lanes of a depthwise tile
    e_budget: int  # lanes of an expand tile
    rows: int  # channels per block
    bufs: dict
    xf: object
    yf: object
    bias: object
    dbias: object
    steps: list  # the expand conv's epilogue
    dw_steps: list
    pj: Projection | None
    identity: bool  # no expand conv: Z takes X's channel as it is (depthwise before the 1x1)
    wp: int  # row length of ``xf``: W, or W padded to whole vectors (``copy_rows``)
    deinterleaved: bool  # ``xf`` holds each row's even columns first, then its odd ones
    band: int  # output rows that Z holds: OH, or a band's (``band_rows``)
    sub: int  # channels per expand pass: ``rows``, or half a dense block (``half_block_lanes``)
    zq: int  # a Z plane's row pitch: its columns ``g.wq``, or those rounded up to whole vectors
    prefetch_next: bool = False  # prefetch the next block's dense weight (``expand``)

    @property
    def copied(self) -> bool:
        """``xf`` is one image's copy of X (``copy_rows``), not X."""
        return self.wp != self.g.w or self.deinterleaved

    @property
    def hq(self) -> int:
        """Rows of a Z plane: the band's rows and the ones below its taps reach."""
        return self.g.hq if self.band == self.g.oh else self.band + (self.g.kh - 1) // self.g.s

    @property
    def plane(self) -> int:
        return self.hq * self.zq

    @property
    def z_size(self) -> int:
        # rows-mode tiles read up to (kw - 1) // s past a plane's end (junk columns)
        return self.g.s * self.g.s * self.plane + self.zq + 64

    # ------------------------------------------------------------ expand: X -> Z interior

    def expand(self, z, n, blk, band=None) -> None:
        """``_expand``, then, with ``prefetch_next``, block blk + 1's dense weight into L2
        while block blk's depthwise conv runs."""
        self._expand(z, n, blk, band)
        if self.prefetch_next and "w" in self.bufs:
            w = self.bufs["w"]
            _, c, rows = (int(d) for d in w.shape)
            size = w.shape[0] * c * rows
            for line in range(-(-c * rows // 16)):
                at = T.min((blk + 1) * (c * rows) + line * 16, max(size - 16, 0))
                prefetch(w, at, locality=2)  # into L2

    def _expand(self, z, n, blk, band=None) -> None:
        """E of the block's channels into their Z buffers (``z`` + channel * z_size); with
        ``band`` = (first image row, end row, the band's first output row), those rows only,
        one at a time.

        Tiles are whole rows of X when they fit the budget, else segments of a row. With
        ``wp > W`` (padded rows) every tile is whole vectors, the lanes past W computed and
        dropped. Unpadded, a row of 14 is a vector of 8, one of 4 and one of 2, and 6
        channels of those take 18 accumulators: more than AVX2's 16 registers."""
        g, wp = self.g, self.wp
        if band is None:
            mode, row0 = tiles(g.h, wp, self.e_budget), 0
            if mode[0] == "rows":
                row_tiles(mode, lambda u0, r: self._expand_tile(z, n, blk, u0, r, 0, g.w,
                                                                 row0=0))
                return
            lo, hi = 0, g.h
        else:
            lo, hi, row0 = band
            mode = tiles(1, wp, self.e_budget)
            if mode[0] == "rows":
                with span(lo, hi) as u:
                    self._expand_tile(z, n, blk, u, 1, 0, g.w, row0=row0)
                return
        with span(lo, hi) as u:
            for c0, width in mode[1]:
                if c0 < g.w:  # a segment only of padding has nothing to compute
                    self._expand_tile(z, n, blk, u, 1, c0, min(width, g.w - c0), width,
                                      row0=row0)

    def _expand_tile(self, z, n, blk, u0, rows: int, v0: int, cols: int,
                     seg: int | None = None, row0=0) -> None:
        """E[block's channels, u0:u0+rows, v0:v0+cols] (a contiguous run of ``xf``'s pixels,
        each row ``seg`` wide (default: a whole row of ``xf``, ``wp``) of which the first
        ``cols`` are stored) into Z, whose planes start at output row ``row0``."""
        g, nr = self.g, self.rows
        colsp = self.wp if seg is None else seg
        width = rows * colsp
        p = g.h * self.wp
        stage = T.decl_buffer((width + 2 * self.vl,), F32, scope="local")
        # the padded copy holds one image; X itself all of them
        base = T.Bind((0 if self.copied else n * (g.c * p)) + u0 * self.wp + v0)
        xf = self.xf

        def scatter(rr):
            for r in range(rows):
                pu = T.Bind(u0 + r + g.pt)
                row = T.Bind(rr * self.z_size + pu % g.s * (g.s * self.plane)
                             + (pu // g.s - row0) * self.zq)
                self._scatter(z, row, stage, r * colsp, v0, cols)

        if self.identity:  # one channel per block
            src = T.Bind(base + blk * p)
            vloop(width, lambda l: T.buffer_store(stage, xf[src + l], [l]))
            scatter(0)
            return
        acc = T.decl_buffer((self.sub * width,), F32, scope="local")  # one pass's rows

        def finish(r0: int, count: int) -> None:  # epilogue, then into Z: channels r0..
            for rr in range(r0, r0 + count):
                ch = T.Bind(blk * nr + rr)
                if self.bias is None:
                    b = None
                else:  # padding rows of the last block: unused
                    b = self.bias[T.min(ch, g.e - 1) if g.e % nr else ch]
                a0 = (rr - r0) * width
                vloop(width, lambda l: T.buffer_store(
                    stage, epi.emit(acc[a0 + l], self.steps, bias=b), [l]))
                scatter(rr)

        if "w" in self.bufs:  # dense [blocks, C, rows]: each X run feeds ``sub`` rows
            wp = self.bufs["w"]
            sub = self.sub
            for r0 in range(0, nr, sub):
                _zero(acc, 0, sub * width)
                with T.serial(g.c) as kk:
                    off = T.Bind(base + kk * p)
                    for rr in range(sub):
                        wv = T.Bind(wp[blk, kk, r0 + rr])
                        a0 = rr * width
                        vloop(width, lambda l: T.buffer_store(
                            acc, acc[a0 + l] + wv * xf[off + l], [a0 + l]))
                finish(r0, sub)
            return
        vals, idx, ptr = self.bufs["values"], self.bufs["indices"], self.bufs["indptr"]
        _zero(acc, 0, width)
        with span(ptr[blk], ptr[blk + 1]) as nz:
            off = T.Bind(base + _i32(idx[nz]) * p)
            wv = T.Bind(vals[nz])
            vloop(width, lambda l: T.buffer_store(acc, acc[l] + wv * xf[off + l], [l]))
        finish(0, nr)

    def _scatter(self, z, row, stage, s0: int, v0: int, cols: int) -> None:
        """Z[plane row of ``row``] <- stage[s0 : s0 + cols], E's columns v0.. of one row of
        ``xf``. At stride 2 the row's even and odd pixels go to two column phases' planes:
        deinterleaved by shuffles, or, when ``xf`` holds X's rows deinterleaved already
        (even columns, then odd ones: ``copy_rows``), as two contiguous runs. A 1x1 conv
        keeps any order of pixels, so deinterleaving X's C channels once per image saves
        shuffling E expanded ones: on MobileNetV2-224 at 90% (AVX2, Zen 3, A/B in one
        process) 1.29x for 16->96 at 112x112 and 1.22x for 24->144 at 56x56, but 0.90x at
        28x28 and 14x14, where the copy's own parallel loop costs more than it saves. Hence
        ``DEINTERLEAVE_MIN_PIXELS``, unless the rows are copied anyway (padded). Remeasured
        2026-12-01 with the engines' pools quiet between blocks (``sparsec.timing``): 16->96
        at 48x48 (MobileNetV2-96) 1.11x at 0% and 1.07x at 90%, 32->192 at 28x28
        0.97-0.98x: the threshold sits between them (24->144 at 24x24, 1.03-1.07x, is
        within the noise and left as it was)."""
        g = self.g
        if g.s == 1:
            col = row + v0 + g.pl
            vloop(cols, lambda l: T.buffer_store(z, stage[s0 + l], [col + l]))
            return
        if self.deinterleaved:
            half = g.w // 2
            for par, lo in ((0, 0), (1, half)):
                a, b = max(v0, lo), min(v0 + cols, lo + half)
                if a >= b:
                    continue
                pv = 2 * (a - lo) + par + g.pl  # padded column of the run's first pixel
                dst = T.Bind(row + (pv % 2) * self.plane + pv // 2)
                src = s0 + a - v0
                vloop(b - a, lambda l: T.buffer_store(z, stage[src + l], [dst + l]))
            return
        for par in (0, 1):
            pv = v0 + par + g.pl
            dst = T.Bind(row + (pv % 2) * self.plane + pv // 2)
            deinterleave_into(z, dst, stage, s0, par, (cols - par + 1) // 2, self.vl)

    # ------------------------------------------------------------ depthwise: Z -> D

    def depthwise(self, z, z0: int, ch, out, ybase) -> None:
        """D[ch] from channel ch's Z (at ``z0``) into ``out[ybase:]`` (the band's rows x
        OW)."""
        g = self.g
        mode = tiles(self.band, self.zq, self.budget)
        if mode[0] == "rows":
            row_tiles(mode, lambda u0, r: self._dw_rows(z, z0, ch, out, ybase, u0, r))
        else:
            segs = [(c0, min(self.budget, g.ow - c0)) for c0 in range(0, g.ow, self.budget)]
            with T.serial(self.band) as oh:
                for c0, width in segs:
                    acc = self._taps(z, ch, T.Bind(z0 + oh * self.zq + c0), width)
                    yoff = T.Bind(ybase + oh * g.ow + c0)
                    vloop(width, lambda l: T.buffer_store(out, self._ep(acc[l], ch),
                                                          [yoff + l]))

    def _taps(self, z, ch, q0, width: int):
        g, wd = self.g, self.bufs["dw_weight"]
        acc = T.decl_buffer((width,), F32, scope="local")
        vloop(width, lambda l: T.buffer_store(acc, tirx.const(0.0, F32), [l]))
        for i in range(g.kh):
            for j in range(g.kw):
                shift = ((i % g.s) * g.s + j % g.s) * self.plane + (i // g.s) * self.zq + j // g.s
                wv = T.Bind(wd[ch, 0, i, j])
                off = T.Bind(q0 + shift)
                vloop(width, lambda l: T.buffer_store(acc, acc[l] + wv * z[off + l], [l]))
        return acc

    def _ep(self, value, ch):
        b = self.dbias[ch] if self.dbias is not None else None
        return epi.emit(value, self.dw_steps, bias=b)

    def _dw_rows(self, z, z0: int, ch, out, ybase, oh0, rows: int) -> None:
        g = self.g
        width = rows * self.zq
        acc = self._taps(z, ch, T.Bind(z0 + oh0 * self.zq), width)
        stage = T.decl_buffer((width,), F32, scope="local")
        vloop(width, lambda l: T.buffer_store(stage, self._ep(acc[l], ch), [l]))
        for r in range(rows):
            yoff = T.Bind(ybase + (oh0 + r) * g.ow)
            vloop(g.ow, lambda l: T.buffer_store(out, stage[r * self.zq + l], [yoff + l]))


def _with_projection(prepare):
    """``prepare`` for the expand conv's arrays, plus the projection's (``pj_*`` keys)
    grouped (``conv_dw_project.grouped_arrays``); a depthwise conv before the node's 1x1
    conv makes that conv the projection, its arrays only grouped."""

    def run(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target):
        if spec.dw_before:
            return grouped_arrays(spec, arrays, group_channels(spec, False))
        own = {k: v for k, v in arrays.items() if not k.startswith("pj_")}
        out = prepare(spec, own, target)
        if spec.project is not None:
            out.update(grouped_arrays(spec.project, {k[3:]: v for k, v in arrays.items()
                                                     if k.startswith("pj_")},
                                      group_channels(spec, "w" in out)))
        return out

    return run


KERNELS = {
    ("SparseConv", "dw:csr"): KernelDef(_with_projection(_prepare_same), build),
    ("SparseConv", "dw:chw-spmm"): KernelDef(_with_projection(_prepare_same), build),
    ("SparseConv", "dw:dense"): KernelDef(_with_projection(_prepare_dense), build),
}
