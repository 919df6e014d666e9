"""SparseConv TIR kernels for the host CPU, one per layout kind (dense, csr, bsr, nm, chw-spmm).

``Y[n, o, oh, ow] = epilogue(sum_{c,i,j} X[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]
* Wc[o, (c*kh + i)*kw + j])`` with zero padding and group 1. The weight ``Wc [O, C*kh*kw]``
comes as the canonical format arrays of ``sparsec.formats``.

Every kernel is "sparse (or dense) W times dense columns, vectorized over output pixels":
``conv_geometry`` decides where the columns come from (X itself for 1x1/stride 1/no padding,
else a padded, stride-phase-split copy Z of X, built once per call) and how pixels are tiled;
``conv_inner`` holds the per-layout loops. The PrimFunc is a parallel loop over (pixel
tile, block of output channels), per image after filling Z (or over all images for direct
1x1); within a task the accumulators of a tile stay in registers while the loop walks the
channel's nonzeros, and the epilogue (``epilogue.emit``) is applied on the way out. One
exception: a dense 1x1 conv on a small image (at most 256 pixels) runs as a GEMM with the
pixels as rows, vectorized over output channels (``conv_pixel_rows``).

``chw-spmm`` is XNNPACK's NCHW sparse 1x1 conv and only takes 1x1, stride 1, no padding.
It shares csr's loop. XNNPACK's pre-scaled offsets measured no faster here (they save an ALU
op in a load-bound loop); its blocks of output channels sharing one pattern are ``bsr{r}x1``,
which pays only when the pattern really is shared (a union of random rows costs more FMAs
than the shared loads save).

Knobs (all optional, for tuning and tests): ``tile_lanes`` (pixels per tile),
``vector_lanes`` (override the target's SIMD width), ``threads`` (cores to split work for),
``pack`` / ``align`` (force the column panel / aligned-Z decisions, see ``_pack`` and
``conv_geometry``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from sparsec.codegen.tvm.kernels import KernelDef, conv_pixel_rows
from sparsec.codegen.tvm.kernels import epilogue as epi
from sparsec.codegen.tvm.kernels.conv_geometry import (
    F32,
    ConvGeometry,
    TileClass,
    TilePlan,
    conv_geometry,
    emit_offsets,
    emit_pack,
    emit_z_fill,
    tile_plan,
    vloop,
    z_slack,
)
from sparsec.codegen.tvm.kernels.conv_inner import (
    Inner,
    TileCtx,
    bsr_inner,
    csr_inner,
    dense_inner,
    dense_rows,
    ell_inner,
)
from sparsec.errors import CompileError
from sparsec.formats import Packed, index_dtype, unpack
from sparsec.layouts import parse_layout
from sparsec.ops import SparseOpSpec

TASKS_PER_CORE = 8  # split output channels until there are this many tasks per core
NM_DENSE_RATIO = 0.3  # n:m denser than this runs as the dense GEMM
PACK_MIN_REUSE = 4  # pack a tile's columns when each packed value is loaded this often


def simd_lanes(target, knobs: dict | None = None) -> int:
    """fp32 lanes of the target's widest vector (16 AVX-512, 8 AVX/AVX2, else 4)."""
    if knobs and knobs.get("vector_lanes"):
        return int(knobs["vector_lanes"])
    from tvm.target import Target, codegen

    tgt = target if isinstance(target, Target) else Target(target)
    if tgt.kind.name != "llvm":
        return 4
    if codegen.target_has_features("avx512f", tgt):
        return 16
    if codegen.target_has_features("avx", tgt):
        return 8
    return 4


def _cores(target, knobs: dict) -> int:
    if knobs.get("threads"):
        return int(knobs["threads"])
    attrs = getattr(target, "attrs", {}) or {}
    return int(attrs.get("num-cores", 0) or os.cpu_count() or 1)


# ---------------------------------------------------------------- prepare (pure numpy)


def _prepare_same(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target):
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


EIGHT_ROWS_MAX_OUT = 32  # see ``block_rows``


def block_rows(spec: SparseOpSpec, out: int, target) -> int:
    """Output channels per block of a dense conv: ``dense_rows`` (6), or 8 for a plain 1x1
    conv with at most ``EIGHT_ROWS_MAX_OUT`` outputs that 8 divides and 6 does not, on
    AVX-512: 6-row blocks pad 32 channels to 36 (1/9 of the FMAs wasted). Measured on Zen 4,
    kernels in MobileNetV2-224 at 0%, A/B in one process: its three 1x1 convs to 32
    channels at 28x28 1.09-1.10x (39 -> 36, 54 -> 49, 52 -> 48 us), the 16-channel one at
    112x112 1.015x; the 3x3 stride-2 stem to 32 channels 0.91x, so not for other kernels."""
    plain = spec.depthwise is None and spec.conv is not None and spec.conv.pointwise
    if (plain and out <= EIGHT_ROWS_MAX_OUT and out % 8 == 0 and out % 6
            and simd_lanes(target, {}) >= 16):
        return 8
    return dense_rows(out)


def dense_blocks(w: np.ndarray, rows: int) -> np.ndarray:
    """w [O, K] -> [ceil(O/rows), K, rows] (zero rows pad the last block)."""
    w = np.asarray(w, np.float32)
    o, k = w.shape
    blocks = -(-o // rows)
    padded = np.zeros((blocks * rows, k), np.float32)
    padded[:o] = w
    return np.ascontiguousarray(padded.reshape(blocks, rows, k).transpose(0, 2, 1))


def _prepare_dense(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target):
    """w [O, K] -> ``dense_blocks`` of ``block_rows`` channels."""
    w = arrays["w"]
    return {"w": dense_blocks(w, block_rows(spec, w.shape[0], target))}


def _prepare_dense_conv(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target):
    """A dense conv's weight: ``linear_dense`` panels where it runs as the pixel-rows GEMM
    (``conv_pixel_rows.pixel_rows``: a 1x1 conv on a small image), else ``_prepare_dense``."""
    if conv_pixel_rows.pixel_rows(spec):
        return conv_pixel_rows.prepare(spec, np.asarray(arrays["w"], np.float32), target)
    return _prepare_dense(spec, arrays, target)


def _prepare_nm(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target):
    """n:m with n/m > NM_DENSE_RATIO -> the dense panel (a CPU multiplies a 2:4 weight faster
    as a register-blocked GEMM than as n of every m gathered columns); sparser patterns ->
    values/indices [O, K/m*n] with absolute columns instead of in-group positions (ELL)."""
    n, m = parse_layout(spec.layout).params
    if n / m > NM_DENSE_RATIO:
        shape = (spec.out_features, spec.in_features)
        w = unpack(Packed(spec.layout, shape, dict(arrays)))
        return _prepare_dense(spec, {"w": w}, target)
    vals = np.asarray(arrays["values"], np.float32)
    pos = np.asarray(arrays["indices"]).astype(np.int64)
    group = np.arange(vals.shape[1]) // n
    cols = group[None, :] * m + pos
    return {"values": np.ascontiguousarray(vals),
            "indices": np.ascontiguousarray(cols.astype(index_dtype(spec.in_features - 1)))}


# ---------------------------------------------------------------- build

_INNERS = {"csr": csr_inner, "chw-spmm": csr_inner, "nm": ell_inner, "bsr": bsr_inner,
           "dense": dense_inner}


def build(spec: SparseOpSpec, in_shape, arrays: dict[str, np.ndarray], target, knobs=None):
    """The scheduled PrimFunc ``(x, *arrays, [bias], [residual], y)`` of one SparseConv."""
    knobs = dict(knobs or {})
    if "w_panels" in arrays:  # prepared for the pixel-rows GEMM (small images)
        return conv_pixel_rows.build(spec, in_shape, arrays, target, knobs)
    kind = parse_layout(spec.layout).kind
    vl = simd_lanes(target, knobs)
    make_inner = dense_inner if "w" in arrays else _INNERS[kind]  # nm may run dense
    inner = make_inner(arrays, spec.out_features, vl, knobs)
    g = _geometry(spec, in_shape, inner, vl, knobs.get("align"))
    if kind == "chw-spmm" and not g.direct:
        c = spec.conv
        raise CompileError(
            f"codegen/tvm: SparseConv {spec.entry}: chw-spmm needs a 1x1 conv with stride 1 and "
            f"no padding, got kernel {tuple(c.kernel_shape)}, strides {tuple(c.strides)}, "
            f"pads {tuple(c.pads)}")
    plan = tile_plan(g, inner.lanes, vl)
    pack = _pack(g, inner, vl, knobs)
    return _prim_func(spec, g, plan, inner, arrays, vl, _cores(target, knobs), pack)


def _geometry(spec: SparseOpSpec, in_shape, inner: Inner, vl: int, align) -> ConvGeometry:
    """The conv's geometry, its Z aligned (``align``) or not. By default, aligned column runs
    pay where every FMA needs its own load (csr, ELL: when cheap, ``conv_geometry``); where
    rows share each load (dense, bsr) only when the aligned Z rows are no wider than the
    plain ones: a 3x3 stride-2 conv's plain rows carry a junk column (113 for 112 outputs)
    that cuts every row into segment tiles, its aligned rows are 112 wide. AVX-512 (Zen 4),
    kernels A/B in one process, compiled as the model's are (``tir_pipeline="sparsec"``):
    MobileNetV2's stem at 224 1.01-1.12x faster in three runs (164 -> 163, 213 -> 191, 165
    -> 157 us), at 96 1.09x; in the whole model at 224, 1.01x. 3x3 stride-1 convs, whose
    aligned rows are wider (64 for 56), measured 0.89-0.93x aligned, so not there."""
    def geometry(a):
        return conv_geometry(spec.conv, in_shape, spec.out_features, spec.in_features,
                             spec.entry, vl, a)

    if align is not None or inner.share == 1:
        return geometry(align)
    plain, cheap = geometry(False), geometry(None)
    return cheap if cheap.aligned and cheap.wq <= plain.wq else plain


def _pack(g: ConvGeometry, inner: Inner, vl: int, knobs: dict) -> bool:
    """Copy each tile's columns into an aligned [K, lanes] panel first? A misaligned run loads
    two cache lines per vector (half speed), so pack when the runs are misaligned (1x1 planes
    with H*W % lanes != 0, or a Z too narrow to align) and every copied value feeds a few
    FMAs. Not for kh*kw > 1: the taps of Z overlap, Z stays in L1, and a panel would not."""
    if knobs.get("pack") is not None:
        return bool(knobs["pack"])
    if g.kh * g.kw > 1 or g.aligned or (g.direct and g.p % vl == 0):
        return False
    return inner.stored >= PACK_MIN_REUSE * inner.share * g.k  # column loads per packed value


def _prim_func(spec, g: ConvGeometry, plan: TilePlan, inner: Inner, arrays, vl: int,
               cores: int, pack: bool) -> tirx.PrimFunc:
    """Direct 1x1 without packing: one parallel loop over (image, tile, channel block).
    Otherwise a serial loop over images, each filling Z (and the shared panels) and then
    running the parallel loop over (tile, channel block), so one image's Z stays in cache."""
    n_img, o, p = g.n, g.o, g.p
    per_image = not g.direct or pack
    tiles = (1 if per_image else n_img) * plan.count
    chunks = 1
    if tiles < TASKS_PER_CORE * cores:
        chunks = max(1, min(inner.blocks, -(-TASKS_PER_CORE * cores // tiles)))
    per = -(-inner.blocks // chunks)
    chunks = -(-inner.blocks // per)
    panel = max(cls.width for cls in (plan.main, plan.tail) if cls)  # packed panel row stride
    y_shape = (n_img, o, g.oh, g.ow)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            x = T.arg("x", T.buffer((n_img, g.c, g.h, g.w), F32))
            bufs = {name: T.arg(name, T.buffer(a.shape, str(a.dtype)))
                    for name, a in arrays.items()}
            bias = T.arg("bias", T.buffer((o,), F32)) if spec.has_bias else None
            res = T.arg("residual", T.buffer(y_shape, F32)) if spec.has_residual else None
            y = T.arg("y", T.buffer(y_shape, F32))
            xf = T.decl_buffer((n_img * g.c * g.h * g.w,), F32, data=x.data)
            k = _Loops(spec, g, plan, inner, bufs, pack, panel, chunks, per,
                       yf=T.decl_buffer((n_img * o * p,), F32, data=y.data), bias=bias,
                       rf=None if res is None else T.decl_buffer((n_img * o * p,), F32,
                                                                 data=res.data))
            if g.direct:
                k.src, k.image, k.coff = xf, g.c * p, (lambda kk: kk * p)
            else:
                k.src = T.decl_buffer((g.z_image + z_slack(inner.lanes, vl),), F32)
                offtab = T.decl_buffer((g.k,), "int32")
                emit_offsets(g, offtab)
                k.coff = lambda kk: offtab[kk]
            if pack and chunks > 1:
                k.shared = T.decl_buffer((tiles * g.k * panel,), F32)
            if per_image:
                with T.serial(n_img) as n:
                    if not g.direct:
                        emit_z_fill(g, xf, k.src, n, vl)
                    k.emit(tiles, n)
            else:
                k.emit(tiles, None)
    return ib.get()


@dataclass
class _Loops:
    """The parallel loops of one image (or of all images when ``n`` is None): optionally
    pack every tile into ``shared`` panels, then for each (tile, block of output channels)
    run the layout's inner loop and store through the epilogue."""

    spec: SparseOpSpec
    g: ConvGeometry
    plan: TilePlan
    inner: Inner
    bufs: dict
    pack: bool
    panel: int
    chunks: int
    per: int
    yf: object = None
    bias: object = None
    rf: object = None
    src: object = None  # X or Z, flat
    image: int = 0  # elements per image in src
    coff: Callable = None
    shared: object = None

    def _base(self, cls: TileClass, n, t):
        return n * self.image + cls.q0(t)

    def emit(self, tiles: int, n_fixed) -> None:
        plan, k, panel = self.plan, self.g.k, self.panel
        if self.shared is not None:  # several tasks share a tile: pack every tile once
            with T.parallel(tiles) as u:
                n = n_fixed if n_fixed is not None else T.Bind(u // plan.count)
                t = T.Bind(u % plan.count)
                _by_class(plan, t, lambda cls: emit_pack(
                    self.shared, u * (k * panel), self.src, self._base(cls, n, t), self.coff,
                    k, cls.width, panel))
        with T.parallel(tiles * self.chunks) as u:
            n = n_fixed if n_fixed is not None else T.Bind(u // (plan.count * self.chunks))
            t = T.Bind(u // self.chunks % plan.count)
            lo = T.Bind(u % self.chunks * self.per)
            hi = T.Bind(tirx.min(lo + self.per, self.inner.blocks))

            def tile(cls: TileClass) -> None:
                store = self._store_fn(cls, n, t)
                if self.shared is not None:
                    ctx = TileCtx(self.shared, (u // self.chunks) * (k * panel),
                                  lambda kk: kk * panel, cls.width, store)
                elif self.pack:
                    own = T.decl_buffer((k * panel,), F32)
                    emit_pack(own, 0, self.src, self._base(cls, n, t), self.coff, k,
                              cls.width, panel)
                    ctx = TileCtx(own, 0, lambda kk: kk * panel, cls.width, store)
                else:
                    ctx = TileCtx(self.src, self._base(cls, n, t), self.coff, cls.width, store)
                self.inner.emit(ctx, self.bufs, lo, hi)

            _by_class(plan, t, tile)

    def _store_fn(self, cls: TileClass, n, t):
        """``store(o, acc, a0)``: Y[n, o, run] = epilogue(acc[a0 + run]) for the tile's runs.

        Runs that are not the whole computed width go through a staging buffer, so the
        accumulators are only ever accessed as whole vectors (and stay in registers)."""
        yf, bias, rf, steps = self.yf, self.bias, self.rf, self.spec.epilogue
        o_total, p = self.g.o, self.g.p
        whole = len(cls.runs) == 1 and cls.runs[0][0] == 0 and cls.runs[0][2] == cls.width
        stage = None if whole else T.decl_buffer((cls.width,), F32, scope="local")

        def store(o, acc, a0: int) -> None:
            src, base = acc, a0
            if stage is not None:
                vloop(cls.width, lambda l: T.buffer_store(stage, acc[a0 + l], [l]))
                src, base = stage, 0
            for aoff, yoff, width in cls.runs:
                yb = T.Bind((n * o_total + o) * p + yoff(t))

                def put(l, yb=yb, aoff=aoff):
                    value = epi.emit(src[base + aoff + l], steps,
                                     bias=bias[o] if bias is not None else None,
                                     residual=rf[yb + l] if rf is not None else None)
                    T.buffer_store(yf, value, [yb + l])

                vloop(width, put)

        return store


def _by_class(plan: TilePlan, t, body) -> None:
    """``body(tile class of t)``, branching on main / tail."""
    if plan.tail is None:
        body(plan.main)
        return
    with T.If(plan.is_tail(t)):
        with T.Then():
            body(plan.tail)
        with T.Else():
            body(plan.main)


KERNELS = {
    ("SparseConv", "dense"): KernelDef(_prepare_dense_conv, build),
    ("SparseConv", "csr"): KernelDef(_prepare_same, build),
    ("SparseConv", "chw-spmm"): KernelDef(_prepare_same, build),
    ("SparseConv", "bsr"): KernelDef(_prepare_same, build),
    ("SparseConv", "nm"): KernelDef(_prepare_nm, build),
}
