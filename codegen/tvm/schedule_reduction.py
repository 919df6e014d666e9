"""Schedule rule for inner reductions: softmax, layer norm, mean / sum / max over the last
axes, global average pool, with their elementwise stages.

Every block iterates ``S^n`` leading spatial axes shared by all blocks, then its own axes;
each reduction reads its reduction axis innermost (contiguous). Then:

    for s in parallel(fuse(S^n)):                 # one row (or one channel) per iteration
      for each block, in order, computed at s:
        reduction r[s] = sum_k x[s, k]  ->  part[s, 0:w] = sum_ko x[s, ko*w : ko*w+w]
                                              (vectorized over w: rfactor), r[s] = sum part
        elementwise y[s, j] = f(...)     ->  vectorized over j

``w`` is the target's SIMD width (or a smaller power of two dividing the reduction extent).
Summation order changes (w interleaved partial sums); results stay within fp32 rounding.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
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

_get_realize = get_global_func("s_tir.schedule.GetSBlockRealize")


def _leading_spatial(dom_kind: str) -> int:
    return len(dom_kind) - len(dom_kind.lstrip("S"))


def _reads_reduction_innermost(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether the widest read of a reduction block indexes a reduction var innermost."""
    stmt = sch.get(block)
    kinds = iter_var_kinds(stmt)
    reads = [r for r in stmt.reads if len(r.region) > 0]
    if not reads:
        return False
    widest = max(reads, key=lambda r: len(r.region))
    last = index_vars(widest)[-1]
    return any(kinds.get(v) == "R" for v in last)


def _vectorize_rfactor(sch, block, n_spatial: int, lanes: int):
    """Fuse the reduction loops of ``block`` and rfactor them by a vector width.

    Returns the rf block, or None when no vector width divides the reduction extent.
    """
    loops = sch.get_loops(block)
    r_loops = loops[n_spatial:]
    r_ext = loop_product(sch, r_loops)
    width = vector_factor(r_ext, lanes)
    if not r_loops or width == 0 or r_ext // width < 2:
        return None
    fused = sch.fuse(*r_loops) if len(r_loops) > 1 else r_loops[0]
    _, r_inner = sch.split(fused, factors=[None, width])
    ndim = len(sch.get(block).writes[0].region)
    return sch.rfactor(r_inner, factor_axis=ndim)


def _vectorize_rf_block(sch: s_tir.Schedule, rf: s_tir.schedule.SBlockRV) -> None:
    """Put the rf block's lane loop innermost (after its reduction loop) and vectorize it."""
    stmt = sch.get(rf)
    kinds = iter_var_kinds(stmt)
    lane_var = next(iter(index_vars(stmt.writes[0])[-1]))
    binding = dict(zip([iv.var for iv in stmt.iter_vars], _get_realize(sch, rf).iter_values))
    loop_by_var = {sch.get(lp).loop_var: lp for lp in sch.get_loops(rf)}
    lane_loop = loop_by_var[binding[lane_var]]
    r_var = next(v for v, kind in kinds.items() if kind == "R")
    r_loop = loop_by_var[binding[r_var]]
    sch.reorder(r_loop, lane_loop)
    sch.vectorize(lane_loop)
    init = sch.decompose_reduction(rf, r_loop)
    sch.vectorize(sch.get_loops(init)[-1])


class Reduction(ScheduleRule):
    """Row-parallel, vectorized schedule of reductions over the innermost axes."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or all(info.is_injective() for info in infos):
            return None
        n_lead = None
        for info in infos:
            kind = info.dom_kind()
            if "O" in kind or kind.lstrip("S").strip("R"):
                return None  # not S..S R..R
            n_lead = min(_leading_spatial(kind), n_lead if n_lead is not None else len(kind))
        if not n_lead:
            return None
        shape = [[str(d) for d in info.dom()[:n_lead]] for info in infos]
        if any(s != shape[0] for s in shape):
            return None
        for info in infos:
            if not info.is_injective() and not _reads_reduction_innermost(sch, info.block_rv):
                return None
        lanes = block_lanes(sch, infos[-1].block_rv, target)
        work = loop_product(sch, sch.get_loops(infos[-1].block_rv))

        # 1. Vectorizable partial sums, while every block still has its own loop nest.
        rf_blocks = []
        for info in infos:
            if not info.is_injective():
                rf = _vectorize_rfactor(sch, info.block_rv, _leading_spatial(info.dom_kind()),
                                        lanes)
                if rf is not None:
                    rf_blocks.append(rf)

        # 2. One parallel loop over the shared spatial axes; every block computed under it.
        blocks = sch.get_child_blocks(sch.get_sblock(func.body.block.name_hint))
        last = blocks[-1]
        spatial = parallelize(sch, sch.get_loops(last)[:n_lead], work)
        for blk in reversed(blocks[:-1]):
            sch.compute_at(blk, spatial, preserve_unit_loops=True)

        # 3. Vectorize each stage under the row loop.
        rf_names = {sch.get(rf).name_hint for rf in rf_blocks}
        for blk in blocks:
            stmt = sch.get(blk)
            kinds = iter_var_kinds(stmt).values()
            if stmt.name_hint in rf_names:
                _vectorize_rf_block(sch, blk)
            elif "R" not in kinds:
                loops = sch.get_loops(blk)
                if len(loops) > 1 and extent(sch, loops[-1]) != 1:
                    vectorize_innermost(sch, loops[-1], lanes)
        return sch
