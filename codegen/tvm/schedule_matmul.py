"""Schedule rule for matmul / batch-matmul that TVM lowers itself (two activations, or a
constant weight left with TVM), with an optional elementwise epilogue.

``C[b.., i, j] = sum_k A[.., i, k] * B[.., k, j]`` (B's last index is j) ->

    for (b, jo) in parallel:                 # a K x nr panel of B stays in L2
      for io:                                # mr x nr register tile of C
        acc[mr, nr] = 0                      (vectorized over nr)
        for k: for ii in unroll(mr): for ji in vectorized(nr):
          acc[ii, ji] += A[i, k] * B[k, j]
        C[i, j] = epilogue(acc[ii, ji])      (vectorized over nr)

``nr`` is one or two SIMD registers of the target and ``mr`` fills about half of the
vector register file with accumulators. Loads of ``A`` broadcast; loads of ``B`` are
contiguous. Prologue producers (reshape, broadcast) are inlined first.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline_contiguous_spatial
from tvm.target import Target

from .schedule_common import (
    block_lanes,
    extent,
    index_vars,
    iter_var_kinds,
    loop_product,
    parallelize,
    vector_factor,
    vectorize_innermost,
)
from .schedule_injective import fuse_epilogue, schedule_spatial_block


def _tile_sizes(m: int | None, n: int, lanes: int) -> tuple[int, int]:
    """(mr, nr): nr a divisor of n of one or two vectors, mr a divisor of m within budget."""
    if n % (2 * lanes) == 0:
        nr = 2 * lanes
    else:
        nr = vector_factor(n, lanes) or (n if n < lanes else lanes)
    regs_per_row = max(1, -(-nr // lanes))
    # Half of the vector registers hold accumulators (16 of 32 with AVX-512, 8 of 16 else).
    budget = 16 if lanes >= 16 else 8
    mr = 1
    for cand in (8, 6, 4, 2):
        if cand * regs_per_row <= budget and m is not None and m % cand == 0:
            mr = cand
            break
    return mr, nr


def match_matmul(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV):
    """(a_region, b_region, i_var, j_var, k_var) when ``block`` is an NN (batch) matmul.

    ``i_var`` is None for a single output row (M = 1, its unit loop normalized away).
    """
    stmt = sch.get(block)
    kinds = iter_var_kinds(stmt)
    reduce_vars = [v for v, kind in kinds.items() if kind == "R"]
    if len(reduce_vars) != 1 or "O" in kinds.values() or len(stmt.writes) != 1:
        return None
    if len(stmt.reads) != 2:
        return None
    k = reduce_vars[0]
    out = index_vars(stmt.writes[0])
    if not out or len(out[-1]) != 1 or any(len(v) > 1 for v in out):
        return None
    (j,) = out[-1]
    i = next(iter(out[-2])) if len(out) >= 2 and out[-2] else None  # None: a single row
    if kinds.get(j) != "S" or (i is not None and kinds.get(i) != "S"):
        return None
    a_reg = b_reg = None
    for reg in stmt.reads:
        dims = index_vars(reg)
        used = set().union(*dims) if dims else set()
        if dims and dims[-1] == {j} and k in used and (i is None or i not in used):
            b_reg = reg
        elif dims and k in used and (i is None or i in used) and j not in used:
            a_reg = reg
    if a_reg is None or b_reg is None:
        return None
    return a_reg, b_reg, i, j, k


def _pack_panel(sch, block, b_index: int, outer, lanes: int) -> None:
    """Copy the K x nr panel of B that one ``outer`` iteration reads into a contiguous buffer.

    B's rows are N floats apart (often a power of two: every row maps to the same cache
    set), so the panel is packed once per (batch, jo) and then read with unit stride by all
    M / mr register tiles.
    """
    packed = sch.cache_read(block, b_index, "global")
    sch.compute_at(packed, outer, preserve_unit_loops=True)
    loops = sch.get_loops(packed)
    if len(loops) > 1:
        vectorize_innermost(sch, loops[-1], lanes)


class Matmul(ScheduleRule):
    """Register-tiled, vectorized, parallel NN (batch) matmul with fused epilogue."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not infos or infos[0].is_injective():
            return None
        main, epilogues = infos[0], infos[1:]
        if any(not e.is_injective() for e in epilogues):
            return None
        matched = match_matmul(sch, main.block_rv)
        if matched is None:
            return None
        _a, b_reg, i_var, j_var, k_var = matched
        b_index = [r.same_as(b_reg) for r in sch.get(main.block_rv).reads].index(True)
        block = main.block_rv
        lanes = block_lanes(sch, block, target)

        loop_of = {it.var: it.loop_rv for it in main.iters}
        batch = [it.loop_rv for it in main.iters if it.var not in (i_var, j_var, k_var)]
        i_loop = loop_of.get(i_var) if i_var is not None else None
        j_loop, k_loop = loop_of[j_var], loop_of[k_var]
        n = loop_product(sch, [j_loop])
        if n is None or (i_loop is None and n % lanes):
            # A single row with a ragged N (decode attention's q x k^T over 129 positions)
            # is left to ``Reduction``: 32 against 53 us here for 12 heads x 129 x 64.
            return None
        mr, nr = _tile_sizes(loop_product(sch, [i_loop]) if i_loop is not None else 1, n, lanes)
        work = loop_product(sch, batch + [j_loop] + ([i_loop] if i_loop is not None else []))

        # Accumulate in a local tile, write back (with the epilogue) per tile.
        writeback = sch.cache_write(block, 0, "local")
        leftover = fuse_epilogue(sch, epilogues)

        jo, ji = sch.split(j_loop, factors=[None, nr])
        if i_loop is not None:
            io, ii = sch.split(i_loop, factors=[None, mr])
            sch.reorder(*batch, jo, io, k_loop, ii, ji)
            sch.unroll(ii)
        else:
            io = jo
            sch.reorder(*batch, jo, k_loop, ji)
        outer = parallelize(sch, [*batch, jo], work)
        if i_loop is None:  # one row: jo was fused into ``outer`` (a batched matrix x vector)
            io = outer
        sch.reverse_compute_at(writeback, io, preserve_unit_loops=True)
        if i_loop is not None and outer is not None and (extent(sch, io) or 2) > 1:
            _pack_panel(sch, block, b_index, outer, lanes)  # reused by >1 row tile
        sch.vectorize(ji)
        init = sch.decompose_reduction(block, k_loop)
        for blk in (init, writeback):
            loops = sch.get_loops(blk)
            if i_loop is not None:
                sch.unroll(loops[-2])
            sch.vectorize(loops[-1])
        for blk in leftover:
            schedule_spatial_block(sch, blk, lanes)
        return sch
