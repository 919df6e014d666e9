"""Measure the sparsity pattern of a weight, to check what an example planted.

All measures take a weight in ``[out, in]`` orientation (conv ``[O, C*kh*kw]``, see
``prune.as_2d``). ``oriented_weights`` finds the weight-bearing initializers of an ONNX
model and turns each into that orientation: ``MatMul`` stores ``[in, out]`` (transposed),
``Gemm`` with ``transB=1`` stores ``[out, in]``, ``Conv`` stores ``[O, C, kh, kw]``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from sparsec.models.prune import as_2d

__all__ = [
    "density",
    "nm_holds",
    "block_density",
    "zero_row_count",
    "oriented_weights",
    "planted_problems",
]


def density(w: np.ndarray) -> float:
    """Fraction of nonzero entries."""
    return float(np.count_nonzero(w)) / max(np.size(w), 1)


def nm_holds(w: np.ndarray, n: int, m: int) -> bool:
    """Every group of ``m`` consecutive weights along ``in`` has at most ``n`` nonzeros."""
    w2 = as_2d(w)
    if w2.shape[1] % m:
        return False
    groups = w2.reshape(w2.shape[0], -1, m)
    return bool((np.count_nonzero(groups, axis=2) <= n).all())


def block_density(w: np.ndarray, r: int, c: int) -> float:
    """Fraction of ``r x c`` blocks with any nonzero; the shape must tile exactly."""
    w2 = as_2d(w)
    rows, cols = w2.shape
    if rows % r or cols % c:
        raise ValueError(f"[{rows}, {cols}] does not tile into {r}x{c} blocks")
    tiles = w2.reshape(rows // r, r, cols // c, c)
    return float(np.any(tiles != 0, axis=(1, 3)).mean())


def zero_row_count(w: np.ndarray) -> int:
    """Number of output rows (channels) that are entirely zero."""
    return int((~np.any(as_2d(w) != 0, axis=1)).sum())


def oriented_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``{initializer name: [out, in] array}`` for the weight input of every MatMul, Gemm
    and Conv whose weight is an initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in inits:
            continue
        w = numpy_helper.to_array(inits[name])
        if node.op_type == "MatMul":
            w = w.T
        elif node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            w = w if attrs.get("transB", 0) else w.T
        out[name] = as_2d(w)
    return out


def planted_problems(
    model: onnx.ModelProto, planted: dict[str, dict], *, tol: float = 0.01
) -> list[str]:
    """One sentence per planted pattern that does not hold in ``model`` (empty: all hold).

    Checks density within ``tol``, an exact N:M, an exact count of zero rows, and for a
    planted ``[r, c]`` block that the block density is within ``tol`` of the density."""
    weights = oriented_weights(model)
    problems = []
    for name, want in planted.items():
        if name not in weights:
            problems.append(f"{name}: not the weight of a MatMul/Gemm/Conv")
            continue
        w = weights[name]
        d = density(w)
        if abs(d - want["density"]) > tol:
            problems.append(f"{name}: density {d:.4f}, planted {want['density']}")
        if want["nm"] is not None and not nm_holds(w, *want["nm"]):
            problems.append(f"{name}: not {want['nm'][0]}:{want['nm'][1]}")
        if want["block"] is not None:
            bd = block_density(w, *want["block"])
            if abs(bd - d) > tol:
                problems.append(f"{name}: block density {bd:.4f} vs density {d:.4f}")
        zr = zero_row_count(w)
        if zr != want["zero_rows"]:
            problems.append(f"{name}: {zr} zero rows, planted {want['zero_rows']}")
    return problems
