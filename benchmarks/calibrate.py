"""Fit the layout cost model to a ``benchmarks.kernels --candidates`` run on this machine.

    python -m benchmarks.kernels --candidates --out /tmp/k
    python -m benchmarks.calibrate /tmp/k/kernels.json [--write] [--record]

Prints how often the current constants pick the fastest measured layout, fits new ones
(``sparsec.passes.calibration``) and prints the same for them. ``--write`` stores the fitted
constants as ``targets/calibration/cpu-<isa>.json`` (the instruction set of the host that
was measured, from the run's metadata); ``--record`` copies the measurements to
``benchmarks/recorded/kernels-<isa>.json``, which the decision test reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1.10  # a pick within 10% of the fastest counts as right (timing noise)


def report(name: str, s: dict) -> str:
    worst = s["worst"]
    return (f"{name}: fastest layout at {s['fastest']}/{s['points']} points, within "
            f"{TOLERANCE - 1:.0%} at {s['within_tolerance']}/{s['points']}; geometric-mean "
            f"regret {s['geomean_regret']:.3f}; worst {worst[0]} picks {worst[1]} "
            f"({worst[2]:.2f}x the fastest)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("results", type=Path, help="kernels.json of a --candidates run")
    ap.add_argument("--write", action="store_true", help="write targets/calibration/cpu-<isa>.json")
    ap.add_argument("--record", action="store_true",
                    help="copy the measurements to benchmarks/recorded/kernels-<isa>.json")
    args = ap.parse_args(argv)

    from sparsec.passes import calibration
    from sparsec.targets import cpu

    try:
        data = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    points = calibration.measured_points(data["points"])
    if not points:
        print("error: no point has candidate timings; run benchmarks.kernels --candidates",
              file=sys.stderr)
        return 2
    meta = data.get("meta", {})
    family = meta.get("isa") or cpu.isa(cpu.detect_host())
    lanes = 16 if family == "avx512" else 8
    spec = replace(cpu.SPEC, vector_lanes=lanes, cost=cpu.calibrated_cost(family))
    print(report(f"current constants ({family})", calibration.summary(points, spec, TOLERANCE)))
    fitted = calibration.fit(points, spec)
    new = replace(spec, cost=fitted)
    print(report("fitted constants", calibration.summary(points, new, TOLERANCE)))
    for m, r in zip(points, calibration.regrets(points, new)):
        if r > TOLERANCE:
            print(f"  off: {m.label}: picks {calibration.choice(m, new)}, measured "
                  + ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.ms.items(), key=lambda kv: kv[1])))
    print(json.dumps(calibration.cost_dict(fitted), indent=1))
    if args.write:
        out = ROOT / "targets" / "calibration" / f"cpu-{family}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "isa": family, "date": time.strftime("%Y-%m-%d"), "machine": meta.get("machine"),
            "source": "python -m benchmarks.calibrate (fit to benchmarks.kernels --candidates)",
            "cost": calibration.cost_dict(fitted)}, indent=1) + "\n")
        print(f"wrote {out}")
    if args.record:
        out = ROOT / "benchmarks" / "recorded" / f"kernels-{family}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = ("shape", "pattern", "density", "batch", "layout", "stats", "candidates_ms")
        out.write_text(json.dumps({"meta": {**meta, "isa": family}, "points": [
            {k: p[k] for k in keep if k in p} for p in data["points"]]}, indent=None) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
