"""Last schedule rule: every block on its own, for PrimFuncs no specific rule takes
(softmax over a middle axis, several outer reductions, mixed stages).

Producers that can be inlined are inlined; then each remaining block gets

    spatial block:                  parallel(outer) x vectorized(inner)   (schedule_injective)
    reduction, innermost read axis is an output axis j (outer reduction):
                                    for s in parallel(other spatial): for r..: vectorized(j)
    reduction, innermost read axis reduced (inner reduction):
                                    for s in parallel(spatial): for r..: serial

Blocks keep their own loop nests (one parallel region each); nothing is computed at
another block's loop, so the rule applies to any nest the others reject.
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
)
from .schedule_injective import schedule_spatial_block


def schedule_reduction_block(sch: s_tir.Schedule, info, lanes: int) -> None:
    """Parallel spatial loops; vectorize an output axis read innermost, if there is one."""
    block = info.block_rv
    stmt = sch.get(block)
    kinds = iter_var_kinds(stmt)
    s_iters = [it for it in info.iters if kinds.get(it.var) == "S"]
    r_loops = [it.loop_rv for it in info.iters if kinds.get(it.var) == "R"]
    if not r_loops:
        return
    reads = [r for r in stmt.reads if len(r.region) > 0]
    widest = max(reads, key=lambda r: len(r.region)) if reads else None
    last = index_vars(widest)[-1] if widest is not None else set()
    vec_iter = next((it for it in s_iters if it.var in last), None)
    work = loop_product(sch, [it.loop_rv for it in s_iters])
    if vec_iter is not None and vector_factor(extent(sch, vec_iter.loop_rv), lanes):
        others = [it.loop_rv for it in s_iters if it is not vec_iter]
        width = vector_factor(extent(sch, vec_iter.loop_rv), lanes)
        vo, vi = sch.split(vec_iter.loop_rv, factors=[None, width])
        sch.reorder(*others, vo, *r_loops, vi)
        sch.vectorize(vi)
        parallelize(sch, others + [vo], work)
        init = sch.decompose_reduction(block, r_loops[0])
        sch.vectorize(sch.get_loops(init)[-1])
        return
    spatial = [it.loop_rv for it in s_iters]
    sch.reorder(*spatial, *r_loops)
    parallelize(sch, spatial, work)


class Fallback(ScheduleRule):
    """Schedules each block of any PrimFunc independently."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not infos:
            return None
        for info in infos:
            lanes = block_lanes(sch, info.block_rv, target)
            if info.is_injective():
                schedule_spatial_block(sch, info.block_rv, lanes)
            else:
                schedule_reduction_block(sch, info, lanes)
        return sch
