"""Storage formats of a weight in each layout: pack to arrays, and unpack back (for tests).

Weights are ``[out, in]`` float32 (conv ``[O, I*kh*kw]``). Every array has at least one
element (kernels and runtimes dislike empty buffers); the true counts are in ``meta``.

| layout      | arrays (name: dtype, shape)                                              |
|-------------|--------------------------------------------------------------------------|
| dense       | w: f32 [O, K]                                                            |
| csr         | values: f32 [max(nnz,1)], indices: i16/i32 [max(nnz,1)], indptr: i32 [O+1]|
| chw-spmm    | same arrays as csr (the kernel vectorizes over pixels instead)            |
| bsr{r}x{c}  | values: f32 [max(nb,1), r, c], indices: i16/i32 [max(nb,1)] (block col),   |
|             | indptr: i32 [O/r+1]; needs O % r == 0 and K % c == 0                      |
| nm{n}:{m}   | values: f32 [O, K/m*n], indices: i8 [O, K/m*n] (position inside its group) |
|             | needs K % m == 0 and at most n nonzeros in every group of m               |
| bitmap      | values: f32 [max(nnz,1)] (row by row, column order), mask: u8 [O, K/8]    |
|             | (bit b of byte j: column 8j+b is stored), indptr: i32 [O+1]; K % 8 == 0   |
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsec.errors import LayoutError
from sparsec.layouts import Layout, parse_layout

INT16_MAX = np.iinfo(np.int16).max


@dataclass
class Packed:
    layout: str
    shape: tuple[int, int]  # [out, in] of the dense weight
    arrays: dict[str, np.ndarray]  # in the order kernels take them
    meta: dict[str, int] = field(default_factory=dict)  # nnz, nblocks, ...

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def index_dtype(max_index: int) -> np.dtype:
    """int16 where every index fits, int32 otherwise."""
    return np.dtype(np.int16) if max_index <= INT16_MAX else np.dtype(np.int32)


def _nonempty(a: np.ndarray, fill_shape: tuple[int, ...]) -> np.ndarray:
    return a if a.shape[0] > 0 else np.zeros(fill_shape, a.dtype)


def check_fits(w: np.ndarray, layout: Layout | str) -> str | None:
    """Why ``w`` cannot be stored in ``layout`` (a sentence), or None when it fits."""
    lay = parse_layout(layout) if isinstance(layout, str) else layout
    o, k = w.shape
    if lay.kind == "bsr":
        r, c = lay.params
        if o % r or k % c:
            return f"bsr{r}x{c} needs out ({o}) divisible by {r} and in ({k}) divisible by {c}"
    if lay.kind == "bitmap" and k % 8:
        return f"bitmap needs in ({k}) divisible by 8"
    if lay.kind == "nm":
        n, m = lay.params
        if k % m:
            return f"nm{n}:{m} needs in ({k}) divisible by {m}"
        worst = int((w.reshape(o, k // m, m) != 0).sum(axis=2).max(initial=0))
        if worst > n:
            return f"weight is not {n}:{m}: some group of {m} holds {worst} nonzeros"
    return None


def pack(w: np.ndarray, layout: Layout | str) -> Packed:
    """Pack a dense ``[out, in]`` weight into ``layout``; LayoutError when it does not fit."""
    lay = parse_layout(layout) if isinstance(layout, str) else layout
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"pack expects a 2-D [out, in] weight, got shape {w.shape}")
    why = check_fits(w, lay)
    if why:
        raise LayoutError(why)
    o, k = w.shape
    if lay.kind == "dense":
        return Packed(lay.name, (o, k), {"w": w}, {"nnz": int(np.count_nonzero(w))})
    if lay.kind in ("csr", "chw-spmm"):
        rows, cols = np.nonzero(w)
        indptr = np.zeros(o + 1, np.int32)
        np.cumsum(np.bincount(rows, minlength=o), out=indptr[1:])
        values = _nonempty(w[rows, cols].astype(np.float32), (1,))
        indices = _nonempty(cols.astype(index_dtype(k - 1)), (1,))
        return Packed(lay.name, (o, k), {"values": values, "indices": indices, "indptr": indptr},
                      {"nnz": int(rows.size)})
    if lay.kind == "bsr":
        r, c = lay.params
        blocks = w.reshape(o // r, r, k // c, c).transpose(0, 2, 1, 3)  # [br, bc, r, c]
        nz = np.any(blocks != 0, axis=(2, 3))
        brow, bcol = np.nonzero(nz)
        indptr = np.zeros(o // r + 1, np.int32)
        np.cumsum(np.bincount(brow, minlength=o // r), out=indptr[1:])
        values = _nonempty(np.ascontiguousarray(blocks[brow, bcol]), (1, r, c))
        indices = _nonempty(bcol.astype(index_dtype(k // c - 1)), (1,))
        return Packed(lay.name, (o, k), {"values": values, "indices": indices, "indptr": indptr},
                      {"nnz": int(np.count_nonzero(w)), "nblocks": int(brow.size)})
    if lay.kind == "nm":
        n, m = lay.params
        groups = w.reshape(o, k // m, m)
        # Stable order: the nonzero positions first (ascending), then zero positions as padding.
        order = np.argsort(groups == 0, axis=2, kind="stable")[:, :, :n]
        values = np.take_along_axis(groups, order, axis=2).reshape(o, k // m * n)
        return Packed(lay.name, (o, k),
                      {"values": np.ascontiguousarray(values, np.float32),
                       "indices": np.ascontiguousarray(order.reshape(o, k // m * n), np.int8)},
                      {"nnz": int(np.count_nonzero(w))})
    if lay.kind == "bitmap":
        nz = w != 0
        indptr = np.zeros(o + 1, np.int32)
        np.cumsum(nz.sum(axis=1), out=indptr[1:])
        mask = np.packbits(nz, axis=1, bitorder="little")
        values = _nonempty(w[nz].astype(np.float32), (1,))
        return Packed(lay.name, (o, k), {"values": values, "mask": mask, "indptr": indptr},
                      {"nnz": int(indptr[-1])})
    raise LayoutError(f"no storage format for layout {lay.name}")


def array_keys(layout: Layout | str) -> list[str]:
    """The names of the arrays ``pack`` makes for ``layout``, in order."""
    lay = parse_layout(layout) if isinstance(layout, str) else layout
    r, c = lay.params if lay.kind == "bsr" else (1, lay.params[1] if lay.kind == "nm" else 8)
    return list(pack(np.zeros((r, c), np.float32), lay).arrays)


def unpack(p: Packed) -> np.ndarray:
    """The dense ``[out, in]`` weight back from its packed arrays (tests and verification)."""
    lay = parse_layout(p.layout)
    o, k = p.shape
    a = p.arrays
    if lay.kind == "dense":
        return a["w"].copy()
    w = np.zeros((o, k), np.float32)
    if lay.kind in ("csr", "chw-spmm"):
        nnz = int(a["indptr"][-1])
        rows = np.repeat(np.arange(o), np.diff(a["indptr"]))
        w[rows, a["indices"][:nnz].astype(np.int64)] = a["values"][:nnz]
        return w
    if lay.kind == "bsr":
        r, c = lay.params
        nb = int(a["indptr"][-1])
        brow = np.repeat(np.arange(o // r), np.diff(a["indptr"]))
        view = w.reshape(o // r, r, k // c, c)
        for b in range(nb):
            view[brow[b], :, int(a["indices"][b]), :] = a["values"][b]
        return w
    if lay.kind == "nm":
        n, m = lay.params
        g = k // m
        idx = a["indices"].reshape(o, g, n).astype(np.int64)
        vals = a["values"].reshape(o, g, n)
        view = w.reshape(o, g, m)
        np.put_along_axis(view, idx, vals, axis=2)
        return w
    if lay.kind == "bitmap":
        nz = np.unpackbits(a["mask"], axis=1, count=k, bitorder="little").astype(bool)
        w[nz] = a["values"][:int(a["indptr"][-1])]
        return w
    raise LayoutError(f"no storage format for layout {lay.name}")
