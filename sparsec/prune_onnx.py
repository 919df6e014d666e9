"""``sparsec prune``: magnitude-prune the constant weights of a dense ONNX file.

Every MatMul/Gemm/Conv with a constant float32 weight (``passes.weights.match_weight_op``;
grouped/depthwise convs are left alone) is pruned in ``[out, in]`` orientation with a
``Pattern`` and stored back in its own orientation under its own name, as a dense tensor
with zeros: ``W -> W * mask(W)`` (a shared weight changes for all its users). Nothing
else in the model changes; symbolic dims stay symbolic.

Patterns (``parse_pattern``): ``N:M`` (``2:4``), ``unstructured:S`` (``unstructured:0.9``),
``block:RxC:S`` (``block:4x4:0.8``), ``rows:F`` (whole output channels). With
``scope="global"`` one magnitude threshold holds across all selected layers
(unstructured and block only). A weight shared by several ops is pruned once.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsec.errors import ModelError, UsageError

PATTERN_HELP = "N:M (2:4), unstructured:S (0.9), block:RxC:S (4x4:0.8) or rows:F (0.25)"


@dataclass(frozen=True)
class Pattern:
    kind: str  # "nm" | "unstructured" | "block" | "rows"
    n: int = 0
    m: int = 0
    r: int = 0
    c: int = 0
    fraction: float = 0.0  # sparsity (unstructured, block) or fraction of rows

    def __str__(self) -> str:
        return {"nm": f"{self.n}:{self.m}", "unstructured": f"unstructured:{self.fraction:g}",
                "block": f"block:{self.r}x{self.c}:{self.fraction:g}",
                "rows": f"rows:{self.fraction:g}"}[self.kind]


def _fraction(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--pattern {spec}: '{text}' is not a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--pattern {spec}: {value:g} is not in [0, 1]")
    return value


def parse_pattern(spec: str) -> Pattern:
    """``2:4`` / ``nm:2:4``, ``unstructured:0.9``, ``block:4x4:0.8``, ``rows:0.25``."""
    text = spec.strip().lower()
    if m := re.fullmatch(r"(?:nm:)?(\d+):(\d+)", text):
        n, mm = int(m[1]), int(m[2])
        if not 1 <= n <= mm:
            raise UsageError(f"--pattern {spec}: N:M needs 1 <= N <= M")
        return Pattern("nm", n=n, m=mm)
    kind, _, rest = text.partition(":")
    if kind == "unstructured" and rest:
        return Pattern("unstructured", fraction=_fraction(rest, spec))
    if kind == "rows" and rest:
        return Pattern("rows", fraction=_fraction(rest, spec))
    if kind == "block" and (m := re.fullmatch(r"(\d+)x(\d+):(.+)", rest)):
        r, c = int(m[1]), int(m[2])
        if r < 1 or c < 1:
            raise UsageError(f"--pattern {spec}: block sides must be >= 1")
        return Pattern("block", r=r, c=c, fraction=_fraction(m[3], spec))
    raise UsageError(f"unknown --pattern '{spec}'; use {PATTERN_HELP}")


def _prune_one(w2d: np.ndarray, p: Pattern) -> np.ndarray:
    from sparsec.models import prune

    if p.kind == "nm":
        return prune.n_m(w2d, p.n, p.m)
    if p.kind == "unstructured":
        return prune.unstructured(w2d, p.fraction)
    if p.kind == "block":
        return prune.block(w2d, p.r, p.c, p.fraction)
    return prune.zero_rows(w2d, p.fraction)


def _fits(shape: tuple[int, int], p: Pattern) -> str | None:
    """Why a ``[out, in]`` weight cannot take the pattern, or None."""
    rows, cols = shape
    if p.kind == "nm" and cols % p.m:
        return f"in ({cols}) is not divisible by M={p.m}"
    if p.kind == "block" and (rows % p.r or cols % p.c):
        return f"[{rows}, {cols}] does not tile into {p.r}x{p.c} blocks"
    return None


@dataclass
class LayerResult:
    node: str
    op: str
    weight: str
    shape: tuple[int, int]  # [out, in]
    density_before: float
    density_after: float
    skipped: str | None = None  # why the layer was left as it is

    def line(self) -> str:
        shape = f"{self.shape[0]}x{self.shape[1]}"
        head = f"{self.node:24s} {self.op:6s} {self.weight:28s} {shape:>11s}"
        if self.skipped:
            return f"{head}  skipped: {self.skipped}"
        return f"{head}  density {self.density_before:.3f} -> {self.density_after:.3f}"


def _mask_to_stored(op, mask2d: np.ndarray, stored_shape: tuple[int, ...]) -> np.ndarray:
    """An ``[out, in]`` mask in the weight's own orientation (inverse of ``WeightOp.w2d``)."""
    if op.op == "MatMul" or (op.op == "Gemm" and not op.node.attributes.get_int("transB", 0)):
        return mask2d.T
    return mask2d.reshape(stored_shape)


def prune_model(model, pattern: Pattern, *, layers: list[str] | None = None,
                scope: str = "layer") -> list[LayerResult]:
    """Prune ``model`` (an ``onnx_ir.Model``) in place; one result per selected weight op.

    ``layers``: fnmatch globs matched against node and weight names (default: all)."""
    import onnx_ir as ir

    from sparsec.models import prune
    from sparsec.passes import weights as W

    if scope == "global" and pattern.kind not in ("unstructured", "block"):
        raise UsageError(f"--global needs an unstructured or block pattern, not {pattern}")
    W.name_nodes(model.graph)
    ops = W.weight_ops(model.graph)
    if not ops:
        raise ModelError("the model has no MatMul/Gemm/Conv with a constant float32 weight")
    if layers:
        def chosen(o) -> bool:
            names = (o.node.name, o.weight.name or "")
            return any(fnmatch.fnmatchcase(n, g) for n in names for g in layers)

        ops = [o for o in ops if chosen(o)]
        if not ops:
            raise UsageError(f"--layers {' '.join(layers)} matches no MatMul/Gemm/Conv weight")
    results: list[LayerResult] = []
    todo = []  # (op, w2d, result) of the layers to prune
    seen: dict[int, str] = {}
    for op in ops:
        w2d = op.w2d()
        res = LayerResult(op.node.name, op.op, op.weight.name or "?", w2d.shape,
                          float(np.count_nonzero(w2d)) / w2d.size, 0.0)
        res.density_after = res.density_before
        if id(op.weight) in seen:
            res.skipped = f"weight shared with {seen[id(op.weight)]}, pruned there"
        else:
            seen[id(op.weight)] = op.node.name
            res.skipped = _fits(w2d.shape, pattern)
        if res.skipped is None:
            todo.append((op, w2d, res))
        results.append(res)
    if not todo:
        raise UsageError(f"no layer can take --pattern {pattern}: "
                         + "; ".join(f"{r.node}: {r.skipped}" for r in results))
    if scope == "global":
        fn = prune.global_unstructured if pattern.kind == "unstructured" else prune.global_block
        args = (pattern.fraction,) if pattern.kind == "unstructured" else (
            pattern.r, pattern.c, pattern.fraction)
        pruned = fn([w for _, w, _ in todo], *args)
    else:
        pruned = [_prune_one(w, pattern) for _, w, _ in todo]
    for (op, w2d, res), new in zip(todo, pruned):
        stored = op.weight.const_value.numpy()
        mask = _mask_to_stored(op, new != 0, stored.shape)
        kept = np.where(mask, stored, np.zeros((), stored.dtype))
        op.weight.const_value = ir.tensor(np.ascontiguousarray(kept), name=op.weight.name)
        res.density_after = float(np.count_nonzero(new)) / new.size
    return results


def _atomic_save(proto, out: Path) -> None:
    """Write next to ``out`` and rename into place: nothing half-written on failure."""
    data = proto.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prune_file(src: str | Path, out: str | Path, pattern: str | Pattern, *,
               layers: list[str] | None = None, scope: str = "layer") -> list[LayerResult]:
    """Read ``src``, prune it (``prune_model``), write ``out`` atomically; the results."""
    import onnx
    import onnx_ir as ir

    from sparsec.frontend.onnx_loader import read_onnx

    p = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"output '{out}' is a directory; give a file name such as pruned.onnx")
    proto, name = read_onnx(src if isinstance(src, onnx.ModelProto) else Path(src))
    try:
        model = ir.from_proto(proto)
    except Exception as exc:  # noqa: BLE001 - onnx_ir raises many kinds on malformed graphs
        first = f"{exc}".strip().splitlines()
        raise ModelError(f"'{name}' cannot be read as an ONNX graph: "
                         f"{first[0] if first else type(exc).__name__}") from None
    results = prune_model(model, p, layers=layers, scope=scope)
    _atomic_save(ir.to_proto(model), out)
    return results
