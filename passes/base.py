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


class FusionPass(SparsecPass):
    """A pass that fuses nodes into a lowered sparse node and records it in the Plan; off
    when not ``enabled`` (its CompileOptions switch)."""

    def __init__(self, plan, enabled: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.enabled = enabled

    def apply(self, model: ir.Model) -> bool:
        if not self.enabled:
            return False
        return self.fuse(model.graph, {e.node: e for e in self.plan.entries})

    def fuse(self, graph: ir.Graph, entries: dict) -> bool:
        """Fuse what matches in ``graph`` (``entries``: the Plan's, by node)."""
        raise NotImplementedError


def carried_attrs(node: ir.Node, prefix: str) -> list[ir.Attr]:
    """A lowered sparse node's entry, layout, out_features and epilogue (with its clip
    bounds) as attributes of the node that absorbs it, named ``<prefix><name>``."""
    a = node.attributes
    attrs = [ir.AttrString(f"{prefix}entry", a.get_string("entry")),
             ir.AttrString(f"{prefix}layout", a.get_string("layout")),
             ir.AttrInt64(f"{prefix}out_features", a.get_int("out_features")),
             ir.AttrStrings(f"{prefix}epilogue", list(a.get_strings("epilogue", ())))]
    for key in ("clip_min", "clip_max"):
        if key in a:
            attrs.append(ir.AttrFloat32(f"{prefix}{key}", a.get_float(key)))
    return attrs
