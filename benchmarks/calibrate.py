"""Fit the layout cost model to ``benchmarks.kernels --candidates`` runs on this machine.

    python -m benchmarks.kernels --candidates --out /tmp/k
    python -m benchmarks.calibrate /tmp/k/kernels.json [more runs ...] [--write] [--record]

Prints how often the current constants pick the fastest measured layout, fits new ones
(``sparsec.passes.calibration``) to the points of every run given together, and prints
the same for them, run by run. Two runs of one suite give the fit two samples of every
point: a shared machine's noise moves single points by 10-30%, and one run's outliers
pulled a fit of that run alone to a 2.8x miss elsewhere (RESULTS.md, 2026-12-01). The fit
takes each candidate's fastest time over the runs (``merge``): noise only ever adds time,
and two runs fitted side by side still traded a 1.67x miss at one run's outlier for the
other run's points (2026-12-01, 07:45).
``--write`` stores the fitted constants as ``targets/calibration/cpu-<isa>-<mcpu>.json``
(the instruction set and LLVM CPU name of the measured host, from the runs' metadata),
which hosts of that CPU then use; runs recorded before the CPU name was (2026-12-01) give
``cpu-<isa>.json``, the instruction set's default. ``--record`` copies each run's
measurements to ``benchmarks/recorded/kernels-<isa>[-<mcpu>]-<date>.json``, which the
decision test reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1.10  # a pick within 10% of the fastest counts as right (timing noise)


class Run(NamedTuple):
    """One --candidates run: its file, its JSON, its metadata, the instruction set and CPU
    it measured and its points (``calibration.Measured``)."""

    path: Path
    data: dict
    meta: dict
    family: str
    mcpu: str  # "" when the run did not record it
    points: list


def report(name: str, s: dict) -> str:
    worst = s["worst"]
    return (f"{name}: fastest layout at {s['fastest']}/{s['points']} points, within "
            f"{TOLERANCE - 1:.0%} at {s['within_tolerance']}/{s['points']}; geometric-mean "
            f"regret {s['geomean_regret']:.3f}; worst {worst[0]} picks {worst[1]} "
            f"({worst[2]:.2f}x the fastest)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("results", type=Path, nargs="+",
                    help="kernels.json of --candidates runs (one instruction set)")
    ap.add_argument("--write", action="store_true",
                    help="write targets/calibration/cpu-<isa>-<mcpu>.json")
    ap.add_argument("--record", action="store_true", help="copy the measurements to "
                    "benchmarks/recorded/kernels-<isa>-<mcpu>-<date>.json")
    args = ap.parse_args(argv)

    from sparsec.passes import calibration
    from sparsec.targets import cpu

    runs: list[Run] = []
    for path in args.results:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        points = calibration.measured_points(data.get("points", []))
        if not points:
            print(f"error: no point of {path} has candidate timings; run benchmarks.kernels "
                  "--candidates", file=sys.stderr)
            return 2
        meta = data.get("meta", {})
        runs.append(Run(path, data, meta, meta.get("isa") or cpu.isa(cpu.detect_host()),
                        meta.get("mcpu") or "", points))
    machines = {(run.family, run.mcpu) for run in runs}
    if len(machines) > 1:
        print("error: the runs measured different CPUs ("
              + ", ".join(f"{f} on {m or 'an unnamed CPU'}" for f, m in sorted(machines))
              + ")", file=sys.stderr)
        return 2
    family, mcpu = machines.pop()
    stem = f"{family}-{mcpu}" if mcpu else family
    meta = runs[-1].meta
    cost = cpu.calibrated_cost(family, mcpu or None)
    # The cache term needs the size of the measured machine's last-level cache: the runs'
    # own record of it, else this host's (calibrate where you measured).
    cache = int(meta.get("llc_bytes") or cost.llc_bytes or cpu.llc_bytes())
    spec = replace(cpu.SPEC, vector_lanes=cpu.family_lanes(family),
                   cost=replace(cost, llc_bytes=cache))
    merged = merge([run.data["points"] for run in runs])
    merged_points = calibration.measured_points(merged)
    fitted = calibration.fit(merged_points, spec)
    new = replace(spec, cost=fitted)
    shown = runs if len(runs) == 1 else [*runs, Run(
        Path(f"the fastest of {len(runs)} runs"), {"points": merged}, meta, family, mcpu,
        merged_points)]
    for run in shown:
        points = run.points
        print(f"{run.path} ({run.meta.get('date', '?')}):")
        print("  " + report(f"current constants ({stem})",
                            calibration.summary(points, spec, TOLERANCE)))
        print("  " + report("fitted constants", calibration.summary(points, new, TOLERANCE)))
        for m, r in zip(points, calibration.regrets(points, new)):
            if r > TOLERANCE:
                print(f"    off: {m.label}: picks {calibration.choice(m, new)}, measured "
                      + ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.ms.items(),
                                                                   key=lambda kv: kv[1])))
    print(json.dumps(calibration.cost_dict(fitted), indent=1))
    if args.write:
        out = ROOT / "targets" / "calibration" / f"cpu-{stem}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        dates = ", ".join(run.meta.get("date", "?") for run in runs)
        out.write_text(json.dumps({
            "isa": family, "mcpu": mcpu or None, "date": time.strftime("%Y-%m-%d"),
            "machine": meta.get("machine"),
            "source": "python -m benchmarks.calibrate (fit to benchmarks.kernels --candidates"
                      f" runs of {dates})",
            "cost": calibration.cost_dict(fitted)}, indent=1) + "\n")
        print(f"wrote {out}")
    if args.record:  # what the fit saw: the fastest of the runs
        keep = ("shape", "pattern", "density", "batch", "layout", "stats", "candidates_ms")
        date = meta.get("date") or time.strftime("%Y-%m-%d")
        out = ROOT / "benchmarks" / "recorded" / f"kernels-{stem}-{date}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        record_meta = {**meta, "isa": family}
        if len(runs) > 1:
            record_meta["merged"] = (f"each candidate's fastest time over {len(runs)} runs "
                                     "(benchmarks/calibrate.py merge)")
        out.write_text(json.dumps({"meta": record_meta, "points": [
            {k: p[k] for k in keep if k in p} for p in merged]}, indent=None) + "\n")
        print(f"wrote {out}")
    return 0


def _key(point: dict) -> tuple:
    return (tuple(point.get("shape") or ()), point.get("pattern"), point.get("density"),
            point.get("batch"))


def merge(runs: list[list[dict]]) -> list[dict]:
    """The points of several runs of one suite, each candidate at its fastest time over the
    runs that measured it (a point measured by one run only is kept as it is)."""
    out: dict[tuple, dict] = {}
    for points in runs:
        for p in points:
            have = out.get(_key(p))
            if have is None:
                out[_key(p)] = {**p, "candidates_ms": dict(p.get("candidates_ms") or {})}
                continue
            best = have["candidates_ms"]
            for layout, ms in (p.get("candidates_ms") or {}).items():
                best[layout] = min(ms, best.get(layout, ms))
    return list(out.values())


if __name__ == "__main__":
    raise SystemExit(main())
