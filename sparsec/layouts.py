"""Layout names, used the same way everywhere: Plan, reports, CLI, kernels.

| name          | stores                                                         |
|---------------|----------------------------------------------------------------|
| ``dense``     | the weight as is, ``[out, in]``                                |
| ``csr``       | values, column indices (int16 where they fit), row pointers    |
| ``bsr{r}x{c}``| nonzero r×c blocks, their block-column indices, block-row ptrs  |
| ``nm{n}:{m}`` | n values of every m along ``in``, plus their positions (int8)  |
| ``chw-spmm``  | 1×1 conv in NCHW: CSR over output channels, vectorized over pixels |
| ``bitmap``    | the nonzero values row by row, a bit per weight saying which are kept, |
|               | row pointers (moderate sparsity, few rows: half the bytes of dense) |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparsec.errors import UsageError

_BSR = re.compile(r"^bsr(\d+)x(\d+)$")
_NM = re.compile(r"^nm(\d+):(\d+)$")


@dataclass(frozen=True)
class Layout:
    """A parsed layout name. ``params`` is (r, c) for bsr and (n, m) for nm."""

    kind: str  # dense | csr | bsr | nm | chw-spmm | bitmap
    params: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        if self.kind == "bsr":
            return f"bsr{self.params[0]}x{self.params[1]}"
        if self.kind == "nm":
            return f"nm{self.params[0]}:{self.params[1]}"
        return self.kind

    @property
    def is_sparse(self) -> bool:
        return self.kind != "dense"

    def __str__(self) -> str:
        return self.name


def parse_layout(name: str) -> Layout:
    """``"bsr4x4" -> Layout("bsr", (4, 4))``; an unknown name is a UsageError."""
    text = name.strip().lower()
    if text in ("dense", "csr", "chw-spmm", "bitmap"):
        return Layout(text)
    if m := _BSR.match(text):
        r, c = int(m.group(1)), int(m.group(2))
        if r < 1 or c < 1 or r * c > 1024:
            raise UsageError(f"layout {name!r}: block sides must be >= 1 with r*c <= 1024")
        return Layout("bsr", (r, c))
    if m := _NM.match(text):
        n, mm = int(m.group(1)), int(m.group(2))
        if not (1 <= n < mm <= 64):
            raise UsageError(f"layout {name!r}: need 1 <= n < m <= 64")
        return Layout("nm", (n, mm))
    raise UsageError(
        f"unknown layout {name!r}; known layouts: dense, csr, bsr<r>x<c> (e.g. bsr4x4), "
        "nm<n>:<m> (e.g. nm2:4), chw-spmm, bitmap"
    )


LAYOUT_KINDS = ("dense", "csr", "bsr", "nm", "chw-spmm", "bitmap")
