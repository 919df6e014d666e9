"""Per-layer reports: the readable table of ``inspect``/``compile`` and the JSON form.

``inspect --json`` prints exactly ``{"model": str, "layers": [PlanEntry.report_row()]}``.
"""

from __future__ import annotations

import json

from sparsec.plan import Plan


def as_json(model_name: str, plan: Plan) -> str:
    return json.dumps({"model": model_name, "layers": [e.report_row() for e in plan.entries]},
                      indent=2)


def _fmt_row(r: dict) -> list[str]:
    nm = f"{r['nm'][0]}:{r['nm'][1]}" if r["nm"] else "-"
    block = (f"{r['block'][0]}x{r['block'][1]} ({r['block_density']:.2f})" if r["block"] else "-")
    zeros = f"{r['zero_rows']}/{r['zero_cols']}" if (r["zero_rows"] or r["zero_cols"]) else "-"
    return [r["name"], r["op"], r["weight"], "x".join(map(str, r["shape"])), f"{r['density']:.3f}",
            nm, block, zeros, r["layout"], r["reason"]]


HEADER = ["layer", "op", "weight", "shape", "density", "N:M", "block (dens.)", "zero r/c",
          "layout", "why"]


def table(model_name: str, plan: Plan, max_reason: int = 60) -> str:
    rows = [_fmt_row(e.report_row()) for e in plan.entries]
    for r in rows:
        if len(r[-1]) > max_reason:
            r[-1] = r[-1][: max_reason - 1] + "…"
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [f"{model_name}: {len(plan.entries)} weight-bearing op(s), target {plan.target}",
           line(HEADER), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if not rows:
        out.append("(no MatMul/Gemm/Conv with a constant weight)")
    sparse = sum(1 for e in plan.entries if e.layout != "dense")
    out.append(f"{sparse} of {len(plan.entries)} op(s) sparse")
    return "\n".join(out)
