"""Schedule rule for reductions vectorized over an output axis: conv2d (depthwise, grouped,
dense) that stays with TVM, pooling, and reductions over a non-innermost axis.

``Y[b.., i, j] = sum_r f(X[.., g(i, r), h(j, r)], W[.., r])`` where some read indexes j in
its last dimension ->

    for b in parallel(fuse(outer spatial axes)):        # e.g. (n, c) of a conv
      pad[b] = X[b] zero-padded                          (depthwise: per b, vectorized)
      for io, jo:
        acc[mr, w] = 0
        for r..: for ii in unroll(mr): for ji in vectorized(w):
          acc[ii, ji] += f(X[.., g(i, r), h(j, r)], W[.., r])
        Y[i, j] = epilogue(acc)

A zero-padding producer (a block with a bounds condition) is split into a zero fill and a
plain copy (``decompose_padding``) so both vectorize. It is computed per outer iteration
when that iteration reads only its own padded slice (depthwise), else once up front
(grouped / dense conv would recompute it per output channel). Other producers are inlined.
``w`` divides the output width (56 -> 8 with 16 lanes; 7 -> one 7-lane vector) and ``mr``
output rows are accumulated together, giving ``mr`` independent FMA chains.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target
from tvm_ffi import get_global_func

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

_has_if_then_else = get_global_func("s_tir.schedule.HasIfThenElse")

MAX_UNROLL_REDUCTION = 9  # reduction loops up to this extent are unrolled (3x3 kernels)


def _row_tile(rows: int | None) -> int:
    for cand in (4, 2):
        if rows is not None and rows % cand == 0:
            return cand
    return 1


def _vector_read_var(stmt) -> tirx.Var | None:
    """The output's innermost var, when some read also indexes it innermost."""
    out = index_vars(stmt.writes[0])
    if not out or len(out[-1]) != 1:
        return None
    (j,) = out[-1]
    for reg in stmt.reads:
        dims = index_vars(reg)
        if dims and j in dims[-1]:
            return j
    return None


def _pad_is_per_channel(sch, pad, block, i_var, j_var) -> bool:
    """Whether ``block`` reads the pad buffer with no reduction var outside the window dims.

    True for depthwise conv (output channel c reads padded channel c only); false for
    grouped / dense conv, where one output channel reads many padded channels.
    """
    stmt = sch.get(block)
    kinds = iter_var_kinds(stmt)
    pad_buf = sch.get(pad).writes[0].source
    for reg in stmt.reads:
        if not reg.source.same_as(pad_buf):
            continue
        for dim in index_vars(reg):
            if i_var in dim or j_var in dim:
                continue
            if any(kinds.get(v) == "R" for v in dim):
                return False
        return True
    return False


def _vectorize_pad(sch, pad, lanes: int, skip: int) -> None:
    """Split a padding block into a zero fill and a copy; vectorize both inner loops."""
    loops = sch.get_loops(pad)[skip:]
    if not loops:
        return
    stages = [pad]
    try:
        stages.append(sch.decompose_padding(pad, loops[0]))
    except Exception:  # noqa: BLE001 - keep the single conditional copy
        pass
    for stage in stages:
        inner = sch.get_loops(stage)
        if len(inner) > 1 and (extent(sch, inner[-1]) or 0) > 1:
            vectorize_innermost(sch, inner[-1], lanes)
    if skip == 0:
        for stage in stages:
            inner = sch.get_loops(stage)
            if len(inner) > 2:
                parallelize(sch, inner[:2], loop_product(sch, inner))


class SpatialReduction(ScheduleRule):
    """Parallel over outer axes, reductions outside a vectorized output axis."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        reductions = [i for i, info in enumerate(infos) if not info.is_injective()]
        if len(reductions) != 1:
            return None
        pos = reductions[0]
        main = infos[pos]
        # Producers: keep padding stages (computed per tile below), inline the rest.
        pads, others = [], []
        for info in infos[:pos]:
            if _has_if_then_else(sch.get(info.block_rv)):
                pads.append(info.block_rv)
            else:
                others.append(info)
        if try_inline(sch, others):
            return None
        stmt = sch.get(main.block_rv)
        if len(stmt.writes) != 1 or "O" in main.dom_kind():
            return None
        j_var = _vector_read_var(stmt)
        if j_var is None:
            return None
        out = index_vars(stmt.writes[0])
        i_var = next(iter(out[-2])) if len(out) >= 2 and len(out[-2]) == 1 else None
        kinds = iter_var_kinds(stmt)
        block = main.block_rv
        lanes = block_lanes(sch, block, target)

        loop_of = {it.var: it.loop_rv for it in main.iters}
        s_loops = [it.loop_rv for it in main.iters if kinds[it.var] == "S"
                   and it.var not in (i_var, j_var)]
        r_loops = [it.loop_rv for it in main.iters if kinds[it.var] == "R"]
        j_loop = loop_of[j_var]
        i_loop = loop_of.get(i_var) if i_var is not None else None
        work = loop_product(sch, sch.get_loops(block)[: len(main.iters) - len(r_loops)])

        writeback = sch.cache_write(block, 0, "local")
        leftover = fuse_epilogue(sch, list(infos[pos + 1:]))

        width = vector_factor(extent(sch, j_loop), lanes)
        jo, ji = sch.split(j_loop, factors=[None, width]) if width else (j_loop, None)
        mr = _row_tile(extent(sch, i_loop)) if i_loop is not None else 1
        if i_loop is not None:
            io, ii = sch.split(i_loop, factors=[None, mr])
            sch.reorder(*s_loops, io, jo, *r_loops, ii, *([ji] if ji is not None else []))
        else:
            io, ii = None, None
            sch.reorder(*s_loops, jo, *r_loops, *([ji] if ji is not None else []))
        outer = parallelize(sch, s_loops, work) if s_loops else None
        if outer is None and io is not None:
            outer = parallelize(sch, [io], work)
        sch.reverse_compute_at(writeback, jo, preserve_unit_loops=True)
        for r in r_loops:
            if (extent(sch, r) or 0) <= MAX_UNROLL_REDUCTION:
                sch.unroll(r)
        if ii is not None:
            sch.unroll(ii)
        if ji is not None:
            sch.vectorize(ji)
        init = sch.decompose_reduction(block, r_loops[0])
        if ji is not None:
            for blk in (init, writeback):
                sch.vectorize(sch.get_loops(blk)[-1])
        for blk in leftover:
            schedule_spatial_block(sch, blk, lanes)

        # Padding: per outer iteration when that needs only its own slice (depthwise), else
        # once up front; either way split into a zero fill and a vectorized copy.
        for pad in reversed(pads):
            local = outer is not None and _pad_is_per_channel(sch, pad, block, i_var, j_var)
            if local:
                sch.compute_at(pad, outer, preserve_unit_loops=True)
            _vectorize_pad(sch, pad, lanes, skip=1 if local else 0)
        return sch
