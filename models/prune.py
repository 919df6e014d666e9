"""Magnitude pruning of one weight, numpy first.

Every function takes a weight in ``[out, in]`` orientation (a conv weight ``[O, C, kh, kw]``
counts as ``[O, C*kh*kw]`` and comes back in its own shape), returns a new array with
the same shape and dtype, and never touches its argument. Ties in magnitude are broken
by position (earlier wins), so the result depends only on the values.

- ``unstructured(w, s)``: keep the ``round((1-s)*size)`` largest ``|w|``.
- ``n_m(w, n, m)``: in every group of ``m`` consecutive weights along ``in``, keep the
  ``n`` largest ``|w|``.
- ``block(w, r, c, s)``: tile ``w`` into ``r x c`` blocks, zero the ``round(s*blocks)``
  blocks with the smallest L1 norm.
- ``zero_rows(w, f)``: zero the ``round(f*out)`` output rows (channels) of smallest L1 norm.

``prune_module`` applies one of these in place to the Linear/Conv2d weights of a torch
module (torch is imported only when it is called).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np

from sparsec.errors import UsageError


def as_2d(w: np.ndarray) -> np.ndarray:
    """``[O, in]`` view of a weight: 2-D as is, ``[O, C, kh, kw] -> [O, C*kh*kw]``."""
    w = np.asarray(w)
    if w.ndim < 2:
        raise UsageError(f"weight of shape {list(w.shape)}: need [out, in] or [O, C, kh, kw]")
    return w.reshape(w.shape[0], -1)


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{what} must be in [0, 1], got {value}")


def _order_desc(scores: np.ndarray) -> np.ndarray:
    """Indices sorting a 1-D array by decreasing score, ties by increasing index."""
    return np.argsort(-scores, kind="stable")


def unstructured(w: np.ndarray, sparsity: float, *, min_per_row: int = 0) -> np.ndarray:
    """Zero all but the ``round((1-sparsity)*size)`` largest ``|w|``.

    ``min_per_row`` first reserves that many of the largest ``|w|`` of every output row, so
    no row becomes all-zero by chance (the total kept count stays the same)."""
    _check_fraction("sparsity", sparsity)
    w2 = as_2d(w)
    rows, cols = w2.shape
    keep = int(round((1.0 - sparsity) * w2.size))
    if min_per_row < 0 or min_per_row > cols or min_per_row * rows > keep:
        raise UsageError(
            f"min_per_row={min_per_row} does not fit {keep} kept weights in {rows} rows"
        )
    mag = np.abs(w2).astype(np.float64)
    mask = np.zeros(w2.shape, dtype=bool)
    if min_per_row:
        top = np.argsort(-mag, axis=1, kind="stable")[:, :min_per_row]
        np.put_along_axis(mask, top, True, axis=1)
    rest = keep - int(mask.sum())
    free = np.flatnonzero(~mask.ravel())
    chosen = free[_order_desc(mag.ravel()[free])[:rest]]
    mask.ravel()[chosen] = True
    return np.where(mask, w2, 0).astype(w2.dtype).reshape(np.shape(w))


def n_m(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` largest ``|w|`` of every ``m`` consecutive weights along ``in``."""
    if not 1 <= n <= m:
        raise UsageError(f"n_m: need 1 <= n <= m, got n={n} m={m}")
    w2 = as_2d(w)
    rows, cols = w2.shape
    if cols % m:
        raise UsageError(f"n_m: in ({cols}) is not divisible by m={m}")
    groups = w2.reshape(rows, cols // m, m)
    top = np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=2)
    return np.where(mask, groups, 0).astype(w2.dtype).reshape(np.shape(w))


def block(w: np.ndarray, r: int, c: int, sparsity: float) -> np.ndarray:
    """Zero the ``round(sparsity * blocks)`` ``r x c`` blocks with the smallest L1 norm."""
    _check_fraction("sparsity", sparsity)
    w2 = as_2d(w)
    rows, cols = w2.shape
    if r < 1 or c < 1 or rows % r or cols % c:
        raise UsageError(f"block: [{rows}, {cols}] does not tile into {r}x{c} blocks")
    tiles = w2.reshape(rows // r, r, cols // c, c)
    norms = np.abs(tiles).astype(np.float64).sum(axis=(1, 3)).ravel()
    keep = norms.size - int(round(sparsity * norms.size))
    kept = np.zeros(norms.size, dtype=bool)
    kept[_order_desc(norms)[:keep]] = True
    mask = kept.reshape(rows // r, 1, cols // c, 1)
    return np.where(mask, tiles, 0).astype(w2.dtype).reshape(np.shape(w))


def zero_rows(w: np.ndarray, fraction: float) -> np.ndarray:
    """Zero the ``round(fraction * out)`` output rows (whole channels) of smallest L1 norm."""
    _check_fraction("fraction", fraction)
    w2 = as_2d(w)
    norms = np.abs(w2).astype(np.float64).sum(axis=1)
    count = int(round(fraction * w2.shape[0]))
    drop = np.argsort(norms, kind="stable")[:count]
    out = w2.copy()
    out[drop] = 0
    return out.reshape(np.shape(w))


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "unstructured": unstructured,
    "n_m": n_m,
    "block": block,
    "zero_rows": zero_rows,
}


def prune_module(
    module,
    method: str | Callable[..., np.ndarray],
    *args,
    include: str | Callable[[str], bool] = "*",
    **kwargs,
) -> list[str]:
    """Prune, in place, the weight of every ``nn.Linear``/``nn.Conv2d`` whose qualified name
    matches ``include`` (an fnmatch glob such as ``"blocks.*.pw"``, or a predicate), with
    ``method`` (a name in ``METHODS`` or a function of the numpy weight) and its arguments.
    Returns the names of the pruned modules, in module order.

    ``prune_module(model, "n_m", 2, 4, include="fc[12]")`` prunes fc1 and fc2 to 2:4."""
    import torch

    fn = METHODS.get(method) if isinstance(method, str) else method
    if fn is None:
        raise UsageError(f"unknown pruning method {method!r}; known: {', '.join(METHODS)}")
    match = include if callable(include) else (lambda name: fnmatch.fnmatchcase(name, include))
    pruned = []
    for name, mod in module.named_modules():
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or not match(name):
            continue
        with torch.no_grad():
            w = mod.weight.detach().cpu().numpy()
            new = fn(w, *args, **kwargs)
            mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(new)))
        pruned.append(name)
    return pruned
