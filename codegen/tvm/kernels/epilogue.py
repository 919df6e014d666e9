"""The fused epilogue as a TIR expression: ``steps(acc) -> y``, applied per output element.

``emit(acc, steps, bias=..., residual=...)`` folds the steps of ``sparsec.ops`` in order;
``bias`` and ``residual`` are the already-indexed loads (PrimExprs) for the element being
written. It matches ``sparsec.ops.apply_epilogue`` (the numpy reference).
"""

from __future__ import annotations

import math

from tvm import tirx

from sparsec.plan import EpilogueStep


def emit(
    acc: tirx.PrimExpr,
    steps: list[EpilogueStep],
    bias: tirx.PrimExpr | None = None,
    residual: tirx.PrimExpr | None = None,
) -> tirx.PrimExpr:
    y = acc
    f32 = "float32"
    for s in steps:
        if s.op == "bias":
            y = y + bias
        elif s.op == "relu":
            y = tirx.max(y, tirx.const(0.0, f32))
        elif s.op == "clip":
            if s.min is not None and math.isfinite(s.min):
                y = tirx.max(y, tirx.const(s.min, f32))
            if s.max is not None and math.isfinite(s.max):
                y = tirx.min(y, tirx.const(s.max, f32))
        elif s.op == "gelu":
            y = tirx.const(0.5, f32) * y * (
                tirx.const(1.0, f32) + tirx.erf(y * tirx.const(1.0 / math.sqrt(2.0), f32))
            )
        elif s.op == "sigmoid":
            y = tirx.sigmoid(y)
        elif s.op == "residual":
            y = y + residual
        else:
            raise ValueError(f"unknown epilogue step {s.op!r}")
    return y
