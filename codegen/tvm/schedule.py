"""The CPU Relax pipeline of sparsec: TVM's cpu_generic pipeline plus a schedule pass.

TVM's CPU pipeline legalizes every Relax op it lowers itself (softmax, layer norm, erf-gelu,
transpose, activation x activation matmul, depthwise conv, ...) into PrimFuncs that it
leaves unscheduled: serial scalar loops. ``relax_pipeline(target)`` runs the same steps and,
right after FuseTIR, applies CPU schedule rules to every PrimFunc that does not carry
``tirx.is_scheduled`` (sparsec's own kernels carry it and are left alone), then rewrites
float32 exp / erf / sigmoid / tanh in all PrimFuncs into vectorizable polynomials
(``schedule_fastmath``):

    unscheduled PrimFunc f -> first rule r in ``schedule_rules(target)`` with r(f) != None
    (a rule that raises counts as not applicable; a PrimFunc no rule takes stays as it was).

Before legalization, three Relax rewrites let copies fuse away (``relax_views``: a split's
outputs and shared slices fuse into their consumers; ``assemble``: an output stacked from
kernel results is marked), and right after ``CallTIRRewrite`` the marked outputs are
assembled in place (each kernel writes its slice of the output).

Use: ``tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target))``.
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.stmt import SBlock
from tvm.target import Target

from .assemble import assemble_in_place_pass, mark_assembled_pass
from .relax_views import duplicate_shared_views_pass, split_to_slices_pass
from .schedule_conv import SpatialReduction
from .schedule_fallback import Fallback
from .schedule_fastmath import fast_math_pass
from .schedule_injective import Injective
from .schedule_matmul import Matmul
from .schedule_reduction import Reduction

logger = logging.getLogger(__name__)


def undefined_buffers(func: tirx.PrimFunc) -> list[str]:
    """Buffers a block reads or writes that no param, alloc or match_buffer defines.

    Schedule primitives can leave such a dangling buffer (TVM 0.27's reverse_compute_inline
    through a producer with two consumers does); lowering then fails in FlattenBuffer.
    """
    blocks = []
    tvm_ffi.structural_walk(func.body, [(SBlock, blocks.append)])
    defined = list(func.params)
    for blk in blocks:
        defined.extend(blk.alloc_buffers)
        defined.extend(m.buffer for m in blk.match_buffers)
    missing = []
    for blk in blocks:
        for region in list(blk.reads) + list(blk.writes):
            buf = region.source
            if not any(buf.same_as(d) for d in defined):
                missing.append(str(buf.name))
    return missing


class Guarded(ScheduleRule):
    """``rule`` where an exception, or a result with a dangling buffer, means "not
    applicable" (logged at debug level)."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        name = type(self.rule).__name__
        try:
            result = self.rule.apply(func, target, tunable)
        except Exception as exc:  # noqa: BLE001 - a failed rule must never fail the build
            logger.debug("schedule rule %s failed: %s", name,
                         str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            return None
        for sch in [result] if isinstance(result, s_tir.Schedule) else (result or []):
            missing = undefined_buffers(sch.mod["main"])
            if missing:
                logger.debug("schedule rule %s left undefined buffers %s", name, missing)
                return None
        return result


def schedule_rules(target: Target) -> list[ScheduleRule]:
    """The CPU rules, most specific first, each guarded against exceptions.

    dlight's own CPU rules are not used: measured on this stack, ``dlight.cpu.Reduction`` is
    4-12x slower than ``Reduction`` below on softmax / layer norm (it leaves reductions
    scalar), and ``dlight.cpu.GEMV`` is 10x slower than ``Reduction`` on a [512,1024] x
    [1024,1] matmul (it vectorizes across rows, so every load is strided).
    """
    rules = [
        Matmul(),  # (batch) matmul with B read along N: register-tiled, vectorized over N
        Reduction(),  # softmax, layer norm, mean/sum/max, global pool, matrix x vector
        SpatialReduction(),  # conv (depthwise, grouped), pooling, outer reductions
        Injective(),  # elementwise, broadcast, transpose, concat, split, pad
        Fallback(),  # anything else: each block on its own
    ]
    return [Guarded(r) for r in rules]


def schedule_pass(target: Target) -> tvm.transform.Pass:
    """ApplyDefaultSchedule with ``schedule_rules(target)``; it skips scheduled PrimFuncs."""
    return dlight.ApplyDefaultSchedule(*schedule_rules(target))


def legalize_passes(target: Target) -> list[tvm.transform.Pass]:
    """Library dispatch, legalization and fusion: the PrimFuncs the schedule pass sees."""
    return [
        split_to_slices_pass,  # each output of a split fuses into its consumer
        duplicate_shared_views_pass,  # a shared slice fuses into each of its consumers
        mark_assembled_pass,  # stacked outputs: written in place (assemble.py)
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def lowering_passes(target: Target, on_planned=None) -> list[tvm.transform.Pass]:
    """Dataflow lowering and finalization, as in TVM's cpu_generic pipeline.

    ``on_planned(main)``, when given, sees the Relax ``main`` right after memory planning,
    while the tensors the planner left unplanned are still ``R.builtin.alloc_tensor``."""
    return [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        assemble_in_place_pass,  # marked outputs: each piece written in its slice
        relax.transform.StaticPlanBlockMemory(),
        *([_inspect_main(on_planned)] if on_planned else []),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


def _inspect_main(callback) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="SparsecInspectMain")
    def _inspect(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        callback(mod["main"])
        return mod

    return _inspect


def scheduled_module(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """``mod`` run through the pipeline up to and including the schedule pass (for tests)."""
    with target:
        return tvm.transform.Sequential(legalize_passes(target) + [schedule_pass(target)])(mod)


def relax_pipeline(target: Target, on_planned=None) -> tvm.transform.Pass:
    """Full replacement of TVM's CPU Relax pipeline with a schedule pass after FuseTIR
    (``on_planned``: see ``lowering_passes``)."""

    @tvm.transform.module_pass(opt_level=0, name="SparsecCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            steps = (
                legalize_passes(target)
                + [schedule_pass(target), fast_math_pass]
                + lowering_passes(target, on_planned)
            )
            return tvm.transform.Sequential(steps)(mod)

    return _pipeline
