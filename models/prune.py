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

Across layers (global magnitude, one threshold for all the weights given):

- ``global_unstructured(ws, s)``: keep the ``round((1-s)*total)`` largest ``|w|`` of all.
- ``global_block(ws, r, c, s)``: zero the ``round(s*blocks)`` smallest-L1 ``r x c`` blocks of all.

torch (imported only when these are called):

- ``prune_module`` applies a method in place to the Linear/Conv2d weights of a module, per
  layer (``scope="layer"``) or across them (``scope="global"``).
- ``keep_mask`` registers ``torch.nn.utils.prune`` masks (``weight != 0``) so fine-tuning
  keeps pruned weights at zero; ``torch_masks`` reads the masks of ``torch.nn.utils.prune``
  and ``torch.ao.pruning``; ``apply_torch_prune`` returns a copy with the masks applied for good.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

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


def _check_global_shapes(ws: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not ws:
        raise UsageError("global pruning needs at least one weight")
    return [as_2d(w) for w in ws]


def global_unstructured(ws: Sequence[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Keep the ``round((1-sparsity)*total)`` largest ``|w|`` over all of ``ws`` together
    (ties by position, layers in the order given); each weight comes back in its shape."""
    _check_fraction("sparsity", sparsity)
    flat = np.concatenate([w.ravel() for w in _check_global_shapes(ws)])
    keep = int(round((1.0 - sparsity) * flat.size))
    mask = np.zeros(flat.size, dtype=bool)
    mask[_order_desc(np.abs(flat).astype(np.float64))[:keep]] = True
    return _split_masked(ws, mask)


def global_block(ws: Sequence[np.ndarray], r: int, c: int, sparsity: float) -> list[np.ndarray]:
    """Zero the ``round(sparsity * blocks)`` ``r x c`` blocks of smallest L1 norm over all of
    ``ws`` together; every weight must tile into ``r x c`` blocks."""
    _check_fraction("sparsity", sparsity)
    norms, tiles = [], []
    for w2 in _check_global_shapes(ws):
        rows, cols = w2.shape
        if r < 1 or c < 1 or rows % r or cols % c:
            raise UsageError(f"global_block: [{rows}, {cols}] does not tile into {r}x{c} blocks")
        t = w2.reshape(rows // r, r, cols // c, c)
        tiles.append(t)
        norms.append(np.abs(t).astype(np.float64).sum(axis=(1, 3)).ravel())
    allnorms = np.concatenate(norms)
    keep = allnorms.size - int(round(sparsity * allnorms.size))
    kept = np.zeros(allnorms.size, dtype=bool)
    kept[_order_desc(allnorms)[:keep]] = True
    out, start = [], 0
    for w, t, n in zip(ws, tiles, norms):
        k = kept[start:start + n.size].reshape(t.shape[0], 1, t.shape[2], 1)
        start += n.size
        out.append(np.where(k, t, 0).astype(t.dtype).reshape(np.shape(w)))
    return out


def _split_masked(ws: Sequence[np.ndarray], mask: np.ndarray) -> list[np.ndarray]:
    out, start = [], 0
    for w in ws:
        w = np.asarray(w)
        m = mask[start:start + w.size].reshape(w.shape)
        start += w.size
        out.append(np.where(m, w, 0).astype(w.dtype))
    return out


GLOBAL_METHODS: dict[str, Callable[..., list[np.ndarray]]] = {
    "unstructured": global_unstructured,
    "block": global_block,
}


def _selected(module, include):
    import torch

    match = include if callable(include) else (lambda name: fnmatch.fnmatchcase(name, include))
    return [(name, mod) for name, mod in module.named_modules()
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and match(name)]


def prune_module(
    module,
    method: str | Callable[..., np.ndarray],
    *args,
    include: str | Callable[[str], bool] = "*",
    scope: str = "layer",
    **kwargs,
) -> list[str]:
    """Prune, in place, the weight of every ``nn.Linear``/``nn.Conv2d`` whose qualified name
    matches ``include`` (an fnmatch glob such as ``"blocks.*.pw"``, or a predicate), with
    ``method`` and its arguments. Returns the names of the pruned modules, in module order.

    ``scope="layer"``: each weight on its own; ``method`` is a name in ``METHODS`` or a
    function of the numpy weight. ``scope="global"``: one magnitude threshold across all
    the selected weights; ``method`` is ``"unstructured"`` or ``"block"`` (``GLOBAL_METHODS``).
    A weight under a ``torch.nn.utils.prune`` mask (or a masking parametrization such as
    ``torch.ao.pruning``'s) is ranked as the module sees it and written to ``weight_orig``
    (``parametrizations.weight.original``).

    ``prune_module(model, "n_m", 2, 4, include="fc[12]")`` prunes fc1 and fc2 to 2:4;
    ``prune_module(model, "unstructured", 0.9, scope="global")`` prunes 90% of all weights."""
    import torch

    if scope not in ("layer", "global"):
        raise UsageError(f"scope must be 'layer' or 'global', got {scope!r}")
    table = METHODS if scope == "layer" else GLOBAL_METHODS
    fn = table.get(method) if isinstance(method, str) else (method if scope == "layer" else None)
    if fn is None:
        raise UsageError(f"unknown {scope} pruning method {method!r}; known: {', '.join(table)}")
    chosen = _selected(module, include)
    _refresh_pruned_weights(module)
    params = [_weight_param(mod) for _, mod in chosen]
    ws = [mod.weight.detach().cpu().numpy() for _, mod in chosen]  # as the module sees it
    if scope == "global":
        new_ws = fn(ws, *args, **kwargs) if ws else []
    else:
        new_ws = [fn(w, *args, **kwargs) for w in ws]
    with torch.no_grad():
        for p, new in zip(params, new_ws):
            p.copy_(torch.from_numpy(np.ascontiguousarray(new)))
    _refresh_pruned_weights(module)
    return [name for name, _ in chosen]


def _weight_param(mod):
    """The tensor that holds a module's weight: ``weight``, or ``weight_orig`` under a
    ``torch.nn.utils.prune`` mask, or ``parametrizations.weight.original``."""
    if hasattr(mod, "weight_orig"):
        return mod.weight_orig
    parametrizations = getattr(mod, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations["weight"].original
    return mod.weight


def _refresh_pruned_weights(module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` of masked modules after an edit of
    ``weight_orig`` (torch does it in the next forward; reading ``.weight`` before would
    see the old value)."""
    from torch.nn.utils import prune as torch_prune

    for m in module.modules():
        for h in m._forward_pre_hooks.values():
            if isinstance(h, torch_prune.BasePruningMethod):
                setattr(m, h._tensor_name, h.apply_mask(m))


def keep_mask(module, include: str | Callable[[str], bool] = "*") -> list[str]:
    """Register ``torch.nn.utils.prune.custom_from_mask(weight != 0)`` on every selected
    Linear/Conv2d, so that training (fine-tuning) keeps the pruned weights at zero.
    Returns the names of the masked modules. ``apply_torch_prune`` removes the masks."""
    from torch.nn.utils import prune as torch_prune

    chosen = _selected(module, include)
    for _, mod in chosen:
        torch_prune.custom_from_mask(mod, "weight", mod.weight.detach() != 0)
    return [name for name, _ in chosen]


def torch_masks(module) -> dict[str, np.ndarray]:
    """The masks torch holds for a module's weights, by parameter name (``fc1.weight``):
    ``torch.nn.utils.prune``'s ``<name>_mask`` buffers and ``torch.ao.pruning``'s
    ``FakeSparsity`` masks (``parametrizations.<name>[i].mask``), as bool arrays."""
    from torch.nn.utils import parametrize
    from torch.nn.utils import prune as torch_prune

    masks: dict[str, np.ndarray] = {}
    for prefix, m in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        for h in m._forward_pre_hooks.values():
            if isinstance(h, torch_prune.BasePruningMethod):
                mask = getattr(m, f"{h._tensor_name}_mask")
                masks[dot + h._tensor_name] = mask.detach().cpu().numpy() != 0
        if parametrize.is_parametrized(m):
            for name, plist in m.parametrizations.items():
                found = [p.mask for p in plist if hasattr(p, "mask")]
                if found:
                    combined = np.ones(tuple(found[0].shape), dtype=bool)
                    for mask in found:
                        combined &= mask.detach().cpu().numpy() != 0
                    masks[dot + name] = combined
    return masks


def apply_torch_prune(module):
    """A copy of ``module`` with every ``torch.nn.utils.prune`` mask made permanent
    (``weight = weight_orig * weight_mask``) and every ``torch.nn.utils.parametrize``
    parametrization removed with its value kept (``torch.ao.pruning`` before
    ``squash_mask``); ``module`` is not touched. ``sparsec.compile`` does the same itself."""
    from sparsec.frontend.torch_capture import materialize

    return materialize(module)
