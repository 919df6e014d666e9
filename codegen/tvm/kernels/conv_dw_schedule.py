"""How the fused block kernel (``conv_dw``) splits one image's work into parallel tasks.

Channel tasks (``emit_channel_tasks``): each task takes a range of channel blocks (with a
projection, of channel groups) with their whole planes in Z; with a projection every task
keeps partial sums of all of it, added up after the parallel loop.

Row bands (``emit_bands``): where those partial sums outgrow L2, or, without a projection,
where X does (``band_rows``), tasks run over bands of output rows instead: for each band,
every channel's expand rows and halo go through a Z of the band's rows, the depthwise conv
and the projection, whose sums for the band stay in cache and are stored with their
epilogue when the band is done (without one, the depthwise conv's rows are stored as they
are); no task adds up another's.

What a block of channels computes (the expand conv into Z, the depthwise conv out of it) is
``conv_dw._Fused``; the projection's group walk and store are ``conv_dw_project``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvm import tirx
from tvm.tirx.script import builder as T

from sparsec.codegen.tvm.kernels.conv_geometry import F32, vloop
from sparsec.codegen.tvm.kernels.conv_inner import span
from sparsec.errors import CompileError

if TYPE_CHECKING:
    from sparsec.codegen.tvm.kernels.conv_dw import DwGeometry, _Fused

TASKS_PER_CORE = 4  # channel ranges per core (each task zeroes its own Z once per image)
BAND_MIN_PART_BYTES = 256 << 10  # a projection's sums beyond this: tasks over row bands
BAND_PART_BYTES = 128 << 10  # a band's projection sums (or rows of X) at most
BAND_MIN_X_BYTES = 512 << 10  # without a projection, an image's X beyond this: row bands


def band_rows(g: DwGeometry, o_out: int | None, cores: int, knobs: dict) -> int:
    """Output rows per band when tasks run over row bands (0: tasks run over channels);
    ``o_out``: the fused projection's channels, None without one.

    With a projection, channel tasks each keep partial sums of all of it, ``O x OH x OW``
    floats per task, and add them up at the end; past ``BAND_MIN_PART_BYTES`` those no
    longer stay in L2. Bands keep ``O x R x OW`` of them, all a band's channels added in
    place. Without one, every block of channels reads the image's whole X; past
    ``BAND_MIN_X_BYTES`` (half of L2) it comes from L3 for each block, while a band's
    rows of X stay in L2 for all of them: MobileNetV2-224's 16->96 at 112x112 (stride 2,
    X 0.8 MB, dense, 2 threads, A/B in one process) 1.39-1.46x in bands of 4-14 output
    rows, 1.25x in bands of 28; 24->144 at 56x56 (X 0.3 MB) 0.81-0.98x stride 1, 0.97-1.03x
    stride 2, 28x28 and 14x14 0.28-0.72x.

    Bands compute the expand conv's halo rows once per band. R divides OH (no tail band),
    is at least 2 (a stride-1 expand conv would run three times over one-row bands), keeps
    the band's sums (or rows of X) within ``BAND_PART_BYTES`` and leaves every core two
    bands: the widest such R that gives every core the same number of bands, else the
    widest."""
    if "band_rows" in knobs:
        r = int(knobs["band_rows"])
        if r and g.oh % r:
            raise CompileError(f"codegen/tvm: band_rows {r} does not divide {g.oh} rows")
        return r
    if o_out is not None:
        if o_out * g.oh * g.ow * 4 <= BAND_MIN_PART_BYTES:
            return 0
        size = lambda r: o_out * r * g.ow * 4  # noqa: E731
    else:
        if g.c * g.h * g.w * 4 <= BAND_MIN_X_BYTES:
            return 0
        size = lambda r: g.c * ((r - 1) * g.s + g.kh) * g.w * 4  # noqa: E731
    fits = [r for r in range(2, g.oh + 1) if g.oh % r == 0 and g.oh // r >= 2 * cores
            and size(r) <= BAND_PART_BYTES]
    # whole rounds of bands over the cores first, then the widest band
    return max(fits, key=lambda r: ((g.oh // r) % cores == 0, r), default=0)


def zero(buf, size: int, vl: int, start=0) -> None:
    vloop(size, lambda l: T.buffer_store(buf, tirx.const(0.0, F32), [start + l]), chunk=vl)


def channels(k: _Fused, blk, body) -> None:
    """``body(rr, ch)`` for each channel of block ``blk`` (the last block's padding rows
    skipped)."""
    for rr in range(k.rows):
        ch = T.Bind(blk * k.rows + rr)
        if k.g.e % k.rows:
            with T.If(ch < k.g.e):
                with T.Then():
                    body(rr, ch)
        else:
            body(rr, ch)


def emit_channel_tasks(k: _Fused, n, blocks: int, cores: int, knobs: dict) -> None:
    """Tasks over channel ranges, each with its channels' whole planes in Z; with a
    projection, over ranges of its channel groups: each task keeps a group's depthwise
    output (``dg``), adds the group's share of the projection into its own partial sums
    (``part``), and those are added up after the parallel loop."""
    g, pj = k.g, k.pj
    px = g.oh * g.ow
    units = pj.groups if pj else blocks
    # with a projection every task keeps partial sums of all of it: one task per core
    tasks = max(1, min(units, cores if pj else
                       int(knobs.get("tasks_per_core", TASKS_PER_CORE)) * cores))
    per = -(-units // tasks)
    tasks = -(-units // per)
    part = T.decl_buffer((tasks * pj.out * px,), F32) if pj else None
    with T.parallel(tasks) as t:
        z = T.decl_buffer((k.rows * k.z_size,), F32)
        zero(z, k.rows * k.z_size, k.vl)
        lo = T.Bind(t * per)
        if pj:
            dg = T.decl_buffer((pj.group * px,), F32)  # a group's depthwise output
            zero(part, pj.out * px, k.vl, t * (pj.out * px))
            with span(lo, T.min(lo + per, units)) as q:
                group_through(k, n, z, dg, q, px, None)
                pj.add(part, t * (pj.out * px), dg, q, px)
        else:
            with span(lo, T.min(lo + per, blocks)) as blk:
                k.expand(z, n, blk)
                channels(k, blk, lambda rr, ch: k.depthwise(
                    z, rr * k.z_size, ch, k.yf, T.Bind((n * g.e + ch) * px)))
    if pj:
        with T.parallel(pj.out) as o:
            pj.put_task_sums(part, tasks, o, n, px)


def group_through(k: _Fused, n, z, dg, q, width: int, band) -> None:
    """Group q's channels through the expand conv (``band``: its rows only) and the
    depthwise conv into ``dg`` [group, width]."""
    group = k.pj.group
    first = T.Bind(q * (group // k.rows))
    with span(first, T.min(first + group // k.rows, -(-k.g.e // k.rows))) as blk:
        k.expand(z, n, blk, band)
        channels(k, blk, lambda rr, ch: k.depthwise(z, rr * k.z_size, ch, dg,
                                                     T.Bind((ch - q * group) * width)))


def emit_bands(k: _Fused, n, blocks: int, cores: int) -> None:
    """Tasks over bands of ``k.band`` output rows: for each band every channel's expand
    rows (with the halo the depthwise taps need) go through Z, the depthwise conv and the
    projection, whose sums for the band stay in ``part`` and are stored with its epilogue
    when the band's last channel is done; without a projection, the depthwise conv's rows
    go to Y."""
    g, r = k.g, k.band
    bands = g.oh // r
    per = -(-bands // cores)
    tasks = -(-bands // per)
    bpx = r * g.ow
    pj = k.pj
    with T.parallel(tasks) as t:
        z = T.decl_buffer((k.rows * k.z_size,), F32)
        dg = T.decl_buffer((pj.group * bpx,), F32) if pj else None  # a group's dw output
        part = T.decl_buffer((pj.out * bpx,), F32) if pj else None
        lo = T.Bind(t * per)
        with span(lo, T.min(lo + per, bands)) as b:
            # rows outside the image differ from band to band: zero Z for each
            zero(z, k.rows * k.z_size, k.vl)
            oh0 = T.Bind(b * r)
            pu0 = oh0 * g.s  # the band's first padded input row
            u_lo = T.Bind(T.max(pu0 - g.pt, 0))
            u_hi = T.Bind(T.min(pu0 + (r - 1) * g.s + g.kh - g.pt, g.h))
            if pj is None:
                with T.serial(blocks) as blk:
                    k.expand(z, n, blk, (u_lo, u_hi, oh0))
                    channels(k, blk, lambda rr, ch: k.depthwise(
                        z, rr * k.z_size, ch, k.yf,
                        T.Bind((n * g.e + ch) * (g.oh * g.ow) + oh0 * g.ow)))
            else:
                zero(part, pj.out * bpx, k.vl)
                with T.serial(pj.groups) as q:
                    group_through(k, n, z, dg, q, bpx, (u_lo, u_hi, oh0))
                    pj.add(part, 0, dg, q, bpx)
                with T.serial(pj.out) as o:
                    pj.put(o, lambda l: part[o * bpx + l],
                           T.Bind((n * pj.out + o) * (g.oh * g.ow) + oh0 * g.ow), bpx)
