"""Calibrate the layout cost model (``choose_layouts``) against measured kernel times.

Input: the points of a ``benchmarks.kernels`` run, each with the weight's sparsity
statistics, the rows (batch) and the measured milliseconds of every candidate layout,
forced one at a time::

    {"stats": {...SparsityStats...}, "batch": 32, "candidates_ms": {"dense": 8.6, "csr": 1.3}}

``regrets`` replays the model's decision at every point and returns, per point, the
measured time of the layout it picks over the fastest measured one (1.0: it picked the
fastest). ``fit`` searches the rates and bandwidth of ``CostConstants`` (multiplicative
steps, coordinate descent) to minimise the summed log regret (weighted ``SLOWER_THAN_DENSE``
times where a sparse pick measured slower than dense), with a small pull towards
predicting the measured times themselves so that ties are broken by a model that still
describes the machine. ``benchmarks/calibrate.py`` is the command that runs it and writes
``targets/calibration/cpu-<isa>.json``; ``tests/passes/test_cost_model.py`` checks the
committed constants against the committed measurements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from sparsec.plan import PlanEntry, SparsityStats
from sparsec.targetspec import PANEL_COLUMNS, CostConstants, TargetSpec

from .choose_layouts import csr_panels, decide, estimate_times, weights_resident

# The constants the fit moves; chw-spmm (convs) and the thresholds stay as they are.
FITTED = ("dense_gflops", "csr_gflops", "csr_batch_gflops", "csr_wide_gflops",
          "csr_panel4_gflops", "csr_narrow_gflops", "bsr_gflops", "bsr_batch_gflops",
          "bsr_wide_gflops", "nm_gflops", "nm_batch_gflops", "nm_wide_gflops", "bitmap_gflops",
          "bitmap_batch_gflops", "bandwidth_gbs", "llc_bandwidth_gbs")
# Multiplicative moves of one constant. The 1.15-1.4 steps are there because a rate often
# pays only in a narrow band: csr_panel4_gflops changed no decision at 1.25x csr_wide's
# start and lost at 1.5x; 1.33x was the best (2026-12-01).
STEPS = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.05, 1.1, 1.15, 1.2, 1.25, 1.33, 1.4,
         1.5, 1.75, 2.0, 3.0)
MODEL_WEIGHT = 0.02  # weight of the squared log error of the predicted times
# Weight of a point's log regret when the model picks a sparse layout that measured slower
# than dense: a compiled model must never be slower than the dense one. Without it the fit
# of 2026-11-30 traded six such picks at density 0.5 and 128 rows (0.69-0.82x of dense)
# for small gains elsewhere.
SLOWER_THAN_DENSE = 4.0


@dataclass(frozen=True)
class Measured:
    """One suite point: the model's inputs and the measured time of each candidate."""

    entry: PlanEntry
    rows: int
    ms: dict[str, float]
    label: str = ""

    @property
    def best(self) -> str:
        return min(self.ms, key=self.ms.__getitem__)


def measured_points(points: list[dict]) -> list[Measured]:
    """``Measured`` for every point of a benchmarks.kernels JSON that has candidates."""
    out = []
    for p in points:
        if not p.get("stats") or len(p.get("candidates_ms") or {}) < 2:
            continue
        stats = SparsityStats.from_dict(p["stats"])
        entry = PlanEntry(node="layer", op="MatMul", weight="layer.weight",
                          weight_shape=(stats.rows, stats.cols), stats=stats)
        label = (f"{stats.rows}x{stats.cols} {p.get('pattern', '?')} d={p.get('density', '?')} "
                 f"batch {p['batch']}")
        out.append(Measured(entry, int(p["batch"]), dict(p["candidates_ms"]), label))
    return out


def _resident(m: Measured, spec: TargetSpec) -> bool:
    """The point's one-layer model stays in the last-level cache (the suite calls it in a
    hot loop, as ``weights_resident`` assumes)."""
    return weights_resident([m.entry], spec)


def choice(m: Measured, spec: TargetSpec) -> str:
    """The layout the model picks at this point (restricted to the measured candidates)."""
    times = {k: v for k, v in estimate_times(m.entry, m.rows, spec, _resident(m, spec)).items()
             if k in m.ms}
    if "dense" not in times:
        return min(times, key=times.get)
    return decide(m.entry, times, spec, m.rows)[0]


def regrets(points: list[Measured], spec: TargetSpec) -> list[float]:
    """Per point: measured time of the model's pick / the fastest measured candidate."""
    return [m.ms[choice(m, spec)] / m.ms[m.best] for m in points]


def _loss(points: list[Measured], spec: TargetSpec) -> float:
    total = 0.0
    for m in points:
        pick = choice(m, spec)
        r = math.log(m.ms[pick] / m.ms[m.best])
        if pick != "dense" and m.ms[pick] > m.ms.get("dense", math.inf):
            r *= SLOWER_THAN_DENSE  # a sparse pick slower than dense breaks a promise
        total += r
    fit = 0.0
    for m in points:
        est = estimate_times(m.entry, m.rows, spec, _resident(m, spec))
        fit += sum((math.log(est[k] * 1e3) - math.log(v)) ** 2 for k, v in m.ms.items()
                   if k in est)
    return total + MODEL_WEIGHT * fit / max(1, len(points))


def _narrow_panels(m: Measured, spec: TargetSpec) -> bool:
    """The point's csr kernel runs panels narrower than PANEL_COLUMNS."""
    return "csr" in m.ms and 0 < csr_panels(m.entry.stats, m.rows, spec.vector_lanes) \
        < PANEL_COLUMNS


def fit(points: list[Measured], spec: TargetSpec, sweeps: int = 12) -> CostConstants:
    """Constants minimising the summed log regret (see the module docstring)."""
    best_cost = spec.cost
    if best_cost.csr_panel4_gflops is None:  # not calibrated yet: start from csr_wide's
        best_cost = replace(best_cost, csr_panel4_gflops=best_cost.csr_wide_gflops)
    if best_cost.csr_narrow_gflops is None and any(  # nor this: where panels narrow
            _narrow_panels(m, spec) for m in points):
        best_cost = replace(best_cost, csr_narrow_gflops=best_cost.csr_wide_gflops)
    for name, one_row in (("bitmap_gflops", True), ("bitmap_batch_gflops", False)):
        measured = any("bitmap" in m.ms and (m.rows == 1) == one_row for m in points)
        if measured and getattr(best_cost, name) is None:  # nor these: dense's rate, when
            best_cost = replace(best_cost, **{name: best_cost.dense_gflops})  # data moves it
    if best_cost.llc_bytes and not best_cost.llc_bandwidth_gbs:  # nor this: 4x memory's
        best_cost = replace(best_cost, llc_bandwidth_gbs=4 * best_cost.bandwidth_gbs)
    best = _loss(points, replace(spec, cost=best_cost))
    for _ in range(sweeps):
        improved = False
        for name in FITTED:
            if getattr(best_cost, name) is None:
                continue
            for step in STEPS:
                cost = replace(best_cost, **{name: getattr(best_cost, name) * step})
                loss = _loss(points, replace(spec, cost=cost))
                if loss < best - 1e-9:
                    best, best_cost, improved = loss, cost, True
        if not improved:
            break
    return best_cost


def summary(points: list[Measured], spec: TargetSpec, tolerance: float) -> dict:
    """Counts for a report: points, picks within ``tolerance`` of the fastest, worst."""
    r = regrets(points, spec)
    worst = max(range(len(r)), key=r.__getitem__) if r else None
    return {
        "points": len(r),
        "fastest": sum(x <= 1.0 + 1e-12 for x in r),
        "within_tolerance": sum(x <= tolerance for x in r),
        "geomean_regret": math.exp(sum(math.log(x) for x in r) / len(r)) if r else 1.0,
        "worst": (points[worst].label, choice(points[worst], spec), r[worst]) if r else None,
    }


def cost_dict(cost: CostConstants) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(cost).items()}
