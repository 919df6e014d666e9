"""Pack/unpack of every layout is lossless; refusals name the reason."""

import numpy as np
import pytest

from sparsec.errors import LayoutError
from sparsec.formats import check_fits, pack, unpack

RNG = np.random.default_rng(0)


def _nm(o, k, n, m):
    w = RNG.standard_normal((o, k)).astype(np.float32)
    keep = np.argsort(RNG.random((o, k // m, m)), axis=2)[:, :, :n]
    mask = np.zeros((o, k // m, m), bool)
    np.put_along_axis(mask, keep, True, axis=2)
    return w * mask.reshape(o, k)


def _block(o, k, r, c, d):
    mask = np.kron(RNG.random((o // r, k // c)) < d, np.ones((r, c))).astype(bool)
    return RNG.standard_normal((o, k)).astype(np.float32) * mask


@pytest.mark.parametrize("layout,w", [
    ("dense", RNG.standard_normal((7, 5)).astype(np.float32)),
    ("csr", _block(33, 17, 1, 1, 0.1)),
    ("csr", np.zeros((4, 9), np.float32)),
    ("chw-spmm", _block(16, 40000, 1, 1, 0.001)),  # int32 indices
    ("bsr4x4", _block(32, 64, 4, 4, 0.2)),
    ("bsr16x1", _block(32, 8, 16, 1, 0.3)),
    ("bsr1x8", np.zeros((3, 16), np.float32)),
    ("nm2:4", _nm(9, 32, 2, 4)),
    ("nm1:8", _nm(5, 64, 1, 8)),
    ("bitmap", _block(9, 48, 1, 1, 0.5)),
    ("bitmap", np.zeros((3, 8), np.float32)),
    ("bitmap", RNG.standard_normal((2, 24)).astype(np.float32)),
])
def test_roundtrip(layout, w):
    p = pack(w, layout)
    assert np.array_equal(unpack(p), w)
    assert all(a.size >= 1 for a in p.arrays.values())
    assert p.meta["nnz"] == np.count_nonzero(w)


def test_index_width():
    assert pack(_block(8, 100, 1, 1, 0.2), "csr").arrays["indices"].dtype == np.int16
    assert pack(_block(2, 40000, 1, 1, 0.01), "csr").arrays["indices"].dtype == np.int32


def test_refusals():
    w = RNG.standard_normal((6, 8)).astype(np.float32)
    assert "divisible" in check_fits(w, "bsr4x4")
    with pytest.raises(LayoutError, match="not 2:4"):
        pack(w, "nm2:4")
    with pytest.raises(LayoutError, match="divisible by 16"):
        pack(w, "nm2:16")


def test_bitmap_bits():
    """Bit b of mask byte j says whether column 8j+b is stored; values in column order."""
    w = np.zeros((2, 16), np.float32)
    w[0, [1, 9, 15]] = [1.0, 2.0, 3.0]
    p = pack(w, "bitmap")
    assert p.arrays["mask"].tolist() == [[0b10, 0b10000010], [0, 0]]
    assert p.arrays["values"].tolist() == [1.0, 2.0, 3.0]
    assert p.arrays["indptr"].tolist() == [0, 3, 3]
    assert "divisible by 8" in check_fits(np.ones((2, 12), np.float32), "bitmap")
