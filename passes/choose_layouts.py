"""Choose a layout for every planned op: a forced one, else the cheapest by a cost model.

Cost model (times in seconds; rates from ``TargetSpec.cost``, in GFLOP/s, count the FLOPs a
kernel executes on what it stores, padding included)::

    rows        = the rows the kernel sees: prod(X.shape[:-1]) for MatMul/Gemm (batch*seq),
                  N*OH*OW for Conv (from the value shapes; 1 if unknown)
    t(layout)   = max(flops / rate, stored_bytes / bandwidth) + overhead_s
    bandwidth   = llc_bandwidth_gbs when the model's weights and what one call writes fit
                  the last-level cache (``weights_resident``), else bandwidth_gbs

    layout      flops                  rate (rows == 1 | 2..lanes | more)     stored_bytes
    dense       2*O*K*rows             dense_gflops (Conv: conv_dense_gflops) 4*O*K
    csr         2*nnz*prows            csr_gflops | csr_batch | csr_wide (*)  nnz*(4+idx) + 4*(O+1)
    chw-spmm    2*nnz*rows             chw_spmm_gflops                        as csr
    bsrRxC      2*nblocks*R*C*prows    bsr_gflops | bsr_batch | bsr_wide      nblocks*(4*R*C+idx)
    nmN:M       2*O*K*(N/M)*prows      nm_gflops | nm_batch | nm_wide         O*K*(N/M)*5
    bitmap      2*O*K*rows             bitmap_gflops | bitmap_batch (**)      4*nnz+O*K/8+4*(O+1)

(*) ``csr_panel4_gflops`` where the kernel runs column panels in 4-vector row blocks (4 to 8
vectors of rows and k > 256: ``csr_panel_columns``, ``panel_block_vectors``), when set;
``csr_narrow_gflops`` where those panels are narrower than ``PANEL_COLUMNS`` (AVX-512, at
the weight's density), when set.
(**) a candidate only for MatMul/Gemm at up to ``BITMAP_MAX_ROWS`` rows with K a multiple
of the vector lanes, on targets that run it, and priced only once calibrated (the rates
default to None: infinitely slow).
``idx`` is 2 bytes (int16 indices) when the column count fits, else 4. The two regimes are
the kernels' two paths: one row (vectorized along the weight) and several rows (X
transposed, vectorized over rows, which are padded to a multiple of the vector lanes:
``prows``) and in blocks of 2 or 4 vectors of rows, each block streaming the weight once
(``_weight_passes``: ``stored_bytes`` counts once per pass). At batch 1 most layers are bound
by streaming the weight, which is where sparsity pays most. The rates and the bandwidth are
calibrated per instruction set from ``benchmarks.kernels`` measurements
(``benchmarks/calibrate.py``, ``targets/calibration``).

with ``[O, K]`` the weight as ``[out, in]`` (Conv: ``K = C*kh*kw``). Candidates are dense,
csr, bsr at the analysed block (``stats.block``, which divides the shape by construction),
nm at the analysed N:M (``stats.nm``), and chw-spmm for 1x1 / stride-1 / unpadded convs;
only layout kinds the target supports. Ties go to the more specialised kernel, in the
order chw-spmm, bsr, nm, csr. The fastest sparse candidate is chosen when
``t(dense) / t(sparse) >= min_speedup``; otherwise the op stays dense. Layers doing fewer
than ``min_macs`` multiply-adds a call (weights x rows) stay dense, and a weight holding
NaN/Inf stays dense with a ``SparsecWarning``.

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
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from sparsec.errors import LayoutError, SparsecWarning
from sparsec.formats import check_fits
from sparsec.layouts import Layout, parse_layout
from sparsec.options import CompileOptions
from sparsec.plan import Plan, PlanEntry
from sparsec.targetspec import (
    BITMAP_KERNEL_ROWS,
    BITMAP_MAX_ROWS,
    PANEL_COLUMNS,
    TargetSpec,
    csr_panel_columns,
    panel_block_vectors,
    rows_block_vectors,
)

from .base import SparsecPass
from .fuse_head import HEAD_KINDS, HEAD_MAX_PIXELS, pooled, shared
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


def weights_resident(entries: Iterable[PlanEntry], target: TargetSpec,
                     written: float = 0.0) -> bool:
    """Whether a model whose planned weights are ``entries`` stays in the last-level cache
    between calls (the weights counted as float32), so that its kernels read them from there:
    they and the ``written`` bytes of one call's outputs (``bytes_written``) fit it.

    Benchmarks and serving loops call a model back to back; a weight that fits the cache
    then never comes from memory again. Pricing such weights at memory bandwidth made dense
    look 4x slower than it is at one row: a 3072x768 layer at density 0.2 picked csr (0.145
    ms) over a dense GEMV that took 0.111 (measured on AVX2, Zen 3, 32 MiB L3). The dense
    bytes bound what the layouts store, so a model that fits dense fits whatever is picked.
    But what a call writes passes through the cache too: MobileNetV2-224's 13 MiB of weights
    fit a 32 MiB L3, its ops' outputs (25.5 MiB a call) push them out, and its classifier
    (1000x1280 at density 0.2, one row) took 125 us dense in the model against 68 us as csr
    (Zen 4, in-model A/B in one process) where the resident pricing had picked dense."""
    c = target.cost
    if not (c.llc_bytes and c.llc_bandwidth_gbs):
        return False
    weights = sum(4.0 * e.stats.rows * e.stats.cols for e in entries)
    return weights + written <= c.llc_bytes


WRITING_OPS = ("Conv", "MatMul", "Gemm")  # the elementwise ops after them are their epilogues


def bytes_written(graph: ir.Graph) -> float:
    """Bytes one call writes, counted as the outputs of the graph's ``WRITING_OPS`` (float32,
    static shapes only): planned or not (a depthwise conv), each writes its output once."""
    total = 0.0
    for node in graph:
        if node.op_type in WRITING_OPS and node.domain in ("", "ai.onnx"):
            for out in node.outputs:
                if out.shape is not None and out.shape.is_static():
                    total += 4.0 * math.prod(int(d) for d in out.shape)
    return total


def layout_time(layout: Layout, entry: PlanEntry, rows: int, target: TargetSpec,
                nblocks: int | None = None, resident: bool = False) -> float:
    """Estimated seconds per call of one layout (the formulas of the module docstring).
    ``nblocks`` (bsr) defaults to what ``stats.block_density`` implies for that block;
    ``resident``: the model's weights stay in the last-level cache (``weights_resident``)."""
    c, s = target.cost, entry.stats
    o, k = s.rows, s.cols
    batch = rows >= 2
    lanes = max(1, target.vector_lanes)
    wide = rows > lanes
    prows = -(-rows // lanes) * lanes if batch else 1  # rows as the rows path pads them
    idx = 2 if k <= 32767 else 4
    if layout.kind == "dense":
        rate = c.conv_dense_gflops if entry.op == "Conv" else c.dense_gflops
        flops, stored = 2.0 * o * k * rows, 4.0 * o * k
    elif layout.kind == "csr":
        rate = c.csr_wide_gflops if wide else c.csr_batch_gflops if batch else c.csr_gflops
        panel = csr_panels(s, rows, lanes)
        if panel and c.csr_panel4_gflops and panel_block_vectors(rows, lanes) == 4:
            rate = c.csr_panel4_gflops  # column panels of 4-vector row blocks
        if panel and c.csr_narrow_gflops and panel < PANEL_COLUMNS:
            rate = c.csr_narrow_gflops  # panels narrowed towards L1 (AVX-512)
        flops, stored = 2.0 * s.nnz * prows, s.nnz * (4.0 + idx) + 4.0 * (o + 1)
    elif layout.kind == "chw-spmm":
        flops, rate = 2.0 * s.nnz * rows, c.chw_spmm_gflops
        stored = s.nnz * (4.0 + idx) + 4.0 * (o + 1)
    elif layout.kind == "bsr":
        r, cc = layout.params
        if nblocks is None:
            nblocks = round((s.block_density or 0.0) * (o // r) * (k // cc))
        flops = 2.0 * nblocks * r * cc * prows
        rate = c.bsr_wide_gflops if wide else c.bsr_batch_gflops if batch else c.bsr_gflops
        if wide and _bsr_vectors(r, lanes) == 1:
            rate /= 2  # one vector of rows per block row: a value broadcast per FMA, not per 2
        stored = nblocks * (4.0 * r * cc + idx) + 4.0 * (o // r + 1)
    elif layout.kind == "bitmap":
        rate = c.bitmap_batch_gflops if batch else c.bitmap_gflops
        if not rate:
            return math.inf  # not calibrated on this target
        flops = 2.0 * o * k * rows
        stored = 4.0 * s.nnz + o * k / 8.0 + 4.0 * (o + 1)
    else:  # nm
        n, m = layout.params
        flops = 2.0 * o * k * (n / m) * prows
        rate = c.nm_wide_gflops if wide else c.nm_batch_gflops if batch else c.nm_gflops
        stored = o * k * (n / m) * 5.0
    compute = flops / (rate * 1e9)
    bandwidth = c.llc_bandwidth_gbs if resident and c.llc_bandwidth_gbs else c.bandwidth_gbs
    memory = stored * _weight_passes(layout, rows, lanes, k) / (bandwidth * 1e9)
    return max(compute, memory) + c.overhead_s


def csr_panels(stats, rows: int, lanes: int) -> int:
    """Columns per panel of the csr kernel at ``rows`` rows (``csr_panel_columns`` at the
    weight's shape and density; 0 for no panels, as at up to one vector of rows)."""
    if rows <= lanes:
        return 0
    return csr_panel_columns(stats.cols, rows, lanes, stats.density)


def _weight_passes(layout: Layout, rows: int, lanes: int, k: int) -> int:
    """How many times a kernel streams the stored weight: the rows path of csr/nm/bsr walks
    it once per block of rows (csr/nm: ``rows_block_vectors`` vectors wide, 4 for short
    k; csr with column panels: ``panel_block_vectors``, 4 or 8; bsr: 2, or 1 for blocks
    too tall to keep 2 vectors of every block row in the registers: 2r > registers - 4)."""
    if rows < 2 or layout.kind in ("dense", "chw-spmm"):
        return 1
    if layout.kind == "bsr":
        vectors = _bsr_vectors(layout.params[0], lanes)
    elif layout.kind == "csr" and csr_panel_columns(k, rows, lanes):
        vectors = panel_block_vectors(rows, lanes)
    else:
        vectors = rows_block_vectors(k, lanes)
    return -(-rows // (vectors * lanes))


def _bsr_vectors(r: int, lanes: int) -> int:
    """Vectors of X rows the bsr rows path keeps per block row (its ``nvec``): 2 unless the
    block is too tall for 2 vectors of accumulators per row (2r > registers - 4)."""
    budget = (32 if lanes >= 16 else 16) - 4
    return 2 if 2 * r <= budget else 1


def candidates(entry: PlanEntry, target: TargetSpec, rows: int | None = None) -> list[Layout]:
    """Layouts worth estimating, dense first. Ties go to the earlier one: the more
    specialised kernel first (chw-spmm, bsr, nm), csr, then bitmap (at ``rows`` kernel
    rows, when given and at most ``BITMAP_MAX_ROWS``)."""
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
    if (target.supports("bitmap") and entry.op != "Conv" and rows is not None
            and rows <= BITMAP_MAX_ROWS and s.cols % max(8, target.vector_lanes) == 0):
        found.append(Layout("bitmap"))
    return found


def estimate_times(entry: PlanEntry, rows: int, target: TargetSpec,
                   resident: bool = False) -> dict[str, float]:
    """Estimated seconds per call of every candidate layout, by name (dense first)."""
    return {lay.name: layout_time(lay, entry, rows, target, resident=resident)
            for lay in candidates(entry, target, rows)}


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
    if layout.kind == "bitmap":
        rows, lanes = kernel_rows(wop), max(8, target.vector_lanes)
        if entry.op == "Conv":
            raise LayoutError(f"{where}: bitmap runs MatMul/Gemm weights; this is a Conv")
        if rows > BITMAP_KERNEL_ROWS:
            raise LayoutError(f"{where}: bitmap runs up to {BITMAP_KERNEL_ROWS} rows of "
                              f"input; this layer has {rows}")
        if entry.stats.cols % lanes:
            raise LayoutError(f"{where}: bitmap on {target.name} needs in "
                              f"({entry.stats.cols}) divisible by {lanes}")
    why = check_fits(wop.w2d(), layout)
    if why:
        raise LayoutError(f"{where}: {why}")


def choose(entry: PlanEntry, wop: WeightOp, options: CompileOptions,
           target: TargetSpec, resident: bool = False, note: str | None = None) -> None:
    """Set entry.layout / reason / forced / estimated_speedup (see the module docstring);
    ``note``: why ``resident`` pricing holds for this op when it is not the cache's."""
    s = entry.stats
    rows = kernel_rows(wop)
    times = estimate_times(entry, rows, target, resident)
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
                                                               nblocks, resident)
        return
    entry.forced = False
    entry.layout, entry.estimated_speedup, entry.reason = decide(entry, times, target, rows,
                                                                resident, note)


def decide(entry: PlanEntry, times: dict[str, float], target: TargetSpec, rows: int = 1,
           resident: bool = False, note: str | None = None) -> tuple[str, float, str]:
    """(layout, estimated speed-up over dense, reason) for an op that is not forced, from
    ``estimate_times`` at ``rows`` kernel rows: the fastest sparse candidate when it beats
    dense by ``min_speedup``, else dense. ``resident``: the times assumed the weights in
    the last-level cache, which the reason then says (or ``note``, why they could)."""
    s = entry.stats
    sparse = {name: t for name, t in times.items() if name != "dense"}
    if s.nonfinite:
        return "dense", 1.0, f"dense: weight holds {s.nonfinite} NaN/Inf values"
    macs = s.rows * s.cols * max(1, rows)
    if macs < target.cost.min_macs:
        return "dense", 1.0, (f"dense: {macs} multiply-adds a call, below the "
                              f"{target.cost.min_macs} minimum")
    if not sparse:
        return "dense", 1.0, f"dense: target {target.name} runs no fitting sparse layout"
    best = min(sparse, key=sparse.__getitem__)
    speedup = times["dense"] / sparse[best]
    cached = (f"; {note}" if note else f"; weights in the {target.cost.llc_bytes >> 20} MiB "
              f"cache" if resident else "")
    if speedup >= target.cost.min_speedup:
        return best, speedup, (f"{best}: est. {speedup:.1f}x faster than dense "
                               f"(density {s.density:.2f}{cached})")
    return "dense", 1.0, (f"dense: density {s.density:.2f} above break-even "
                          f"(best {best} est. {speedup:.2f}x{cached})")


class ChooseLayoutsPass(SparsecPass):
    """Choose every entry's layout. Only the Plan changes (the result's ``modified`` is
    False); counts[<layout kind>]."""

    def __init__(self, plan: Plan, options: CompileOptions, target: TargetSpec) -> None:
        super().__init__()
        self.plan, self.options, self.target = plan, options, target

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        by_name = nodes_by_name(graph)
        resident = weights_resident(self.plan.entries, self.target, bytes_written(graph))
        tails = {(e.fused_nodes[-1] if e.fused_nodes else e.node): e
                 for e in self.plan.entries if e.op == "Conv"}
        for entry in self.plan.entries:
            with self.at(entry.node, entry.weight):
                wop = weight_op_for(graph, entry.node, by_name)
                head = None if resident else self._head_conv(entry, wop, tails, graph, by_name)
                note = (f"weights stream during {head.node}'s GEMM (fuse_head)"
                        if head is not None else None)
                choose(entry, wop, self.options, self.target, resident or head is not None,
                       note)
            self.counts[parse_layout(entry.layout).kind] += 1
        return False

    def _head_conv(self, entry: PlanEntry, wop: WeightOp, tails: dict, graph, by_name
                   ) -> PlanEntry | None:
        """The dense conv whose pooled output this linear reads, when ``fuse_head`` will fuse
        them if the linear stays dense too (``fuse_head.match_head``'s conditions, on the
        graph before lowering): its weight then streams in while the conv computes, as from
        the cache. Entries come in graph order, so the conv's layout is chosen already."""
        o = self.options
        if (entry.op == "Conv" or not (o.fuse_head and o.fuse_epilogues)
                or any(s.op == "residual" for s in entry.epilogue)):
            return None
        found = pooled(by_name[entry.node])
        conv = tails.get(found[0].name) if found and found[0] is not None else None
        if (conv is None or parse_layout(conv.layout).kind not in HEAD_KINDS
                or not is_pointwise(conv.conv) or shared(*found) is not None):
            return None
        pixels = kernel_rows(weight_op_for(graph, conv.node, by_name)) // max(1, kernel_rows(wop))
        return conv if pixels <= HEAD_MAX_PIXELS else None
