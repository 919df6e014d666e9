"""The Plan: the contract between the passes and every backend.

One ``PlanEntry`` per weight-bearing op (MatMul, Gemm, Conv with a constant weight). It
holds the weight's pattern statistics, the chosen layout and why, kernel knobs, and the
epilogue fused into the kernel. Everything is plain data that round-trips through JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PLAN_VERSION = 1

# Epilogue steps a kernel applies to its accumulator, in order.
EPILOGUE_OPS = ("bias", "relu", "clip", "gelu", "sigmoid", "residual")


@dataclass
class SparsityStats:
    """Pattern statistics of one weight in ``[out, in]`` orientation (conv: ``[O, I*kh*kw]``)."""

    rows: int
    cols: int
    nnz: int
    density: float
    nm: tuple[int, int] | None = None  # tightest N:M along ``in`` (M in 2, 4, 8, 16)
    block: tuple[int, int] | None = None  # largest-area block with block density <= 1.1 x density
    block_density: float | None = None
    zero_rows: int = 0
    zero_cols: int = 0
    nonfinite: int = 0  # NaN/Inf values; such a weight stays dense

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparsityStats:
        d = dict(d)
        for key in ("nm", "block"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class EpilogueStep:
    """One fused step: ``bias`` (add per output channel), ``relu``, ``clip`` (min, max),
    ``gelu`` (erf form), ``sigmoid``, ``residual`` (add another tensor of the output shape)."""

    op: str
    min: float | None = None
    max: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpilogueStep:
        return cls(**d)


@dataclass
class ConvAttrs:
    kernel_shape: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    group: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvAttrs:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    @property
    def pointwise(self) -> bool:
        """A 1x1 conv with stride 1, no padding and group 1: a per-pixel Linear."""
        return (tuple(self.kernel_shape) == (1, 1) and tuple(self.strides) == (1, 1)
                and not any(self.pads) and self.group == 1)


@dataclass
class DepthwiseFusion:
    """A depthwise conv (and its activation) fused into the sparse 1x1 conv before it, so
    the expanded tensor between them never goes to memory, or into the one after it
    (``before``), so its output does not (``passes/fuse_depthwise.py``)."""

    node: str  # the depthwise Conv node
    weight: str  # its [C, 1, kh, kw] initializer
    conv: ConvAttrs  # group == C
    epilogue: list[EpilogueStep] = field(default_factory=list)  # bias (the Conv's B), relu/clip
    fused_nodes: list[str] = field(default_factory=list)  # the activation nodes absorbed
    before: bool = False  # it computes the 1x1 conv's input instead (no expand conv before it)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthwiseFusion:
        d = dict(d)
        d["conv"] = ConvAttrs.from_dict(d["conv"])
        d["epilogue"] = [EpilogueStep.from_dict(e) for e in d.get("epilogue", [])]
        return cls(**d)


@dataclass
class PlanEntry:
    node: str  # ONNX node name of the weight-bearing op (before fusion)
    op: str  # MatMul | Gemm | Conv
    weight: str  # initializer name (keeps PyTorch parameter names when captured from torch)
    weight_shape: tuple[int, ...]  # as stored in the model
    stats: SparsityStats
    layout: str = "dense"
    reason: str = ""
    forced: bool = False
    epilogue: list[EpilogueStep] = field(default_factory=list)
    fused_nodes: list[str] = field(default_factory=list)  # epilogue nodes absorbed
    kernel: dict[str, Any] = field(default_factory=dict)  # knobs for the kernel generator
    conv: ConvAttrs | None = None
    removed_rows: int = 0  # all-zero output channels made physical by shrink_zero_channels
    # The weight as the user's model has it, before a rewrite (shrinking) changed it;
    # reports show these, the cost model and kernels use ``stats``/``weight_shape``.
    source_stats: SparsityStats | None = None
    source_shape: tuple[int, ...] | None = None
    estimated_speedup: float | None = None  # cost model: dense time / chosen layout time
    depthwise: DepthwiseFusion | None = None  # a depthwise conv fused after this 1x1 conv
    fused_into: str | None = None  # this 1x1 conv (or linear) is computed by that entry's kernel
    pool_nodes: list[str] = field(default_factory=list)  # a mean pool (and reshape) after this
    # conv, fused with the linear after them into its kernel (``passes/fuse_head.py``)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanEntry:
        d = dict(d)
        d["weight_shape"] = tuple(d["weight_shape"])
        d["stats"] = SparsityStats.from_dict(d["stats"])
        if d.get("source_stats") is not None:
            d["source_stats"] = SparsityStats.from_dict(d["source_stats"])
        if d.get("source_shape") is not None:
            d["source_shape"] = tuple(d["source_shape"])
        d["epilogue"] = [EpilogueStep.from_dict(e) for e in d.get("epilogue", [])]
        if d.get("conv") is not None:
            d["conv"] = ConvAttrs.from_dict(d["conv"])
        if d.get("depthwise") is not None:
            d["depthwise"] = DepthwiseFusion.from_dict(d["depthwise"])
        return cls(**d)

    def report_row(self) -> dict[str, Any]:
        """The record of ``inspect --json``'s ``layers`` (exact key set, see README)."""
        s = self.source_stats or self.stats
        reason = self.reason
        if self.removed_rows:
            reason += f"; {self.removed_rows} all-zero output channels removed"
        if self.depthwise is not None:
            where = " before it" if self.depthwise.before else ""
            reason += f"; fused with depthwise {self.depthwise.node}{where}"
        if self.pool_nodes:
            reason += f"; fused with pool {self.pool_nodes[0]} and the linear after it"
        if self.fused_into is not None:
            reason += f"; computed inside {self.fused_into}'s kernel"
        return {
            "name": self.node,
            "op": self.op,
            "weight": self.weight,
            # [out, in] for MatMul/Gemm whatever the stored orientation (DESIGN.md); a conv
            # keeps its [O, C, kh, kw] (already output-first)
            "shape": (list(self.source_shape or self.weight_shape) if self.op == "Conv"
                      else [s.rows, s.cols]),
            "density": round(s.density, 6),
            "nm": list(s.nm) if s.nm else None,
            "block": list(s.block) if s.block else None,
            "block_density": None if s.block_density is None else round(s.block_density, 6),
            "zero_rows": s.zero_rows,
            "zero_cols": s.zero_cols,
            "layout": self.layout,
            "reason": reason,
        }


@dataclass
class Plan:
    target: str
    entries: list[PlanEntry] = field(default_factory=list)
    version: int = PLAN_VERSION

    def by_node(self, node: str) -> PlanEntry:
        for e in self.entries:
            if e.node == node:
                return e
        raise KeyError(node)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            target=d["target"],
            entries=[PlanEntry.from_dict(e) for e in d["entries"]],
            version=d.get("version", PLAN_VERSION),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))
