"""The bitmap SparseLinear layout (``kernels/linear_bitmap.py``: moderate sparsity at few
rows on AVX-512) against numpy, its knobs, its value-expansion table and its shape check."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from linear_kernel_cases import check_kernel, host_target  # noqa: E402

from sparsec.codegen.tvm.kernels import kernel_for  # noqa: E402
from sparsec.errors import CompileError  # noqa: E402
from sparsec.formats import pack  # noqa: E402
from sparsec.ops import SparseOpSpec  # noqa: E402


# in a multiple of 16 (AVX-512's groups; AVX2's are 8)
BITMAP_SHAPES = [(1, 16), (29, 48), (40, 64), (130, 304)]


@pytest.mark.parametrize("shape", BITMAP_SHAPES)
@pytest.mark.parametrize("rows,density", [(1, 1.0), (1, 0.5), (2, 0.3), (3, 0.0), (4, 0.5),
                                          (16, 0.2)])
def test_bitmap_matches_numpy(shape, rows, density):
    check_kernel("bitmap", *shape, rows, density, seed=rows)


@pytest.mark.parametrize("knobs", [{"together": 2}, {"together": 3}, {"unroll": 1},
                                   {"unroll": 3}, {"prefetch": 0}])
@pytest.mark.parametrize("rows", [1, 2])
def test_bitmap_knobs(knobs, rows):
    """Output rows side by side (with a remainder), accumulator sets (with a remainder of
    groups), no prefetch: the same numbers."""
    check_kernel("bitmap", 37, 80, rows, 0.45, knobs=knobs, seed=3)


def test_bitmap_expand_table():
    """Lane l of mask m takes value number popcount(m below l), for every 8-bit mask."""
    from sparsec.codegen.tvm.kernels.linear_bitmap import expand_table

    lut = expand_table(8)
    for m in (0b1, 0b10110100, 0xFF):
        taken = [lut[m, lane] for lane in range(8) if m >> lane & 1]
        assert taken == list(range(bin(m).count("1")))


def test_bitmap_needs_whole_groups_of_sixteen_on_avx512():
    packed = pack(np.ones((4, 24), np.float32), "bitmap")  # fits the format (24 % 8 == 0)
    spec = SparseOpSpec("SparseLinear", "bitmap", 4, 24, "fc", [], list(packed.arrays))
    with pytest.raises(CompileError, match="divisible by 16"):
        kernel_for(spec).prepare(spec, packed.arrays, host_target("x86-64-v4"))
