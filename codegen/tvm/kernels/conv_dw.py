"""Fused sparse 1x1 expand conv + depthwise conv: the expanded tensor never leaves cache.

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
run per tap. The stride-2 scatter deinterleaves pairs of vectors with two shuffles.

Knobs: ``vector_lanes``, ``threads`` (as ``conv``), ``tile_lanes`` (pixels per tile, both
loops), ``expand_lanes`` (pixels per expand tile only; overrides ``tile_lanes`` there),
``pad_rows`` (copy each image's X with its rows padded to whole vectors; default: when the
expand tiles of the rows as they are would not keep their accumulators in registers),
``tasks_per_core`` (channel blocks are split into this many tasks per core). On
MobileNetV2-224 at 90%, tile_lanes 32/64/128 and tasks_per_core 2/4/8 measured within noise.
At 0% (dense expand, AVX2, Zen 3, kernels A/B in one process, before rows were padded) the
expand tile mattered and no single width won: ``expand_lanes`` 8 against the default 16
was 1.18-1.25x at 14x14 (64->384, 96->576), 0.97-1.08x at 28x28 and 0.5x at 7x7
(160->960), where 32 was 1.0-1.2x. With padded rows the default is faster than 8 at 14x14
(1.3x). A tuner should search it.

Padded rows: a dense expand tile is 6 channels times a run of pixels. A 7x7 or 14x14 image
has rows of 7 or 14, runs of 14 that ``vloop`` cuts into vectors of 8, 4 and 2: 18
accumulators, which AVX2's 16 registers cannot hold. With each image's X copied into rows of
8 or 16 (``_pad_rows``, once per image before the parallel loop), a tile is whole vectors,
and the padding lanes are computed and dropped. Measured on AVX2 (Zen 3), kernels A/B in one
process: 160->960 at 7x7 1.70-1.86x, 64->384 and 96->576 at 14x14 1.6-1.8x; 28x28 and
larger are not padded (0.9x when forced at 28x28). MobileNetV2-224 at 0% went from
0.76-0.90x onnxruntime to 1.04-1.07x.
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
from sparsec.codegen.tvm.kernels.conv_geometry import F32, _round_up, pow2_pieces, vloop
from sparsec.codegen.tvm.kernels.conv_inner import _i32, _pow2_floor, acc_vectors, span
from sparsec.errors import CompileError
from sparsec.formats import Packed, index_dtype, unpack
from sparsec.ops import SparseOpSpec
from sparsec.plan import ConvAttrs

TASKS_PER_CORE = 4  # channel ranges per core (each task zeroes its own Z once per image)


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

    @property
    def plane(self) -> int:
        return self.hq * self.wq

    @property
    def z_size(self) -> int:
        # rows-mode tiles read up to (kw - 1) // s past a plane's end (junk columns)
        return self.s * self.s * self.plane + self.wq + 64


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


def _tiles(rows: int, cols: int, budget: int):
    """Row tiles of ``rows x cols`` for at most ``budget`` lanes: ("rows", R, count, tail R)
    when whole rows fit, else ("seg", [(col0, width)...]) per row."""
    if cols <= budget:
        r = max(1, min(rows, budget // cols))
        return "rows", r, rows // r, rows % r
    segs = [(c0, min(budget, cols - c0)) for c0 in range(0, cols, budget)]
    return "seg", segs


def _row_tiles(mode, body) -> None:
    """``body(first row, rows)`` for each tile of a ("rows", R, count, tail) mode: a loop
    over the whole tiles, then the tail tile."""
    _, r, count, tail = mode
    if count:
        with T.serial(count) as rb:
            body(T.Bind(rb * r), r)
    if tail:
        body(count * r, tail)


def _tile_registers(h: int, w: int, budget: int, vl: int) -> int:
    """Vector registers of one channel's accumulators in the widest expand tile of an h x w
    image (``_tiles``), each run cut in power-of-two pieces as ``vloop`` emits it."""
    mode = _tiles(h, w, budget)
    widths = [mode[1] * w] if mode[0] == "rows" else [width for _, width in mode[1]]
    return max(sum(-(-m // vl) for _, m in pow2_pieces(width)) for width in widths)


def _pad_rows(xf, xp, g: DwGeometry, n, wp: int, vl: int) -> None:
    """xp[c, u, :] = X[n, c, u, :] followed by zeros up to ``wp`` (parallel over channels)."""
    p = g.h * g.w
    with T.parallel(g.c) as c:
        with T.serial(g.h) as u:
            src = T.Bind(n * (g.c * p) + c * p + u * g.w)
            dst = T.Bind((c * g.h + u) * wp)
            vloop(g.w, lambda l: T.buffer_store(xp, xf[src + l], [dst + l]), chunk=vl)
            vloop(wp - g.w, lambda l: T.buffer_store(xp, tirx.const(0.0, F32),
                                                     [dst + g.w + l]))


def build(spec: SparseOpSpec, in_shape, arrays: dict[str, np.ndarray], target,
          knobs=None) -> tirx.PrimFunc:
    """PrimFunc ``(x, <arrays>, [bias], dw_weight, [dw_bias], [pj_bias], [pj_residual], y)``
    of a SparseConv with ``spec.depthwise`` (and maybe ``spec.project``; then ``<arrays>``
    end with the projection's pj_values, pj_rows, pj_colptr and Y has its channels)."""
    knobs = dict(knobs or {})
    vl = simd_lanes(target, knobs)
    dw_steps = spec.dw_epilogue
    c = spec.conv
    if (tuple(c.kernel_shape) != (1, 1) or tuple(c.strides) != (1, 1) or any(c.pads)
            or c.group != 1 or spec.has_residual):
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: a fused depthwise conv "
                           f"needs a 1x1 conv with stride 1, no padding and no residual")
    if int(in_shape[1]) != spec.in_features:
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: input has {in_shape[1]} "
                           f"channels, the weight in_features {spec.in_features}")
    g = dw_geometry(spec.depthwise, in_shape, spec.out_features, spec.entry)
    dense = "w" in arrays
    rows = arrays["w"].shape[2] if dense else 1  # channels per block (sharing X's loads)
    budget = int(knobs.get("tile_lanes", 4 * vl))
    # the expand tile's rows x lanes accumulators stay within the register file
    e_budget = budget if not dense else int(knobs.get(
        "tile_lanes", max(1, _pow2_floor(acc_vectors(vl) // rows)) * vl))
    e_budget = int(knobs.get("expand_lanes", e_budget))
    if g.s == 2:
        budget -= budget % 2
        e_budget -= e_budget % 2
    # rows of X padded to whole vectors (see ``_Fused.expand``) when the expand tiles of
    # the rows as they are would not keep their accumulators in registers
    spills = rows * _tile_registers(g.h, g.w, e_budget, vl) > acc_vectors(vl)
    pad = bool(knobs.get("pad_rows", spills)) and g.w % vl != 0
    wp = _round_up(g.w, vl) if pad else g.w
    cores = _cores(target, knobs)
    blocks = -(-g.e // rows)
    pj = spec.project
    # with a projection every task keeps partial sums of all of it: one task per core
    tasks = max(1, min(blocks, cores if pj else
                       int(knobs.get("tasks_per_core", TASKS_PER_CORE)) * cores))
    per = -(-blocks // tasks)
    tasks = -(-blocks // per)
    has_bias = spec.has_bias
    has_dw_bias = spec.has_dw_bias
    p = g.h * g.w
    px = g.oh * g.ow
    o_out = pj.out_features if pj else g.e
    y_shape = (g.n, o_out, g.oh, g.ow)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            x = T.arg("x", T.buffer((g.n, g.c, g.h, g.w), F32))
            bufs = {name: T.arg(name, T.buffer(a.shape, str(a.dtype)))
                    for name, a in arrays.items()}
            bias = T.arg("bias", T.buffer((g.e,), F32)) if has_bias else None
            bufs["dw_weight"] = T.arg("dw_weight", T.buffer((g.e, 1, g.kh, g.kw), F32))
            dbias = T.arg("dw_bias", T.buffer((g.e,), F32)) if has_dw_bias else None
            pj_bias = pj_res = None
            if pj is not None and pj.has_bias:
                pj_bias = T.arg("pj_bias", T.buffer((o_out,), F32))
            res = (T.arg("pj_residual", T.buffer(y_shape, F32))
                   if pj is not None and pj.has_residual else None)
            y = T.arg("y", T.buffer(y_shape, F32))
            if res is not None:
                pj_res = T.decl_buffer((g.n * o_out * px,), F32, data=res.data)
            xf = T.decl_buffer((g.n * g.c * p,), F32, data=x.data)
            yf = T.decl_buffer((g.n * o_out * px,), F32, data=y.data)
            part = T.decl_buffer((tasks * o_out * px,), F32) if pj else None
            xp = T.decl_buffer((g.c * g.h * wp,), F32) if pad else None
            k = _Fused(spec, g, vl, budget, e_budget, rows, bufs, xf if xp is None else xp,
                       yf, bias, dbias, dw_steps, wp)
            with T.serial(g.n) as n:
                if xp is not None:
                    _pad_rows(xf, xp, g, n, wp, vl)
                with T.parallel(tasks) as t:
                    z = T.decl_buffer((rows * g.z_size,), F32)
                    vloop(rows * g.z_size,
                          lambda l: T.buffer_store(z, tirx.const(0.0, F32), [l]), chunk=vl)
                    if pj:
                        d = T.decl_buffer((px,), F32)  # one channel of the depthwise output
                        vloop(o_out * px, lambda l: T.buffer_store(
                            part, tirx.const(0.0, F32), [t * (o_out * px) + l]), chunk=vl)
                    lo = T.Bind(t * per)
                    with span(lo, T.min(lo + per, blocks)) as blk:
                        k.expand(z, n, blk)
                        for rr in range(rows):
                            ch = T.Bind(blk * rows + rr)

                            def one(rr=rr, ch=ch):
                                if pj:
                                    k.depthwise(z, rr * g.z_size, ch, d, 0)
                                    k.project(part, t, d, ch)
                                else:
                                    k.depthwise(z, rr * g.z_size, ch, yf,
                                                T.Bind((n * g.e + ch) * px))

                            if g.e % rows:
                                with T.If(ch < g.e):
                                    with T.Then():
                                        one()
                            else:
                                one()
                if pj:
                    k.reduce(part, tasks, n, pj_bias, pj_res)
    return ib.get()


@dataclass
class _Fused:
    spec: object
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
    dw_steps: list
    wp: int  # row length of ``xf``: W, or W padded to whole vectors (``_pad_rows``)

    # ------------------------------------------------------------ expand: X -> Z interior

    def expand(self, z, n, blk) -> None:
        """E of the block's channels into their Z buffers (``z`` + channel * z_size).

        Tiles are whole rows of X when they fit the budget, else segments of a row. With
        ``wp > W`` (padded rows) every tile is whole vectors, the lanes past W computed and
        dropped. Unpadded, a row of 14 is a vector of 8, one of 4 and one of 2, and 6
        channels of those take 18 accumulators: more than AVX2's 16 registers."""
        g, wp = self.g, self.wp
        mode = _tiles(g.h, wp, self.e_budget)
        if mode[0] == "rows":
            _row_tiles(mode, lambda u0, r: self._expand_tile(z, n, blk, u0, r, 0, g.w))
        else:
            with T.serial(g.h) as u:
                for c0, width in mode[1]:
                    if c0 < g.w:  # a segment only of padding has nothing to compute
                        self._expand_tile(z, n, blk, u, 1, c0, min(width, g.w - c0), width)

    def _expand_tile(self, z, n, blk, u0, rows: int, v0: int, cols: int,
                     seg: int | None = None) -> None:
        """E[block's channels, u0:u0+rows, v0:v0+cols] (a contiguous run of ``xf``'s pixels,
        each row ``seg`` wide (default: a whole row of ``xf``, ``wp``) of which the first
        ``cols`` are stored)."""
        g, nr = self.g, self.rows
        colsp = self.wp if seg is None else seg
        width = rows * colsp
        p = g.h * self.wp
        acc = T.decl_buffer((nr * width,), F32, scope="local")
        stage = T.decl_buffer((width + 2 * self.vl,), F32, scope="local")
        vloop(nr * width, lambda l: T.buffer_store(acc, tirx.const(0.0, F32), [l]))
        # the padded copy holds one image; X itself all of them
        base = T.Bind((0 if self.wp != g.w else n * (g.c * p)) + u0 * self.wp + v0)
        xf = self.xf
        if "w" in self.bufs:  # dense [blocks, C, rows]: each X run feeds every row
            wp = self.bufs["w"]
            with T.serial(g.c) as kk:
                off = T.Bind(base + kk * p)
                for rr in range(nr):
                    wv = T.Bind(wp[blk, kk, rr])
                    a0 = rr * width
                    vloop(width, lambda l: T.buffer_store(
                        acc, acc[a0 + l] + wv * xf[off + l], [a0 + l]))
        else:
            vals, idx, ptr = self.bufs["values"], self.bufs["indices"], self.bufs["indptr"]
            with span(ptr[blk], ptr[blk + 1]) as nz:
                off = T.Bind(base + _i32(idx[nz]) * p)
                wv = T.Bind(vals[nz])
                vloop(width, lambda l: T.buffer_store(acc, acc[l] + wv * xf[off + l], [l]))
        for rr in range(nr):
            ch = T.Bind(blk * nr + rr)
            if self.bias is None:
                b = None
            else:
                b = self.bias[T.min(ch, g.e - 1) if g.e % nr else ch]  # padding rows: unused
            vloop(width, lambda l: T.buffer_store(
                stage, epi.emit(acc[rr * width + l], self.spec.epilogue, bias=b), [l]))
            for r in range(rows):
                pu = T.Bind(u0 + r + g.pt)
                row = T.Bind(rr * g.z_size + pu % g.s * (g.s * g.plane) + pu // g.s * g.wq)
                self._scatter(z, row, stage, r * colsp, v0, cols)

    def _scatter(self, z, row, stage, s0: int, v0: int, cols: int) -> None:
        """Z[plane row of ``row``] <- stage[s0 : s0 + cols], E's columns v0.. of one row."""
        g = self.g
        if g.s == 1:
            col = row + v0 + g.pl
            vloop(cols, lambda l: T.buffer_store(z, stage[s0 + l], [col + l]))
            return
        for par in (0, 1):
            pv = v0 + par + g.pl
            dst = T.Bind(row + (pv % 2) * g.plane + pv // 2)
            count = (cols - par + 1) // 2
            for t0, m in pow2_pieces(count):
                src = s0 + par + 2 * t0
                if m == 1:
                    T.buffer_store(z, stage[src], [dst + t0])
                    continue
                lo = s0 + 2 * t0  # two m-lane vectors holding lanes par, par+2, ...
                pair = [stage[T.Ramp(lo, 1, m)], stage[T.Ramp(lo + m, 1, m)]]
                T.buffer_store(z, tirx.Shuffle(pair, [par + 2 * i for i in range(m)]),
                               [T.Ramp(dst + t0, 1, m)])

    # ------------------------------------------------------------ depthwise: Z -> D

    def depthwise(self, z, z0: int, ch, out, ybase) -> None:
        """D[ch] from channel ch's Z (at ``z0``) into ``out[ybase:]`` (OH x OW)."""
        g = self.g
        mode = _tiles(g.oh, g.wq, self.budget)
        if mode[0] == "rows":
            _row_tiles(mode, lambda u0, r: self._dw_rows(z, z0, ch, out, ybase, u0, r))
        else:
            segs = [(c0, min(self.budget, g.ow - c0)) for c0 in range(0, g.ow, self.budget)]
            with T.serial(g.oh) as oh:
                for c0, width in segs:
                    acc = self._taps(z, ch, T.Bind(z0 + oh * g.wq + c0), width)
                    yoff = T.Bind(ybase + oh * g.ow + c0)
                    vloop(width, lambda l: T.buffer_store(out, self._ep(acc[l], ch),
                                                          [yoff + l]))

    def project(self, part, t, d, ch) -> None:
        """part[t, o] += W_pj[o, ch] * D[ch] for the projection's nonzeros in column ch."""
        px = self.g.oh * self.g.ow
        b = self.bufs
        o_total = self.spec.project.out_features
        with span(b["pj_colptr"][ch], b["pj_colptr"][ch + 1]) as j:
            base = T.Bind((t * o_total + _i32(b["pj_rows"][j])) * px)
            wv = T.Bind(b["pj_values"][j])
            vloop(px, lambda l: T.buffer_store(part, part[base + l] + wv * d[l], [base + l]),
                  chunk=4 * self.vl)

    def reduce(self, part, tasks: int, n, pj_bias, pj_res) -> None:
        """Y[n] = pj_epilogue(sum over tasks of part[t]), parallel over output channels."""
        px = self.g.oh * self.g.ow
        o_total = self.spec.project.out_features
        with T.parallel(o_total) as o:
            yb = T.Bind((n * o_total + o) * px)

            def put(l):
                acc = part[o * px + l]
                for t in range(1, tasks):
                    acc = acc + part[(t * o_total + o) * px + l]
                value = epi.emit(acc, self.spec.project.epilogue,
                                 bias=pj_bias[o] if pj_bias is not None else None,
                                 residual=pj_res[yb + l] if pj_res is not None else None)
                T.buffer_store(self.yf, value, [yb + l])

            vloop(px, put, chunk=4 * self.vl)

    def _taps(self, z, ch, q0, width: int):
        g, wd = self.g, self.bufs["dw_weight"]
        acc = T.decl_buffer((width,), F32, scope="local")
        vloop(width, lambda l: T.buffer_store(acc, tirx.const(0.0, F32), [l]))
        for i in range(g.kh):
            for j in range(g.kw):
                shift = ((i % g.s) * g.s + j % g.s) * g.plane + (i // g.s) * g.wq + j // g.s
                wv = T.Bind(wd[ch, 0, i, j])
                off = T.Bind(q0 + shift)
                vloop(width, lambda l: T.buffer_store(acc, acc[l] + wv * z[off + l], [l]))
        return acc

    def _ep(self, value, ch):
        b = self.dbias[ch] if self.dbias is not None else None
        return epi.emit(value, self.dw_steps, bias=b)

    def _dw_rows(self, z, z0: int, ch, out, ybase, oh0, rows: int) -> None:
        g = self.g
        width = rows * g.wq
        acc = self._taps(z, ch, T.Bind(z0 + oh0 * g.wq), width)
        stage = T.decl_buffer((width,), F32, scope="local")
        vloop(width, lambda l: T.buffer_store(stage, self._ep(acc[l], ch), [l]))
        for r in range(rows):
            yoff = T.Bind(ybase + (oh0 + r) * g.ow)
            vloop(g.ow, lambda l: T.buffer_store(out, stage[r * g.wq + l], [yoff + l]))


def _with_projection(prepare):
    """``prepare`` for the expand conv's arrays, plus the projection's (``pj_*`` keys)
    turned column-major: for each input channel c, its nonzeros' output rows and values
    (``pj_colptr`` [E + 1], ``pj_rows``, ``pj_values``), the order ``project`` walks."""

    def run(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target):
        own = {k: v for k, v in arrays.items() if not k.startswith("pj_")}
        out = prepare(spec, own, target)
        pj = spec.project
        if pj is None:
            return out
        packed = {k[3:]: v for k, v in arrays.items() if k.startswith("pj_")}
        w = unpack(Packed(pj.layout, (pj.out_features, pj.in_features), packed))
        cols, rows = np.nonzero(w.T)
        colptr = np.zeros(pj.in_features + 1, np.int32)
        np.cumsum(np.bincount(cols, minlength=pj.in_features), out=colptr[1:])
        out["pj_values"] = np.ascontiguousarray(w.T[cols, rows] if cols.size else
                                                np.zeros(1, np.float32))
        out["pj_rows"] = (rows if rows.size else np.zeros(1, np.int64)).astype(
            index_dtype(pj.out_features - 1))
        out["pj_colptr"] = colptr
        return out

    return run


KERNELS = {
    ("SparseConv", "dw:csr"): KernelDef(_with_projection(_prepare_same), build),
    ("SparseConv", "dw:chw-spmm"): KernelDef(_with_projection(_prepare_same), build),
    ("SparseConv", "dw:dense"): KernelDef(_with_projection(_prepare_dense), build),
}
