"""Where a SparseConv kernel reads its columns and how it tiles the output pixels.

A conv is ``Y[o, p] = sum_k Wc[o, k] * B[k, p]`` with ``k = (c*kh + i)*kw + j`` and ``B`` the
(never materialised) im2col matrix. Every kernel reads ``B[k, p0:p0+L]`` as a contiguous run
``src[base(n) + coff(k) + q0 : ... + L]`` of one of two sources:

- direct (1x1, stride 1, no padding): ``src`` is X itself, ``coff(k) = k*H*W`` and pixels are
  flat, ``q = oh*OW + ow``.
- shifted (every other conv): ``src`` is Z, a zero-padded copy of one image of X cut into
  planes ``Z[c, plane(a, b), u, v] = X[c, u*sh + a - pt, v*sw + b - pl]`` (0 outside X) of
  ``Hq x Wq`` elements. Tap (i, j) reads plane ``(i*dh % sh, j*dw % sw)`` shifted by
  ``(di, dj) = (i*dh // sh, j*dw // sw)``, so ``coff(k) = plane*Hq*Wq + di*Wq + dj`` (a table
  ``offtab[K]``) and output pixel (oh, ow) is the "wide" index ``q = oh*Wq + ow``; columns
  ``ow >= OW`` of a wide row are computed and dropped, and Z has spare elements at the end so
  tiles may read past it. That is one copy of X per call, where an im2col makes kh*kw.
  Aligned Z (``conv_geometry(align=True)``) also gives each column shift its own plane,
  ``b = j*dw`` and ``dj = 0``, and rounds ``Wq`` up to the vector width: kw copies of X, but
  every run starts on a vector boundary.

Tiles (``tile_plan``): about ``L`` output pixels of one image, in one of three modes: ``flat``
(no junk columns: direct, or ``Wq == OW``), ``rows`` (``R`` whole wide rows, ``Wq <= L``) and
``seg`` (a segment of one wide row, ``Wq > L``). A tile belongs to a class (main or tail) with
a static compute width and static store runs, so every vector has a constant width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tvm import tirx
from tvm.tirx.script import builder as T

from sparsec.errors import CompileError
from sparsec.plan import ConvAttrs

F32 = "float32"
ALIGN_MAX_Z_BYTES = 3 << 19  # 1.5 MiB: an aligned Z beyond this falls out of L2 while filled


def pow2_pieces(width: int, start: int = 0) -> list[tuple[int, int]]:
    """``width`` lanes as runs of power-of-two widths (LLVM turns odd-width vectors into
    scalar code): 49 -> [(0, 32), (32, 16), (48, 1)]."""
    out, pos = [], start
    bit = 1 << max(width.bit_length() - 1, 0)
    while width > 0:
        while bit > width:
            bit >>= 1
        out.append((pos, bit))
        pos += bit
        width -= bit
    return out


def vloop(width: int, body: Callable[[tirx.PrimExpr], None], chunk: int | None = None) -> None:
    """Emit ``body(l)`` for ``l`` in ``[0, width)`` as power-of-two vectors; with ``chunk``,
    full ``chunk``-lane vectors go in a serial loop first (long rows)."""
    full, rest = divmod(width, chunk) if chunk else (0, width)
    if full == 1:
        with T.vectorized(chunk) as l:
            body(l)
    elif full > 1:
        with T.serial(full) as blk:
            with T.vectorized(chunk) as l:
                body(blk * chunk + l)
    for start, size in pow2_pieces(rest, full * (chunk or 0)):
        if size == 1:
            body(tirx.const(start, "int32"))
        else:
            with T.vectorized(size) as l:
                body(start + l)


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes and the column source of one conv on one input shape."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    dh: int
    dw: int
    oh: int
    ow: int
    direct: bool
    # Z planes per input channel: (a, b): Z[u, v] = X[u*sh + a - pt, v*sw + b - pl].
    planes: tuple[tuple[int, int], ...] = ()
    taps: tuple[tuple[int, int, int], ...] = ()  # per tap (i, j): (plane, di, dj)
    hq: int = 0
    wq: int = 0

    @property
    def k(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def p(self) -> int:
        return self.oh * self.ow

    @property
    def z_image(self) -> int:
        return self.c * len(self.planes) * self.hq * self.wq

    @property
    def aligned(self) -> bool:
        """Does every column run start on a vector boundary (given tiles that do)?"""
        return all(dj == 0 for _, _, dj in self.taps) and not self.direct


def conv_geometry(conv: ConvAttrs, in_shape, out_features: int, in_features: int,
                  node: str, vl: int = 1, align: bool | None = None) -> ConvGeometry:
    """Validate the conv against X's shape and the weight; CompileError names the node.

    With ``align`` (default: when it is cheap), Z rows are padded to a multiple of the vector
    width ``vl`` and each column shift dj gets its own plane (kw copies of X instead of one),
    so every column run starts on a vector boundary. Cheap means: the padding wastes at most a
    quarter of a row and the aligned Z of one image stays under ALIGN_MAX_Z_BYTES."""
    if conv is None:
        raise CompileError(f"codegen/tvm: SparseConv {node} has no conv attributes")
    if conv.group != 1:
        raise CompileError(f"codegen/tvm: SparseConv {node} has group={conv.group}; only 1")
    if len(in_shape) != 4:
        raise CompileError(f"codegen/tvm: SparseConv {node} needs a 4-D NCHW input, got "
                           f"{tuple(in_shape)}")
    n, c, h, w = (int(v) for v in in_shape)
    kh, kw = (int(v) for v in conv.kernel_shape)
    sh, sw = (int(v) for v in conv.strides)
    pt, pl, pb, pr = (int(v) for v in conv.pads)
    dh, dw = (int(v) for v in conv.dilations)
    if c * kh * kw != in_features:
        raise CompileError(f"codegen/tvm: SparseConv {node}: input channels {c} x kernel "
                           f"{kh}x{kw} != in_features {in_features}")
    if min(sh, sw, dh, dw) < 1:
        raise CompileError(f"codegen/tvm: SparseConv {node} has strides {sh}x{sw} and "
                           f"dilations {dh}x{dw}; both must be >= 1")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if min(n, oh, ow, out_features) < 1:
        raise CompileError(f"codegen/tvm: SparseConv {node} has an empty output "
                           f"(input {tuple(in_shape)}, kernel {kh}x{kw})")
    base = dict(n=n, c=c, h=h, w=w, o=out_features, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl,
                dh=dh, dw=dw, oh=oh, ow=ow)
    if kh == kw == 1 and sh == sw == 1 and not any((pt, pl, pb, pr)):
        return ConvGeometry(direct=True, **base)
    wide = _round_up(ow, vl)
    if align is None:
        copies = len({(i * dh % sh, j * dw) for i in range(kh) for j in range(kw)})
        hq_max = oh + (kh - 1) * dh // sh
        align = (vl > 1 and 4 * wide <= 5 * ow
                 and 4 * c * copies * hq_max * wide <= ALIGN_MAX_Z_BYTES)
    keys, taps = [], []
    for i in range(kh):
        for j in range(kw):
            a, di = (i * dh) % sh, (i * dh) // sh
            b, dj = (j * dw) % sw, (j * dw) // sw
            key = (a, b + dj * sw) if align else (a, b)
            if key not in keys:
                keys.append(key)
            taps.append((keys.index(key), di, 0 if align else dj))
    hq = oh + max(di for _, di, _ in taps)
    wq = wide if align else ow + max(dj for _, _, dj in taps)
    return ConvGeometry(direct=False, planes=tuple(keys), taps=tuple(taps), hq=hq, wq=wq,
                        **base)


@dataclass(frozen=True)
class TileClass:
    """Tiles that share a static shape: compute ``width`` lanes from wide index ``q0(t)`` and
    store ``runs`` of (acc offset, Y plane offset as a function of t, width)."""

    width: int
    q0: Callable[[tirx.PrimExpr], tirx.PrimExpr]
    runs: tuple[tuple[int, Callable[[tirx.PrimExpr], tirx.PrimExpr], int], ...]


@dataclass(frozen=True)
class TilePlan:
    """``count`` tiles per image; tile t is of class ``tail`` when ``is_tail(t)``."""

    count: int
    main: TileClass
    tail: TileClass | None = None
    is_tail: Callable[[tirx.PrimExpr], tirx.PrimExpr] | None = None


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def tile_plan(g: ConvGeometry, lanes: int, vl: int) -> TilePlan:
    """Tiles of about ``lanes`` pixels (a multiple of the vector width ``vl``)."""
    if g.direct or g.wq == g.ow:
        p = g.p
        full, tail = divmod(p, lanes)
        main = TileClass(lanes, lambda t: t * lanes, ((0, lambda t: t * lanes, lanes),))
        if not tail:
            return TilePlan(full, main)
        # Direct reads X, which has no slack: the tail computes exactly its own lanes.
        width = tail if g.direct else _round_up(tail, vl)
        tcls = TileClass(width, lambda t: t * lanes, ((0, lambda t: t * lanes, tail),))
        return TilePlan(full + 1, main, tcls, lambda t: t >= full)
    wq, ow = g.wq, g.ow
    if wq <= lanes:
        r = max(1, min(g.oh, lanes // wq))
        groups, rest = divmod(g.oh, r)

        def rows_class(nr: int) -> TileClass:
            runs = tuple((i * wq, (lambda t, i=i: (t * r + i) * ow), ow) for i in range(nr))
            return TileClass(_round_up(nr * wq, vl), lambda t: t * (r * wq), runs)

        if not rest:
            return TilePlan(groups, rows_class(r))
        return TilePlan(groups + 1, rows_class(r), rows_class(rest), lambda t: t >= groups)
    nseg = -(-ow // lanes)
    tw = ow - (nseg - 1) * lanes

    def seg_q0(t):
        return (t // nseg) * wq + (t % nseg) * lanes

    def seg_y(t):
        return (t // nseg) * ow + (t % nseg) * lanes

    main = TileClass(lanes, seg_q0, ((0, seg_y, lanes),))
    if tw == lanes:
        return TilePlan(g.oh * nseg, main)
    tcls = TileClass(lanes, seg_q0, ((0, seg_y, tw),))
    return TilePlan(g.oh * nseg, main, tcls, lambda t: t % nseg == nseg - 1)


def emit_pack(dst, dbase, src, sbase, coff, k: int, width: int, stride: int) -> None:
    """dst[dbase + kk*stride + l] = src[sbase + coff(kk) + l] for kk < k, l < width: one
    tile's columns as an aligned panel."""
    with T.serial(k) as kk:
        off = T.Bind(sbase + coff(kk))
        row = T.Bind(dbase + kk * stride)
        vloop(width, lambda l: T.buffer_store(dst, src[off + l], [row + l]))


def z_slack(lanes: int, vl: int) -> int:
    """Spare elements after Z so the last tile's full-width reads stay inside it."""
    return lanes + 2 * vl


def emit_offsets(g: ConvGeometry, offtab) -> None:
    """offtab[k] = coff(k): the element offset of column k's run in Z."""
    plane, nph = g.hq * g.wq, len(g.planes)
    with T.serial(g.c) as c:
        for r, (ph, di, dj) in enumerate(g.taps):
            T.buffer_store(offtab, (c * nph + ph) * plane + di * g.wq + dj,
                           [c * len(g.taps) + r])


def deinterleave_into(dst, d0, src, s0, par: int, count: int, vl: int) -> None:
    """dst[d0 + i] = src[s0 + 2 i + par] for i < count: pairs of vectors, one shuffle each
    (LLVM lowers a shuffle wider than one vector partly lane by lane on AVX2). The pair is
    read from s0 + 2 i even for the odd lanes, so nothing past the row is read."""

    def piece(i, m: int) -> None:
        if m == 1:
            T.buffer_store(dst, src[s0 + 2 * i + par], [d0 + i])
            return
        pair = [src[T.Ramp(s0 + 2 * i, 1, m)], src[T.Ramp(s0 + 2 * i + m, 1, m)]]
        T.buffer_store(dst, tirx.Shuffle(pair, [par + 2 * j for j in range(m)]),
                       [T.Ramp(d0 + i, 1, m)])

    full, rest = divmod(count, vl)
    if full:
        with T.serial(full) as b:
            piece(b * vl, vl)
    for start, m in pow2_pieces(rest, full * vl):
        piece(start, m)


def emit_z_fill(g: ConvGeometry, x, z, n, vl: int = 0) -> None:
    """Fill Z (the padded, plane-split copy of image n of X), parallel over (input channel,
    plane): a stem conv has 3 channels but 4 planes at stride 2, so 12 tasks, not 3. At
    column stride 2 with ``vl`` lanes the strided runs are read as pairs of vectors and
    deinterleaved (``deinterleave_into``); LLVM builds a strided load lane by lane.
    MobileNetV2's stem at 224 (AVX-512, Zen 4, the fill alone, 200 calls): 19.6 -> 14.9 us
    at best, 27.9 -> 18.8 us in median; the stem 147 -> 142 us."""
    nph, plane = len(g.planes), g.hq * g.wq
    with T.parallel(g.c * nph) as task:
        c = T.Bind(task // nph)
        xb = T.Bind((n * g.c + c) * g.h * g.w)
        for ph, (a, b) in enumerate(g.planes):
            zb = (c * nph + ph) * plane
            if nph == 1:
                _emit_plane(g, a, b, x, z, zb, xb, vl)
                continue
            with T.If(task % nph == ph):
                with T.Then():
                    _emit_plane(g, a, b, x, z, zb, xb, vl)


def _valid(count: int, start: int, stride: int, size: int) -> tuple[int, int]:
    """[lo, hi) of the u in [0, count) with 0 <= u*stride + start < size."""
    lo = (-start + stride - 1) // stride if start < 0 else 0
    hi = (size - 1 - start) // stride + 1 if size - 1 - start >= 0 else 0
    lo, hi = min(lo, count), min(hi, count)
    return lo, max(lo, hi)


def _emit_plane(g: ConvGeometry, a: int, b: int, x, z, zb, xb, vl: int = 0) -> None:
    """One plane: zero rows and columns outside X, copy (strided) runs of X rows inside."""
    zero = tirx.const(0.0, F32)
    ulo, uhi = _valid(g.hq, a - g.pt, g.sh, g.h)
    vlo, vhi = _valid(g.wq, b - g.pl, g.sw, g.w)
    wq = g.wq
    if ulo > 0:  # rows above X
        vloop(ulo * wq, lambda l: T.buffer_store(z, zero, [zb + l]), chunk=64)
    if uhi < g.hq:  # rows below X
        vloop((g.hq - uhi) * wq, lambda l: T.buffer_store(z, zero, [zb + uhi * wq + l]),
              chunk=64)
    if uhi <= ulo:
        return
    with T.serial(uhi - ulo) as uu:
        u = uu + ulo
        row = zb + u * wq
        xrow = xb + (u * g.sh + a - g.pt) * g.w + (b - g.pl)
        if vlo > 0:
            vloop(vlo, lambda l: T.buffer_store(z, zero, [row + l]))
        if vhi > vlo and g.sw == 2 and vl > 1:
            # pairs read one element past the last one taken: not past the end of X's row
            count = vhi - vlo - ((vhi - 1) * g.sw + b - g.pl >= g.w - 1)
            deinterleave_into(z, row + vlo, x, xrow + vlo * g.sw, 0, count, vl)
            if count < vhi - vlo:
                T.buffer_store(z, x[xrow + (vhi - 1) * g.sw], [row + vhi - 1])
        elif vhi > vlo:
            vloop(vhi - vlo, chunk=64, body=lambda l: T.buffer_store(
                z, x[xrow + (vlo + l) * g.sw], [row + vlo + l]))
        if vhi < wq:
            vloop(wq - vhi, lambda l: T.buffer_store(z, zero, [row + vhi + l]))
