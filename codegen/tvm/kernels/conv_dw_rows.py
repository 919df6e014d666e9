"""An image's rows in the fused block kernel (``conv_dw``): how runs of them are tiled for
a budget of lanes (``tiles``, ``row_tiles``), and when and how each image's X is copied
first, its rows padded to whole vectors or deinterleaved (``pad_rows_default``,
``DEINTERLEAVE_MIN_PIXELS``, ``copy_rows``; the shuffles are ``conv_geometry``'s
``deinterleave_into``).

Padded rows: a dense expand tile is 6 channels times a run of pixels. A 7x7 or 14x14 image
has rows of 7 or 14, runs of 14 that ``vloop`` cuts into vectors of 8, 4 and 2: 18
accumulators, which AVX2's 16 registers cannot hold. With each image's X copied into rows of
8 or 16 (``copy_rows``, once per image before the parallel loop), a tile is whole vectors,
and the padding lanes are computed and dropped. Measured on AVX2 (Zen 3), kernels A/B in one
process: 160->960 at 7x7 1.70-1.86x, 64->384 and 96->576 at 14x14 1.6-1.8x; 28x28 and
larger are not padded (0.9x when forced at 28x28). MobileNetV2-224 at 0% went from
0.76-0.90x onnxruntime to 1.04-1.07x.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvm import tirx
from tvm.tirx.script import builder as T

from sparsec.codegen.tvm.kernels.conv_geometry import (
    F32,
    _round_up,
    deinterleave_into,
    pow2_pieces,
    vloop,
)
from sparsec.codegen.tvm.kernels.conv_inner import acc_vectors

if TYPE_CHECKING:
    from sparsec.codegen.tvm.kernels.conv_dw import DwGeometry

DEINTERLEAVE_MIN_PIXELS = 40 * 40  # stride 2 over larger images: X's rows deinterleaved


def tiles(rows: int, cols: int, budget: int):
    """Row tiles of ``rows x cols`` for at most ``budget`` lanes: ("rows", R, count, tail R)
    when whole rows fit, else ("seg", [(col0, width)...]) per row."""
    if cols <= budget:
        r = max(1, min(rows, budget // cols))
        return "rows", r, rows // r, rows % r
    segs = [(c0, min(budget, cols - c0)) for c0 in range(0, cols, budget)]
    return "seg", segs


def row_tiles(mode, body) -> None:
    """``body(first row, rows)`` for each tile of a ("rows", R, count, tail) mode: a loop
    over the whole tiles, then the tail tile."""
    _, r, count, tail = mode
    if count:
        with T.serial(count) as rb:
            body(T.Bind(rb * r), r)
    if tail:
        body(count * r, tail)


def tile_registers(h: int, w: int, budget: int, vl: int) -> int:
    """Vector registers of one channel's accumulators in the widest expand tile of an h x w
    image (``tiles``), each run cut in power-of-two pieces as ``vloop`` emits it."""
    mode = tiles(h, w, budget)
    widths = [mode[1] * w] if mode[0] == "rows" else [width for _, width in mode[1]]
    return max(sum(-(-m // vl) for _, m in pow2_pieces(width)) for width in widths)


PAD_MAX_WASTE = 4 / 3  # padded rows computed per row: beyond this, ragged tiles are cheaper


def pad_rows_default(g: DwGeometry, rows: int, e_budget: int, vl: int, before: bool) -> bool:
    """Whether the expand reads X with its rows padded to whole vectors (``copy_rows``)
    unless the ``pad_rows`` knob says otherwise: when its tiles' accumulators would not fit
    in registers, or, with several channels per block (dense), when a tile of whole rows
    would be vectors of mixed widths (rows of 6 or 12 on AVX2: 8 + 4 lanes) and padding adds
    at most a third of the work. Rows longer than a tile are cut into segments, of which
    only the last is ragged (28x28, padded: 0.9x).

    Mixed widths spill even where their count fits: LLVM unrolls the channel loop and hoists
    every channel's broadcast. AVX2 (Zen 3), kernels A/B in one process, one thread, dense
    expand at 0% on MobileNetV2-96's blocks: 32->192 at 12x12 1.17x, at 12x12 stride 2
    1.29x, 64->384 at 6x6 1.32x, 96->576 at 6x6 1.40x and 1.46x (stride 2); 160->960 at
    3x3, padded to 8 columns (2.7x the work), was 0.73x."""
    if before or g.w % vl == 0:
        return False
    spills = rows * tile_registers(g.h, g.w, e_budget, vl) > acc_vectors(vl)
    ragged = rows > 1 and g.w <= e_budget and _round_up(g.w, vl) <= PAD_MAX_WASTE * g.w
    return spills or ragged


# AVX-512 only. AVX2 code (x86-64-v3) run on the Zen 4, MobileNetV2-96's blocks at 0%, half
# blocks over 24-lane tiles against whole blocks: 32->192 at 12x12 1.08x and 1.36x (stride
# 2), but 64->384 and 96->576 at 6x6 0.64-0.81x (their last tile of 2 rows is 8 + 4 lanes).
HALF_BLOCK_MIN_LANES = 16


def half_block_lanes(g: DwGeometry, rows: int, vl: int) -> int:
    """Lanes of a dense expand tile computed half a block of channels at a time, or 0 to
    keep whole blocks: on images whose rows are not whole vectors, the most whole rows
    that make whole vectors and, over ``rows // 2`` channels, fit the accumulators.

    A block of 6 channels takes at most 4 vectors of pixels, and a row of 14, 28 or 56 is
    not whole vectors of 16: 14 is padded to 16 (``copy_rows``), 28x28 and 56x56 tiles
    end in half vectors; either way 1/8 of the expand's FMAs are wasted. 3 channels take 8
    vectors: 8 rows of 14, 4 of 28 or 2 of 56 are 7 whole vectors, read from X as it is.
    Measured on AVX-512 (Zen 4), 2 threads, the fused block kernels of MobileNetV2-224 at
    0% A/B in one process on a noisy host (each block against its default): 24->144 at
    56x56 1.06-1.59x, 32->192 at 28x28 1.13-1.47x, 64->384 at 14x14 1.07-1.10x, 96->576
    1.02-1.13x, stride 2 at 28x28 and 14x14 1.11-1.7x, at 56x56 0.98x; 16->96 at
    112x112 (rows of 7 vectors already) 0.86x and 160->960 at 7x7 (no run of rows is
    whole vectors) 0.94x, which keep whole blocks, as does stride 2 on images whose rows
    are deinterleaved (``DEINTERLEAVE_MIN_PIXELS``; 24->144 at 56x56: 0.97-0.98x in the
    model)."""
    if vl < HALF_BLOCK_MIN_LANES or rows % 2 or g.w % vl == 0:
        return 0
    if g.s == 2 and g.h * g.w >= DEINTERLEAVE_MIN_PIXELS:
        return 0
    most = acc_vectors(vl) // (rows // 2) * vl
    fits = [r * g.w for r in range(1, g.h + 1) if (r * g.w) % vl == 0 and r * g.w <= most]
    return max(fits, default=0)


Z_PITCH_MAX_WASTE = 1.15  # columns computed per useful one, at most, for Z rows of whole vectors


def z_rows(g: DwGeometry, vl: int, budget: int, knobs: dict) -> tuple[int, int]:
    """The row pitch of a Z plane and the lanes of a depthwise tile (``conv_dw._Fused``):
    unless the ``z_pitch`` and ``dw_lanes`` knobs say otherwise, on AVX-512, a plane's
    ``wq`` columns rounded up to whole vectors when they are not and that adds at most 15%,
    and then, at stride 1, tiles of twice ``budget`` (rows of whole vectors already, as
    14x14's 16 columns, keep theirs: 0.99-1.01x with twice the lanes).

    With rows of whole vectors, tap (i + 1, j) of a tile's row r reads the vectors tap
    (i, j) reads for row r + 1: a tile of R rows loads 3 (R + 2) vectors per column of
    vectors, not 9 R (LLVM merges the loads; 4 rows of 2 vectors: 36 loads for 72 FMAs,
    counted in the assembly). Measured on AVX-512 (Zen 4), 2 threads, dense blocks of
    MobileNetV2-224 alone, A/B in one process: 32->192 at 28x28 1.17-1.18x (rows of 30
    columns as 32), 24->144 at 56x56 1.08-1.10x (58 as 64), stride 2 1.02-1.07x (29 as 32,
    15 as 16, 57 as 64; twice the lanes there 0.96-1.07x, kept at ``budget``); 7x7's 9
    columns as 16 were 0.94x. AVX2 keeps unpadded rows (not measured)."""
    pitched = _round_up(g.wq, vl)
    pitch = bool(knobs.get("z_pitch", vl >= HALF_BLOCK_MIN_LANES and pitched > g.wq
                           and pitched <= Z_PITCH_MAX_WASTE * g.wq))
    lanes = 2 * budget if pitch and g.s == 1 else budget
    return (pitched if pitch else g.wq), int(knobs.get("dw_lanes", lanes))


def copy_rows(xf, xp, g: DwGeometry, n, wp: int, vl: int, deinterleave: bool) -> None:
    """xp[c, u, :] = X[n, c, u, :] followed by zeros up to ``wp`` (parallel over channels);
    ``deinterleave``: the row's even columns first, then its odd ones
    (``conv_dw._Fused._scatter``)."""
    p = g.h * g.w
    with T.parallel(g.c) as c:
        with T.serial(g.h) as u:
            src = T.Bind(n * (g.c * p) + c * p + u * g.w)
            dst = T.Bind((c * g.h + u) * wp)
            if not deinterleave:
                vloop(g.w, lambda l: T.buffer_store(xp, xf[src + l], [dst + l]), chunk=vl)
            else:
                half = g.w // 2
                for par in (0, 1):
                    deinterleave_into(xp, T.Bind(dst + par * half), xf, src, par, half, vl)
            vloop(wp - g.w, lambda l: T.buffer_store(xp, tirx.const(0.0, F32),
                                                     [dst + g.w + l]))


