"""Choose a layout for every planned op: a forced one, else the cheapest by a cost model.

Cost model (times in seconds; rates from ``TargetSpec.cost``, in GFLOP/s, count the FLOPs a
kernel executes on what it stores, padding included)::

    rows        = the rows the kernel sees: prod(X.shape[:-1]) for MatMul/Gemm (batch*seq),
                  N*OH*OW for Conv (from the value shapes; 1 if unknown)
    t(layout)   = max(flops / rate, stored_bytes / bandwidth) + overhead_s

    layout      flops                  rate (rows < lanes | rows >= lanes)    stored_bytes
    dense       2*O*K*rows             dense_gflops                           4*O*K
    csr         2*nnz*rows             csr_gflops | csr_batch_gflops          nnz*(4+idx) + 4*(O+1)
    chw-spmm    2*nnz*rows             chw_spmm_gflops                        as csr
    bsrRxC      2*nblocks*R*C*rows     bsr_gflops | bsr_batch_gflops          nblocks*(4*R*C+idx)
    nmN:M       2*O*K*(N/M)*rows       nm_gflops | nm_batch_gflops            O*K*(N/M)*5

``idx`` is 2 bytes (int16 indices) when the column count fits, else 4. At batch 1 most
layers are bound by streaming the weight, which is where sparsity pays most.

with ``[O, K]`` the weight as ``[out, in]`` (Conv: ``K = C*kh*kw``). Candidates are dense,
csr, bsr at the analysed block (``stats.block``, which divides the shape by construction),
nm at the analysed N:M (``stats.nm``), and chw-spmm for 1x1 / stride-1 / unpadded convs;
only layout kinds the target supports. Ties go to the more specialised kernel, in the
order chw-spmm, bsr, nm, csr. The fastest sparse candidate is chosen when
``t(dense) / t(sparse) >= min_speedup``; otherwise the op stays dense. Weights with fewer
than ``min_weight_elems`` elements stay dense, and a weight holding NaN/Inf stays dense with
a ``SparsecWarning``.

A forced layout (``CompileOptions.forced_layout(node, weight)``) always wins, but one that
does not fit raises ``LayoutError`` naming the node, the weight and why: the target does
not run that kind, chw-spmm on something other than a 1x1/stride-1/unpadded conv, or
``sparsec.formats.check_fits`` refuses it. It is never silently densified.

Fills ``entry.layout``, ``entry.reason`` (a short phrase), ``entry.forced`` and
``entry.estimated_speedup`` (``t(dense) / t(chosen)``). Counts chosen layout kinds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx_ir as ir

from sparsec.errors import LayoutError, SparsecWarning
from sparsec.formats import check_fits
from sparsec.layouts import Layout, parse_layout
from sparsec.options import CompileOptions
from sparsec.plan import Plan, PlanEntry
from sparsec.targetspec import TargetSpec

from .base import SparsecPass
from .weights import WeightOp, is_pointwise, nodes_by_name, weight_op_for


def kernel_rows(wop: WeightOp) -> int:
    """Rows of the GEMM the kernel runs: batch*seq (Linear) or N*OH*OW (Conv); 1 if unknown."""
    if not wop.is_conv:
        x = wop.x.shape
        if x is None or not x.is_static():
            return 1
        return int(math.prod(int(d) for d in x.dims[:-1]))
    y = wop.y.shape
    if y is not None and y.is_static() and len(y) == 4:
        return int(y[0]) * int(y[2]) * int(y[3])
    x = wop.x.shape
    if x is None or not x.is_static() or len(x) != 4:
        return 1
    a = wop.conv_attrs()
    out = 1
    for i in range(2):
        span = a.dilations[i] * (a.kernel_shape[i] - 1) + 1
        out *= (int(x[2 + i]) + a.pads[i] + a.pads[i + 2] - span) // a.strides[i] + 1
    return int(x[0]) * out


def layout_time(layout: Layout, entry: PlanEntry, rows: int, target: TargetSpec,
                nblocks: int | None = None) -> float:
    """Estimated seconds per call of one layout (the formulas of the module docstring).
    ``nblocks`` (bsr) defaults to what ``stats.block_density`` implies for that block."""
    c, s = target.cost, entry.stats
    o, k = s.rows, s.cols
    batch = rows >= target.vector_lanes
    idx = 2 if k <= 32767 else 4
    if layout.kind == "dense":
        flops, rate, stored = 2.0 * o * k * rows, c.dense_gflops, 4.0 * o * k
    elif layout.kind == "csr":
        rate = c.csr_batch_gflops if batch else c.csr_gflops
        flops, stored = 2.0 * s.nnz * rows, s.nnz * (4.0 + idx) + 4.0 * (o + 1)
    elif layout.kind == "chw-spmm":
        flops, rate = 2.0 * s.nnz * rows, c.chw_spmm_gflops
        stored = s.nnz * (4.0 + idx) + 4.0 * (o + 1)
    elif layout.kind == "bsr":
        r, cc = layout.params
        if nblocks is None:
            nblocks = round((s.block_density or 0.0) * (o // r) * (k // cc))
        flops = 2.0 * nblocks * r * cc * rows
        rate = c.bsr_batch_gflops if batch else c.bsr_gflops
        stored = nblocks * (4.0 * r * cc + idx) + 4.0 * (o // r + 1)
    else:  # nm
        n, m = layout.params
        flops = 2.0 * o * k * (n / m) * rows
        rate = c.nm_batch_gflops if batch else c.nm_gflops
        stored = o * k * (n / m) * 5.0
    compute = flops / (rate * 1e9)
    memory = stored / (c.bandwidth_gbs * 1e9)
    return max(compute, memory) + c.overhead_s


def candidates(entry: PlanEntry, target: TargetSpec) -> list[Layout]:
    """Layouts worth estimating, dense first. Ties go to the earlier one: the more
    specialised kernel first (chw-spmm, bsr, nm), csr last."""
    s = entry.stats
    found = [Layout("dense")]
    if target.supports("chw-spmm") and entry.op == "Conv" and is_pointwise(entry.conv):
        found.append(Layout("chw-spmm"))
    if target.supports("bsr") and s.block is not None and s.block_density is not None:
        found.append(Layout("bsr", s.block))
    if target.supports("nm") and s.nm is not None:
        found.append(Layout("nm", s.nm))
    if target.supports("csr"):
        found.append(Layout("csr"))
    return found


def estimate_times(entry: PlanEntry, rows: int, target: TargetSpec) -> dict[str, float]:
    """Estimated seconds per call of every candidate layout, by name (dense first)."""
    return {lay.name: layout_time(lay, entry, rows, target) for lay in candidates(entry, target)}


def _occupied_blocks(w2d: np.ndarray, r: int, c: int) -> int:
    o, k = w2d.shape
    return int(np.count_nonzero((w2d != 0).reshape(o // r, r, k // c, c).any(axis=(1, 3))))


def check_forced(entry: PlanEntry, wop: WeightOp, layout: Layout, target: TargetSpec) -> None:
    """LayoutError (naming node, weight and why) when a forced layout cannot be used."""
    where = f"forced layout {layout.name} for node {entry.node} (weight {entry.weight})"
    if not target.supports(layout.kind):
        raise LayoutError(f"{where}: target {target.name} does not run {layout.kind} "
                          f"(it runs: {', '.join(target.layouts)})")
    if layout.kind == "chw-spmm" and not (entry.op == "Conv" and is_pointwise(entry.conv)):
        raise LayoutError(f"{where}: chw-spmm needs a 1x1 Conv with stride 1 and no padding; "
                          f"this is a {entry.op}"
                          + (f" with kernel {list(entry.conv.kernel_shape)}" if entry.conv else ""))
    why = check_fits(wop.w2d(), layout)
    if why:
        raise LayoutError(f"{where}: {why}")


def choose(entry: PlanEntry, wop: WeightOp, options: CompileOptions,
           target: TargetSpec) -> None:
    """Set entry.layout / reason / forced / estimated_speedup (see the module docstring)."""
    s = entry.stats
    rows = kernel_rows(wop)
    times = estimate_times(entry, rows, target)
    forced = options.forced_layout(entry.node, entry.weight)
    if s.nonfinite:
        warnings.warn(f"node {entry.node} (weight {entry.weight}) holds {s.nonfinite} NaN/Inf "
                      f"values; {'using the forced layout' if forced else 'keeping it dense'}",
                      SparsecWarning, stacklevel=2)
    if forced is not None:
        layout = parse_layout(forced)
        check_forced(entry, wop, layout, target)
        entry.layout, entry.forced, entry.reason = layout.name, True, "forced by --layout"
        nblocks = _occupied_blocks(wop.w2d(), *layout.params) if layout.kind == "bsr" else None
        entry.estimated_speedup = times["dense"] / layout_time(layout, entry, rows, target,
                                                               nblocks)
        return
    entry.forced, entry.layout, entry.estimated_speedup = False, "dense", 1.0
    sparse = {name: t for name, t in times.items() if name != "dense"}
    if s.nonfinite:
        entry.reason = f"dense: weight holds {s.nonfinite} NaN/Inf values"
    elif s.rows * s.cols < target.cost.min_weight_elems:
        entry.reason = (f"dense: {s.rows * s.cols} weights, below the "
                        f"{target.cost.min_weight_elems} minimum")
    elif not sparse:
        entry.reason = f"dense: target {target.name} runs no fitting sparse layout"
    else:
        best = min(sparse, key=sparse.__getitem__)
        speedup = times["dense"] / sparse[best]
        if speedup >= target.cost.min_speedup:
            entry.layout, entry.estimated_speedup = best, speedup
            entry.reason = (f"{best}: est. {speedup:.1f}x faster than dense "
                            f"(density {s.density:.2f})")
        else:
            entry.reason = (f"dense: density {s.density:.2f} above break-even "
                            f"(best {best} est. {speedup:.2f}x)")


class ChooseLayoutsPass(SparsecPass):
    """Choose every entry's layout. Only the Plan changes (the result's ``modified`` is
    False); counts[<layout kind>]."""

    def __init__(self, plan: Plan, options: CompileOptions, target: TargetSpec) -> None:
        super().__init__()
        self.plan, self.options, self.target = plan, options, target

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        by_name = nodes_by_name(graph)
        for entry in self.plan.entries:
            with self.at(entry.node, entry.weight):
                choose(entry, weight_op_for(graph, entry.node, by_name), self.options,
                       self.target)
            self.counts[parse_layout(entry.layout).kind] += 1
        return False
