"""Schedule rule for injective PrimFuncs (elementwise, broadcast, transpose, reshape copies,
concat, split, pad, clip, erf-gelu, sigmoid).

``f(x) = g_n(...g_1(x))``, every block spatial ->
  inline every producer that can be inlined, then for each remaining block:
  ``for p in parallel(fuse(outermost loops)): for o in (other outer loops):
  for v in vectorized(lanes): body``, the parallel loop fusing just enough loops for
  ``PARALLEL_ITERS`` iterations (``_parallel_depth``). A block that reads its input across
  the vectorized axis (a transpose) first walks a cache line of the input inside that
  axis' vector loop (``tile_strided_read``).

The vectorized part is the innermost loop when a vector width divides it; otherwise the
shortest suffix of loops whose fused extent is a multiple of the vector width (a contiguous
run of the output). Blocks whose body needs a per-lane condition (pad, concat) are still
split this way; TVM's vectorizer then keeps that inner loop scalar, which is correct.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target

from .schedule_common import (
    block_lanes,
    extent,
    index_vars,
    loop_product,
    parallelize,
    vector_factor,
    vectorize_innermost,
)


PARALLEL_ITERS = 64  # see _parallel_depth


def _parallel_depth(sch: s_tir.Schedule, outer: list) -> int:
    """How many of the outer loops (outermost first) the parallel loop fuses: the fewest
    whose iterations reach ``PARALLEL_ITERS``; the loops inside stay serial.

    Fusing every outer loop made each parallel iteration one vector, and each paid the
    division and modulo that recover its indices from the fused one. BERT-base's head
    transposes ([128, 768] -> [12, 128, 64]) went from 52 to 24 us a call, and GPT-2's KV
    concatenations from 45 to 36 us (TVM's VM instrument hook, 12-36 calls each); 16
    iterations measured the same as 64, 256 lost most of it. Whole models, A/B in one
    process: BERT-base 0.99x, GPT-2 decode and MobileNetV2-224 1.00x, all within this
    machine's noise (rounds 0.82-1.29)."""
    total = 1
    for n, loop in enumerate(outer, start=1):
        ext = extent(sch, loop)
        if ext is None:
            return len(outer)
        total *= ext
        if total >= PARALLEL_ITERS:
            return n
    return len(outer)


def schedule_spatial_block(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int
) -> None:
    """``for p in parallel(outer): for v in vectorized(inner)`` on one spatial block's loops."""
    loops = sch.get_loops(block)
    if not loops:
        return
    work = loop_product(sch, loops)
    # Find the shortest suffix whose fused extent a vector width divides.
    start = len(loops) - 1
    if vector_factor(extent(sch, loops[-1]), lanes) == 0:
        total = 1
        for i in range(len(loops) - 1, -1, -1):
            ext = extent(sch, loops[i])
            if ext is None:
                break
            total *= ext
            if total % lanes == 0:
                start = i
                break
    suffix = loops[start:]
    inner = sch.fuse(*suffix) if len(suffix) > 1 else suffix[0]
    outer_part, _vec = vectorize_innermost(sch, inner, lanes)
    outer = list(loops[:start]) + ([outer_part] if outer_part is not None else [])
    outer = outer[:_parallel_depth(sch, outer)]
    parallelize(sch, outer, work)


def fuse_epilogue(sch: s_tir.Schedule, epilogues: list) -> list[s_tir.schedule.SBlockRV]:
    """Fold the elementwise blocks after a reduction's cache-write into its write-back.

    Intermediate epilogue blocks are inlined into their consumers first; the one block left
    is then reverse-inlined into the write-back (its producer). Only a single remaining
    block is reverse-inlined: TVM 0.27 drops a buffer when it reverse-inlines a block whose
    producer has another consumer. Returns the blocks left to schedule on their own.
    """
    remaining = try_inline(sch, list(epilogues))
    if len(remaining) == 1:
        try:
            sch.reverse_compute_inline(remaining[0].block_rv)
            return []
        except Exception:  # noqa: BLE001 - not inlinable: scheduled on its own
            pass
    return [info.block_rv for info in remaining]


LINE_BYTES = 64  # a cache line


def tile_strided_read(sch: s_tir.Schedule, info, lanes: int) -> None:
    """When the block reads its one input across the output's innermost (vectorized) axis,
    walk a cache line of the input's contiguous axis inside that axis' vector loop.

    A transpose ``y[h, d, j] = x[j, h*64 + d]`` vectorized over j loads 8 rows of x per
    vector. Walked as it lies, every load takes a line that is evicted before the next d
    comes back for it (rows 3072 bytes apart land in a few cache sets). Splitting d into
    lines (16 floats) and walking them inside j's vector loop uses each line 16 times in a
    row. BERT-base's k^T ([1, 128, 768] -> [1, 12, 64, 128]): 181 -> 72 us a call (A/B in one
    process); transposes that already read along the vector are left as they were."""
    stmt = sch.get(info.block_rv)
    iters = list(info.iters)
    if len(stmt.reads) != 1 or len(stmt.writes) != 1 or len(iters) < 2:
        return
    dims = index_vars(stmt.reads[0])
    inner = iters[-1]
    if not dims or not dims[-1] or any(v.same_as(inner.var) for v in dims[-1]):
        return
    # The input's contiguous axis: the innermost loop its last index uses (``h*64 + d``: d).
    pos = [i for i, it in enumerate(iters[:-1]) if any(it.var.same_as(v) for v in dims[-1])]
    if not pos:
        return
    c_loop = iters[pos[-1]].loop_rv
    tile = LINE_BYTES // max(1, stmt.reads[0].source.dtype.bits // 8)
    c_ext, v_ext = extent(sch, c_loop), extent(sch, inner.loop_rv)
    if c_ext is None or v_ext is None or c_ext % tile or v_ext % lanes or v_ext == lanes:
        return
    _co, ci = sch.split(c_loop, factors=[None, tile])
    vo, vi = sch.split(inner.loop_rv, factors=[None, lanes])
    sch.reorder(vo, ci, vi)


class Injective(ScheduleRule):
    """Inline, then parallel outer / vectorized inner loops on every remaining block."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        remaining = try_inline(sch, list(infos))
        for info in remaining:
            lanes = block_lanes(sch, info.block_rv, target)
            tile_strided_read(sch, info, lanes)
            schedule_spatial_block(sch, info.block_rv, lanes)
        return sch
