"""What the passes need to know about a target, as plain data (no toolchain imports).

Each module in ``targets/`` builds one ``TargetSpec``; the passes read it (layout choice,
kernel knobs) and never import the target module itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CostConstants:
    """Constants of the layout cost model (``passes/choose_layouts.py`` documents it).

    Times are in seconds. ``*_gflops`` are effective rates on the FLOPs a kernel executes
    (stored values, padding included); ``overhead_s`` is a fixed cost per kernel call.
    """

    dense_gflops: float = 60.0
    csr_gflops: float = 8.0  # per stored nonzero, batch 1 (gathers dominate)
    csr_batch_gflops: float = 20.0  # per stored nonzero when batch >= vector width
    bsr_gflops: float = 30.0  # per stored block element
    nm_gflops: float = 25.0  # per stored value
    chw_spmm_gflops: float = 20.0  # 1x1 conv, vectorized over pixels
    overhead_s: float = 2e-6
    min_speedup: float = 1.15  # a sparse layout must beat dense by this factor to be chosen
    min_weight_elems: int = 4096  # smaller layers stay dense


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    layouts: tuple[str, ...] = ("dense", "csr", "bsr", "nm", "chw-spmm")  # layout kinds it runs
    vector_lanes: int = 8  # fp32 lanes of the widest SIMD register
    cost: CostConstants = field(default_factory=CostConstants)

    def supports(self, layout_kind: str) -> bool:
        return layout_kind in self.layouts
