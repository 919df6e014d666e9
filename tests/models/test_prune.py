"""Magnitude pruning: exact counts, the largest magnitudes survive, inputs are untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.errors import UsageError
from sparsec.models import patterns, prune


def _w(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_unstructured_keeps_the_largest_magnitudes():
    w = _w((64, 48))
    before = w.copy()
    out = prune.unstructured(w, 0.9)
    np.testing.assert_array_equal(w, before)  # argument untouched
    assert out.shape == w.shape and out.dtype == np.float32
    kept = out != 0
    assert kept.sum() == round(0.1 * w.size)
    assert np.abs(w[kept]).min() > np.abs(w[~kept]).max()
    np.testing.assert_array_equal(out[kept], w[kept])  # survivors keep their values


def test_unstructured_extremes_and_determinism():
    w = _w((8, 8))
    np.testing.assert_array_equal(prune.unstructured(w, 0.0), w)
    assert not prune.unstructured(w, 1.0).any()
    np.testing.assert_array_equal(prune.unstructured(w, 0.5), prune.unstructured(w.copy(), 0.5))


def test_unstructured_ties_break_by_position():
    w = np.ones((2, 4), np.float32)
    out = prune.unstructured(w, 0.5)
    np.testing.assert_array_equal(out, [[1, 1, 1, 1], [0, 0, 0, 0]])


def test_unstructured_min_per_row_leaves_no_zero_row():
    w = _w((64, 16), seed=3)
    w[:8] *= 1e-3  # rows that global magnitude pruning would empty
    assert patterns.zero_row_count(prune.unstructured(w, 0.88)) >= 8
    out = prune.unstructured(w, 0.88, min_per_row=1)
    assert patterns.zero_row_count(out) == 0
    assert np.count_nonzero(out) == round(0.12 * w.size)


def test_unstructured_conv_weight_counts_as_2d():
    w = _w((8, 4, 3, 3))
    out = prune.unstructured(w, 0.75, min_per_row=2)
    assert out.shape == (8, 4, 3, 3)
    assert np.count_nonzero(out) == 72
    assert (np.count_nonzero(out.reshape(8, -1), axis=1) >= 2).all()


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_n_m_keeps_top_n_of_every_group(n, m):
    w = _w((16, 32))
    out = prune.n_m(w, n, m)
    groups_in, groups_out = w.reshape(16, -1, m), out.reshape(16, -1, m)
    assert (np.count_nonzero(groups_out, axis=2) == n).all()
    kept = groups_out != 0
    for g_in, g_kept in zip(groups_in.reshape(-1, m), kept.reshape(-1, m), strict=True):
        if n < m:
            assert np.abs(g_in[g_kept]).min() > np.abs(g_in[~g_kept]).max()
    assert patterns.nm_holds(out, n, m)


def test_n_m_conv_groups_run_along_c_kh_kw():
    w = _w((4, 2, 2, 2))  # [O, C*kh*kw] = [4, 8]
    out = prune.n_m(w, 2, 4)
    assert patterns.nm_holds(out, 2, 4)
    np.testing.assert_array_equal(out.reshape(4, 8), prune.n_m(w.reshape(4, 8), 2, 4))


def test_block_zeroes_whole_blocks_of_smallest_norm():
    w = _w((32, 64))
    out = prune.block(w, 4, 8, 0.75)
    tiles_out = out.reshape(8, 4, 8, 8)
    nz = np.count_nonzero(tiles_out, axis=(1, 3))
    assert set(np.unique(nz)) <= {0, 32}  # each block all kept or all zero
    assert (nz > 0).sum() == 16
    norms = np.abs(w.reshape(8, 4, 8, 8)).sum(axis=(1, 3))
    assert norms[nz > 0].min() > norms[nz == 0].max()
    assert patterns.block_density(out, 4, 8) == pytest.approx(0.25, abs=0)
    assert patterns.density(out) == pytest.approx(0.25, abs=0)


def test_block_tall_thin_blocks():
    w = _w((64, 32))
    out = prune.block(w, 16, 1, 0.5)
    assert patterns.block_density(out, 16, 1) == 0.5
    assert patterns.block_density(out.T, 16, 1) > 0.9  # the other orientation is not blocky


def test_zero_rows_removes_smallest_rows_only():
    w = _w((10, 6))
    w[[2, 7]] *= 0.01
    out = prune.zero_rows(w, 0.2)
    assert patterns.zero_row_count(out) == 2
    assert not out[[2, 7]].any()
    keep = [i for i in range(10) if i not in (2, 7)]
    np.testing.assert_array_equal(out[keep], w[keep])


@pytest.mark.parametrize(
    "call",
    [
        lambda w: prune.unstructured(w, 1.5),
        lambda w: prune.unstructured(w, 0.5, min_per_row=7),
        lambda w: prune.n_m(w, 2, 5),
        lambda w: prune.n_m(w, 5, 4),
        lambda w: prune.block(w, 3, 4, 0.5),
        lambda w: prune.zero_rows(w, -0.1),
        lambda w: prune.unstructured(w[0], 0.5),
    ],
)
def test_bad_arguments_are_usage_errors(call):
    with pytest.raises(UsageError):
        call(_w((8, 8)))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_unstructured_count_property(rows, cols, sparsity, seed):
    w = _w((rows, cols), seed)
    out = prune.unstructured(w, sparsity)
    assert np.count_nonzero(out) == round((1 - sparsity) * w.size)
    assert np.all((out == 0) | (out == w))


def test_prune_module_in_place_by_name_filter():
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("conv", torch.nn.Conv2d(4, 8, 3))
    net.add_module("fc1", torch.nn.Linear(16, 16))
    net.add_module("fc2", torch.nn.Linear(16, 8))
    head_before = net.fc2.weight.detach().clone()
    names = prune.prune_module(net, "n_m", 2, 4, include="fc1")
    assert names == ["fc1"]
    assert patterns.nm_holds(net.fc1.weight.detach().numpy(), 2, 4)
    assert torch.equal(net.fc2.weight, head_before)
    names = prune.prune_module(net, prune.unstructured, 0.5, include=lambda n: n != "fc1")
    assert names == ["conv", "fc2"]
    assert patterns.density(net.conv.weight.detach().numpy()) == 0.5
    assert net.conv.weight.shape == (8, 4, 3, 3)
    with pytest.raises(UsageError):
        prune.prune_module(net, "random", 0.5)
