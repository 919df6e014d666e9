"""Sparsity statistics of every weight, and one Plan entry per weight-bearing op.

``analyze_weight(w2d) -> SparsityStats`` for a weight in ``[out, in]`` orientation:

- ``density = nnz / (out * in)``; a NaN or Inf counts as a nonzero (and in ``nonfinite``).
- ``nm``: for each M in (2, 4, 8, 16) dividing ``in``, ``N(M)`` = the most nonzeros in any
  group of M consecutive inputs of a row. Candidates are those with ``N(M) < M``; the
  tightest is the smallest ``N/M``, ties going to the smaller M. None when no M qualifies.
- ``block``: among 1x4, 4x1, 2x2, 4x4, 8x1, 1x8, 16x1, 1x16, 8x8 (those dividing the
  shape), the largest-area ``r x c`` block whose block density (fraction of r x c blocks
  holding a nonzero) is at most 1.1 x the element density; ties in area go to the lower
  block density, then to the order above. None when no candidate qualifies.
- ``zero_rows`` / ``zero_cols``: rows / columns without a nonzero.

A weight with no zero at all has no pattern either: ``nm None`` and ``block None`` (every
block would "qualify" at block density 1.0, which says nothing).
An all-zero weight gets ``density 0``, ``nm None`` and ``block None``: every pattern would
"fit" it trivially, and an N:M with N = 0 is not a layout, so we report no structure
rather than a meaningless one.

Everything is vectorized: group counts for M = 4, 8, 16 are built by summing pairs of the
counts for M/2 (strided slices, not a reshape-reduce, which is ~10x slower), and block
occupancy by OR-ing pairs of column groups the same way, once per block width. A 4096x4096
weight takes about 0.2 s.

``AnalyzeSparsityPass(plan)`` (in place on the model, fills ``plan.entries``):
names unnamed nodes (stable ``<op>_<position>`` names), then appends one PlanEntry per
weight op (``passes/weights.py``) with node name, op, weight name, stored weight shape,
stats and conv attributes. Entries already in the plan for the same node are replaced.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from sparsec.plan import Plan, PlanEntry, SparsityStats

from .base import SparsecPass
from .weights import match_weight_op, name_nodes, WeightOp

logger = logging.getLogger(__name__)

NM_GROUPS = (2, 4, 8, 16)
BLOCKS = ((1, 4), (4, 1), (2, 2), (4, 4), (8, 1), (1, 8), (16, 1), (1, 16), (8, 8))
BLOCK_SLACK = 1.1


def _tightest_nm(nz: np.ndarray) -> tuple[int, int] | None:
    """The (n, m) with the smallest n/m such that every group of m holds at most n."""
    o, k = nz.shape
    best: tuple[int, int] | None = None
    counts = nz.astype(np.uint8)  # counts per group of size m, built up by pair sums
    m = 1
    for target in NM_GROUPS:
        if k % target:
            break  # no larger power of two divides k either
        while m < target:
            counts = counts[:, 0::2] + counts[:, 1::2]  # strided pair sums: fast
            m *= 2
        n = int(counts.max(initial=0))
        if n < m and (best is None or n * best[1] < best[0] * m):
            best = (n, m)
    return best


def _block_densities(nz: np.ndarray) -> dict[tuple[int, int], float]:
    """Fraction of occupied r x c blocks for every candidate block dividing the shape."""
    o, k = nz.shape
    by_width = {1: nz}  # c -> [o, k/c]: "this group of c columns has a nonzero"
    c = 1
    while c < 16 and k % (2 * c) == 0:
        by_width[2 * c] = by_width[c][:, 0::2] | by_width[c][:, 1::2]
        c *= 2
    out: dict[tuple[int, int], float] = {}
    for r, c in BLOCKS:
        if o % r or k % c:
            continue
        cols = by_width[c]
        occupied = cols if r == 1 else cols.reshape(o // r, r, k // c).any(axis=1)
        out[(r, c)] = float(np.count_nonzero(occupied)) / occupied.size
    return out


def analyze_weight(w2d: np.ndarray) -> SparsityStats:
    """Pattern statistics of a ``[out, in]`` weight (see the module docstring)."""
    w = np.asarray(w2d)
    if w.ndim != 2:
        raise ValueError(f"analyze_weight expects a 2-D [out, in] weight, got shape {w.shape}")
    o, k = w.shape
    nz = w != 0  # NaN != 0 is True: a NaN counts as a nonzero
    nnz = int(np.count_nonzero(nz))
    size = o * k
    density = nnz / size if size else 0.0
    stats = SparsityStats(
        rows=o, cols=k, nnz=nnz, density=density,
        zero_rows=int(o - np.count_nonzero(nz.any(axis=1))) if size else o,
        zero_cols=int(k - np.count_nonzero(nz.any(axis=0))) if size else k,
        nonfinite=int(size - np.count_nonzero(np.isfinite(w))),
    )
    if nnz == 0 or nnz == size:
        return stats  # all zero or no zero at all: no N:M and no block (documented above)
    stats.nm = _tightest_nm(nz)
    best: tuple[int, int] | None = None
    best_bd = 0.0
    for (r, c), bd in _block_densities(nz).items():
        if bd > BLOCK_SLACK * density:
            continue
        area = 0 if best is None else best[0] * best[1]
        if r * c > area or (r * c == area and bd < best_bd):
            best, best_bd = (r, c), bd
    if best is not None:
        stats.block, stats.block_density = best, best_bd
    return stats


def make_entry(wop: WeightOp) -> PlanEntry:
    """A fresh Plan entry for a weight op (layout dense until choose_layouts runs)."""
    return PlanEntry(
        node=wop.node.name,
        op=wop.op,
        weight=wop.weight.name,
        weight_shape=tuple(int(d) for d in wop.weight.const_value.shape),
        stats=analyze_weight(wop.w2d()),
        conv=wop.conv_attrs(),
    )


def refresh_entry(entry: PlanEntry, wop: WeightOp) -> None:
    """Re-read the weight after a rewrite changed it: name, stored shape and stats."""
    if entry.source_stats is None:  # reports keep what the user's model has
        entry.source_stats, entry.source_shape = entry.stats, entry.weight_shape
    entry.weight = wop.weight.name
    entry.weight_shape = tuple(int(d) for d in wop.weight.const_value.shape)
    entry.stats = analyze_weight(wop.w2d())


class AnalyzeSparsityPass(SparsecPass):
    """Name unnamed nodes, then one PlanEntry per weight op: ``plan.entries`` grows."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        self.counts["named"] = name_nodes(graph)
        by_node = {e.node: i for i, e in enumerate(self.plan.entries)}
        for node in graph:
            found = match_weight_op(node)
            if isinstance(found, str):
                if node.op_type in ("MatMul", "Gemm", "Conv"):
                    logger.debug("not planned: %s", found)
                    self.counts["skipped"] += 1
                continue
            with self.at(node.name, found.weight.name):
                entry = make_entry(found)
            if entry.node in by_node:
                self.plan.entries[by_node[entry.node]] = entry
            else:
                by_node[entry.node] = len(self.plan.entries)
                self.plan.entries.append(entry)
            self.counts["entries"] += 1
        return self.counts["named"] > 0
