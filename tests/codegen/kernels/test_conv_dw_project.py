"""The fused projection's weight layout and group rule (codegen/tvm/kernels/conv_dw_project.py);
its numbers are checked through the whole kernel in test_conv_dw.py (test_fused_projection,
test_bands, test_depthwise_before)."""

from __future__ import annotations

import numpy as np

from sparsec.codegen.tvm.kernels.conv_dw_project import (
    PROJECT_GROUP,
    group_channels,
    grouped_arrays,
)
from sparsec.formats import pack
from sparsec.ops import SparseOpSpec
from sparsec.plan import ConvAttrs


def test_grouped_projection_arrays():
    """Segment q * O + o of pj_gptr holds row o's nonzeros among group q's channels, by
    channel within the group; the groups round up to whole dense expand blocks and halve
    for wide outputs."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((5, 70)) * (rng.random((5, 70)) < 0.3)).astype(np.float32)
    w[2] = 0  # an empty row
    spec = SparseOpSpec("SparseConv", "csr", 5, 70, "p", [], [], ConvAttrs((1, 1)))
    got = grouped_arrays(spec, pack(w, "csr").arrays, 32)
    gptr, cols, vals = got["pj_gptr"], got["pj_cols"], got["pj_values"]
    assert gptr.shape == (3 * 5 + 1,) and cols.dtype == np.int16
    back = np.zeros_like(w)
    for q in range(3):
        for o in range(5):
            seg = slice(gptr[q * 5 + o], gptr[q * 5 + o + 1])
            assert np.all(np.diff(cols[seg]) > 0)
            back[o, q * 32 + cols[seg].astype(int)] = vals[seg]
    np.testing.assert_array_equal(back, w)
    dw = ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 96)
    expand = SparseOpSpec("SparseConv", "csr", 96, 16, "e", [], [], ConvAttrs((1, 1)), dw)
    assert group_channels(expand, False) == PROJECT_GROUP  # rows not known
    expand.rows = 56 * 56 * 4  # 56x56 out at stride 2
    assert group_channels(expand, False) == PROJECT_GROUP // 2
    assert group_channels(expand, True) % 6 == 0
