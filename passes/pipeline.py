"""The pass pipeline: an onnx_ir model in, the rewritten model and its Plan out.

``analyze(model, options, target_spec) -> (model, plan)``: everything ``sparsec inspect``
reports (folds, stats, epilogues, shrinking, layouts); the model keeps standard ONNX ops.
``run(model, options, target_spec) -> (model, plan)``: the same, then every planned op is
lowered to an ``ai.sparsec`` node (``sparsec/ops.py``), ready for a backend.

The caller's model is never modified: the pipeline works on ``model.clone()`` (tensors are
shared, never written to; rewrites create new tensors). All passes are in place on that
clone and share one ``Plan`` (carried on the pass objects, see ``passes/base.py``).

A failure inside a pass becomes a ``CompileError`` naming the pass, the node and the weight;
``SparsecError``s (e.g. ``LayoutError`` for a forced layout that does not fit) pass through
unchanged. ``on_step(name, model, plan)``, when given, runs after every step (the tests run
``passes.invariants.verify`` there).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from sparsec.errors import CompileError, SparsecError
from sparsec.options import CompileOptions
from sparsec.plan import Plan
from sparsec.targetspec import TargetSpec

from .analyze_sparsity import AnalyzeSparsityPass
from .base import SparsecPass
from .choose_layouts import ChooseLayoutsPass
from .cleanup import CleanupPass, FinalCleanupPass, NameNodesPass, ShapesPass
from .fold_batchnorm import FoldBatchNormPass
from .fold_transpose import FoldTransposePass, TransposedMatVecPass
from .fuse_depthwise import FuseDepthwisePass
from .fuse_head import FuseHeadPass
from .lower_sparse_ops import LowerSparseOpsPass
from .mark_epilogues import MarkEpiloguesPass
from .shrink_zero_channels import ShrinkZeroChannelsPass

Step = tuple[str, SparsecPass]
OnStep = Callable[[str, ir.Model, Plan], None]


def analysis_steps(plan: Plan, options: CompileOptions, target: TargetSpec) -> list[Step]:
    fuse = options.fuse_epilogues
    return [
        # Constant nodes -> initializers; Identity and dead nodes removed; sorted.
        ("cleanup", CleanupPass()),
        # Every node gets a stable unique name: entries and errors refer to nodes by name.
        ("name_nodes", NameNodesPass()),
        # Transpose(W) -> W' for constant W (MatMul(x, Transpose(W)) gets a plain weight).
        ("fold_transpose", FoldTransposePass()),
        # BatchNormalization(Conv(x)) -> Conv'(x).
        ("fold_batchnorm", FoldBatchNormPass()),
        # Drop what the folds left unused.
        ("cleanup_after_folds", CleanupPass()),
        # Value shapes (rows a kernel sees, residual shapes).
        ("shapes", ShapesPass()),
        # One Plan entry per weight-bearing op, with its sparsity statistics.
        ("analyze_sparsity", AnalyzeSparsityPass(plan)),
        # The fusable epilogue chain of every planned op.
        ("mark_epilogues", MarkEpiloguesPass(plan, fuse)),
        # All-zero output channels folded into the next op's bias and removed.
        ("shrink_zero_channels",
         ShrinkZeroChannelsPass(plan, fuse, enabled=options.shrink_zero_channels)),
        # A layout per op: forced, or the cheapest by the cost model.
        ("choose_layouts", ChooseLayoutsPass(plan, options, target)),
    ]


def lowering_steps(plan: Plan, options: CompileOptions) -> list[Step]:
    return [
        # Every planned op + its epilogue -> one ai.sparsec SparseLinear / SparseConv node.
        ("lower_sparse_ops", LowerSparseOpsPass(plan, options.fuse_epilogues)),
        # A depthwise conv (+ activation) after a sparse 1x1 conv joins that conv's node.
        ("fuse_depthwise", FuseDepthwisePass(
            plan, enabled=options.fuse_epilogues and options.fuse_depthwise)),
        # A 1x1 conv, the mean pool after it and the linear after that -> one SparseConv.
        ("fuse_head", FuseHeadPass(plan, enabled=options.fuse_epilogues and options.fuse_head)),
        # MatMul(one row, Transpose(b)) -> b times a column: b is read in place (decode
        # attention's q . k^T).
        ("transposed_matvec", TransposedMatVecPass()),
        # Original weights and dead nodes removed; unused opsets dropped; sorted.
        ("final_cleanup", FinalCleanupPass()),
    ]


def run_steps(model: ir.Model, plan: Plan, steps: list[Step], on_step: OnStep | None = None,
              ) -> None:
    """Run ``steps`` in order on ``model`` (in place); errors name pass, node and weight."""
    for name, pass_ in steps:
        try:
            pass_(model)
        except SparsecError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised as a CompileError with context
            node, weight = pass_.where
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise CompileError(
                f"pass {name} failed on node {node or '?'} (weight {weight or '?'}): "
                f"{type(exc).__name__}: {first_line}"
            ) from exc
        if on_step is not None:
            on_step(name, model, plan)


def analyze(model: ir.Model, options: CompileOptions, target_spec: TargetSpec, *,
            on_step: OnStep | None = None) -> tuple[ir.Model, Plan]:
    """The analysed (folded, shrunk, standard-ONNX) model and its Plan."""
    model = model.clone()
    plan = Plan(target=target_spec.name)
    run_steps(model, plan, analysis_steps(plan, options, target_spec), on_step)
    return model, plan


def run(model: ir.Model, options: CompileOptions, target_spec: TargetSpec, *,
        on_step: OnStep | None = None) -> tuple[ir.Model, Plan]:
    """The lowered model (planned ops as ai.sparsec nodes) and its Plan."""
    model, plan = analyze(model, options, target_spec, on_step=on_step)
    run_steps(model, plan, lowering_steps(plan, options), on_step)
    return model, plan
