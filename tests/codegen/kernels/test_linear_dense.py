"""The dense SparseLinear GEMM's own choices (``kernels/linear_dense.py``) against numpy:
X packed or read in place, chunked sums, even row tiles, tiles over 4 KiB-aliased rows,
GEMV panels and prefetching."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from linear_kernel_cases import (  # noqa: E402
    EPILOGUES,
    HOST,
    check_kernel,
    kernel_weight,
    run_kernel,
)

from sparsec.codegen.tvm.kernels import kernel_for  # noqa: E402
from sparsec.codegen.tvm.kernels.linear_common import vector_lanes  # noqa: E402
from sparsec.codegen.tvm.kernels.linear_dense import (  # noqa: E402
    ALIAS_BYTES,
    CHUNK_ABOVE,
    GEMV_PANEL_VECTORS,
    L1_WAYS,
    even_tiles,
)
from sparsec.formats import pack  # noqa: E402
from sparsec.ops import SparseOpSpec  # noqa: E402


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("rows", [3, 13])
def test_dense_with_and_without_packed_x(pack, rows):
    """X packed into row blocks (by default only for K >= 2048 and 8+ panels) or read in place."""
    check_kernel("dense", 70, 300, rows, 1.0, knobs={"pack": pack}, seed=rows)


@pytest.mark.parametrize("rows", [1, 13])
def test_dense_chunked_sums_forced(rows):
    """The chunked sums (by default only for k > CHUNK_ABOVE) on a short k: chunks of 64
    and a short last one, in registers at 1 row, in the k-blocked order at 13 (3 row blocks)."""
    check_kernel("dense", 70, 300, rows, 1.0, knobs={"chunk_above": 0, "k_chunk": 64}, seed=rows)


@pytest.mark.parametrize("rows", [1, 40])
def test_dense_unchunked_accuracy(rows):
    """Up to k = CHUNK_ABOVE the sum is one running sum: still within 1e-5 of float64."""
    w = kernel_weight("dense", 64, CHUNK_ABOVE, 1.0, np.random.default_rng(rows))
    y, ref = run_kernel("dense", w, rows)
    assert np.abs(y - ref).max() < 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("rows", [8, 10])
def test_dense_even_row_tiles(rows):
    """8 rows as 4 + 4 and 10 as 5 + 5 (``even_tiles``), with a residual to check the rows
    each tile writes."""
    assert even_tiles(rows, 6) == rows // 2
    check_kernel("dense", 70, 300, rows, 1.0, steps=EPILOGUES[-1], seed=rows)


@pytest.mark.parametrize("rows", [14, 20])
def test_dense_aliased_rows(rows):
    """X's rows 4 KiB apart (k = 1024), unpacked: tiles of at most L1_WAYS rows (14 as
    7 + 7, 20 as 8 + 8 + 4 where AVX-512 would take 14 + 6), with a residual to check the
    rows each tile writes."""
    assert (1024 * 4) % ALIAS_BYTES == 0 and even_tiles(rows, L1_WAYS) <= L1_WAYS
    check_kernel("dense", 70, 1024, rows, 1.0, steps=EPILOGUES[-1], seed=rows)


def test_even_tiles():
    assert [even_tiles(r, 6) for r in (1, 3, 6, 7, 8, 9, 10, 12, 13, 128)] == [
        1, 3, 6, 6, 4, 6, 5, 6, 6, 6]
    assert even_tiles(16, 14) == 8  # AVX-512's 14-row tiles: 8 + 8


@pytest.mark.parametrize("rows,plan_rows,out", [(1, 1, 70), (1, 1, 64), (1, 1, 20), (3, 1, 70),
                                              (1, 0, 70)])
def test_dense_gemv_panels(rows, plan_rows, out):
    """A layer the plan runs on one row gets panels of GEMV_PANEL_VECTORS vectors (a last
    panel partly padding, an output narrower than one panel keeps 2 vectors); built for
    more rows than the plan said, the same panels still give the right answer."""
    lanes = vector_lanes(HOST)
    spec = SparseOpSpec("SparseLinear", "dense", out, 300, "fc", [], ["w"], rows=plan_rows)
    w = np.random.default_rng(out).standard_normal((out, 300)).astype(np.float32)
    nb = kernel_for(spec).prepare(spec, {"w": w}, HOST)["w_panels"].shape[2]
    wide = plan_rows == 1 and out >= GEMV_PANEL_VECTORS * lanes
    assert nb == (GEMV_PANEL_VECTORS if wide else min(2, -(-out // lanes))) * lanes
    check_kernel("dense", out, 300, rows, 1.0, steps=EPILOGUES[-1], plan_rows=plan_rows, seed=out)


def test_dense_prefetch_default():
    """A weight of 32 MiB streamed once is prefetched at 2 rows, not at one (the GEMV)."""
    o, k = 2048, 4096
    w = np.zeros((o, k), np.float32)
    for rows, want in ((1, False), (2, True)):
        spec = SparseOpSpec("SparseLinear", "dense", o, k, "fc", [], ["w"], rows=rows)
        kdef = kernel_for(spec)
        func = kdef.build(spec, (rows, k), kdef.prepare(spec, {"w": w}, HOST), HOST)
        assert ("llvm.prefetch" in func.script()) == want, rows


@pytest.mark.parametrize("rows", [1, 5])
def test_dense_prefetch_path(rows):
    """W prefetching (on by default only for weights over 32 MiB) is forced on a small one."""
    check_kernel("dense", 70, 700, rows, 1.0, knobs={"prefetch": 32})
