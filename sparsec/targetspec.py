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
    (stored values, padding included); ``bandwidth_gbs`` bounds the time to stream the stored
    weight (a roofline: the larger of the two wins); ``overhead_s`` is a fixed cost per call.
    """

    # Rates measured on a 2-core AVX-512 Xeon with benchmarks/kernel_smoke.py (issue 3);
    # targets/calibration/ holds the constants fitted per instruction set (issue 4).
    # "batch" rates apply from 2 rows up to the vector lanes, "wide" rates beyond.
    dense_gflops: float = 150.0
    # Dense convolutions (kernels/conv.py: im2col-free, a k of C*kh*kw): measured 250-300
    # GFLOP/s on 1x1 convs at 28x28-56x56 here, against ~100 for chw-spmm; the linear
    # calibration (issue 4) does not cover convs.
    conv_dense_gflops: float = 250.0
    csr_gflops: float = 10.0  # per stored nonzero, batch 1 (gathers dominate)
    csr_batch_gflops: float = 60.0
    bsr_gflops: float = 14.0  # per stored block element
    bsr_batch_gflops: float = 65.0
    nm_gflops: float = 7.5  # per stored value
    nm_batch_gflops: float = 60.0
    # Rows above one vector of lanes (the rows path runs 2-vector blocks, full ones): the
    # kernels' balance shifts there (measured: bsr wins at 8 rows, csr at 32 and 128).
    csr_wide_gflops: float = 60.0
    bsr_wide_gflops: float = 65.0
    nm_wide_gflops: float = 60.0
    # csr with column panels in 4-vector row blocks (``csr_panel_columns``, rows from 4 to 8
    # vectors): the panel's transposed X is half the size of the 8-vector blocks' (32 KiB on
    # AVX2), and the loop runs faster per FLOP than with them (measured on AVX2: 4096x4096
    # at density 0.5, 32 rows, 74 GFLOP/s against 61 at 128 rows). None: csr_wide_gflops.
    csr_panel4_gflops: float | None = None
    # csr with column panels narrowed below PANEL_COLUMNS (AVX-512: a panel's transposed X
    # sized to L1, ``csr_panel_columns``): 1.3-1.7x the rate of 256-column panels at density
    # 0.2-0.5 (measured on Zen 4). None: the rate of the panels' block width.
    csr_narrow_gflops: float | None = None
    chw_spmm_gflops: float = 100.0  # 1x1 conv, vectorized over pixels
    # bitmap (``kernels/linear_bitmap``): rates on the dense-shaped FLOPs (2*O*K*rows: it
    # walks every group of columns whatever the density), one row and 2 up to
    # ``BITMAP_MAX_ROWS``. None until calibrated: the layout is then measured by the
    # calibration runs but never picked (its AVX2 form, a table-driven permute, is slower
    # than dense where AVX-512's vexpandps is 1.4-2x faster at density 0.35-0.5).
    bitmap_gflops: float | None = None
    bitmap_batch_gflops: float | None = None
    bandwidth_gbs: float = 36.0  # streaming the stored weight (dense 4096² GEMV: 1.84 ms)
    # A model whose weights fit the last-level cache (``llc_bytes``, the host's; 0: unknown)
    # reads them from there on every call after the first, at ``llc_bandwidth_gbs`` (0: no
    # such term, every weight priced at ``bandwidth_gbs``). See choose_layouts.
    llc_bandwidth_gbs: float = 0.0
    llc_bytes: int = 0
    overhead_s: float = 2e-6
    min_speedup: float = 1.15  # a sparse layout must beat dense by this factor to be chosen
    # Layers doing fewer multiply-adds a call (weights x kernel rows) stay dense: call
    # overhead dominates them. Counted in work, not weights: a 16->96 1x1 conv has 1536
    # weights but 19M multiply-adds a 112x112 image.
    min_macs: int = 4096


ROWS_BLOCK_BYTES = 128 << 10  # see rows_block_vectors


def rows_block_vectors(k: int, lanes: int) -> int:
    """Vectors of X's rows in one block of the csr / n:m rows path (``linear_csr``): 4 when
    the block's transposed X (4 * lanes rows of k floats) fits ``ROWS_BLOCK_BYTES``, a
    quarter of a 512 KiB L2, else 2. Each nonzero's column and value loads then feed 4
    vectors of FMAs instead of 2. Measured on AVX2 (Zen 3), kernels A/B in one process, 32-128
    rows at 5-20% density: k = 768 1.08-1.25x, k = 1024 1.01x, k = 3072 0.92x (its 384 KiB
    block no longer stays in L2 next to the weight's stream). Used by the kernel and by the
    cost model's count of passes over the weight."""
    return 4 if 4 * lanes * k * 4 <= ROWS_BLOCK_BYTES else 2


PANEL_COLUMNS = 256  # see csr_panel_columns
BITMAP_MAX_ROWS = 4  # the bitmap layout is a candidate up to this many kernel rows ...
BITMAP_KERNEL_ROWS = 16  # ... and runs (forced) up to this many: its accumulators are registers


PANEL_L1_BYTES = 32 << 10  # AVX-512: a panel's transposed X sized to this (L1d) ...
PANEL_SEGMENT_NNZ = 8  # ... unless a row's share of it then holds fewer nonzeros


def csr_panel_columns(k: int, rows: int, lanes: int, density: float = 1.0) -> int:
    """Columns per panel of the csr rows path with column panels (``linear_csr``), 0 for
    none: panels when the GEMM has at least one full 4-vector block of rows and more than
    ``PANEL_COLUMNS`` columns.

    The weight is then stored panel by panel, and each block of rows walks one panel of
    every output row before the next, so the panel's transposed X (256 columns of 32 rows
    on AVX2: 32 KiB) stays in L1/L2 while the weight streams once per 4-vector block.
    Neither half pays alone: 4-vector blocks over all of k (384 KiB at k = 3072) fall out
    of L2, and panels of 2-vector blocks save nothing. Measured in C on AVX2 (Zen 3), one
    core, 32 and 128 rows at density 0.1, against the 2-vector rows path: 4096x4096 0.69x
    the time, 768x3072 0.76x, 3072x768 0.82x; panels of 2-vector blocks 1.03-1.08x. Reading
    the panels out of the row-major CSR arrays, through per-row cut points, was 1.2-1.5x
    slower than the rows path: the weight's stream then jumps every few dozen entries.

    AVX2 keeps ``PANEL_COLUMNS``. With AVX-512's 16 lanes a block of 8 vectors is 128 rows,
    and 256 columns of it (128 KiB) stream every nonzero's row of X from L2: the panel is
    sized to ``PANEL_L1_BYTES`` (64 columns at 128 rows, 128 at 64), then doubled up to
    ``PANEL_COLUMNS`` while a row's segment would hold fewer than ``PANEL_SEGMENT_NNZ``
    nonzeros at ``density`` (each segment loads and stores a block of partial sums).
    Measured on Zen 4, 2 threads, kernels A/B in one process, 128 rows, 256 / 128 / 64
    columns: 4096x4096 at 0.5 21.4 / 18.0 / 12.9 ms (dense 20.9, DeepSparse 13.9 in its
    own run), 0.2 7.63 / 6.16 / 5.77, 0.1 3.86 / 3.48 / 3.55, 0.05 2.07 / 2.09 / 2.67;
    3072x768 at 0.5 2.97 / 2.45 / 1.82, 0.1 0.62 / 0.53 / 0.52; 768x3072 at 0.5 3.36 /
    2.89 / 2.28; at 64 rows 4096x4096 0.2 3.22 / 3.02 / 3.31."""
    if rows < 4 * lanes or k <= PANEL_COLUMNS:
        return 0
    if lanes < 16:
        return PANEL_COLUMNS
    cols = max(lanes, PANEL_L1_BYTES // (4 * panel_block_vectors(rows, lanes) * lanes))
    while cols < PANEL_COLUMNS and cols * density < PANEL_SEGMENT_NNZ:
        cols *= 2
    return min(cols, PANEL_COLUMNS)


def panel_block_vectors(rows: int, lanes: int) -> int:
    """Vectors of X's rows per block of the rows path with panels: 8 when the rows fill
    them, else 4 (8 accumulators and a broadcast fit AVX2's 16 registers). The panel's
    transposed X is then 64 KiB on AVX2. Measured on AVX2 (Zen 3), 2 threads, 128 rows at
    density 0.1, against 4: 4096x4096 1.08x (6.6 against 7.2 ms), 768x3072 and 3072x768
    within noise (0.94-0.95x, rounds 0.8-1.6)."""
    return 8 if rows >= 8 * lanes else 4


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    layouts: tuple[str, ...] = ("dense", "csr", "bsr", "nm", "chw-spmm")  # layout kinds it runs
    vector_lanes: int = 8  # fp32 lanes of the widest SIMD register
    cost: CostConstants = field(default_factory=CostConstants)

    def supports(self, layout_kind: str) -> bool:
        return layout_kind in self.layouts

