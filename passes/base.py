"""What every sparsec pass shares: the in-place pass base, its counters, and where it is.

All sparsec passes work **in place** (``onnx_ir.passes.InPlacePass``): ``pass_(model)``
mutates ``model`` and returns ``PassResult(model, modified)``. The pipeline clones the
user's model once before the first pass, so the caller's model is never touched.

The Plan is carried on the pass object: passes that read or write it take the shared
``Plan`` in their constructor (``self.plan``) and mutate its entries in place.

``self.counts`` counts what a pass did (e.g. ``{"folded": 2}``); tests assert on it.
``with self.at(node, weight):`` records which op a pass is working on, so that the
pipeline can name the pass, the node and the weight when something fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import onnx_ir as ir


class SparsecPass(ir.passes.InPlacePass):
    """An in-place onnx_ir pass with counters and a "where am I" marker for errors."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.where: tuple[str | None, str | None] = (None, None)  # (node, weight)

    @contextmanager
    def at(self, node: str | None, weight: str | None = None) -> Iterator[None]:
        """Mark the op being worked on. On an exception the marker stays set, so the
        pipeline can report it; on success it is cleared."""
        self.where = (node, weight)
        yield
        self.where = (None, None)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.counts.clear()
        modified = self.apply(model)
        return ir.passes.PassResult(model, modified=bool(modified))

    def apply(self, model: ir.Model) -> bool:
        """Rewrite ``model`` in place; return whether anything changed."""
        raise NotImplementedError
