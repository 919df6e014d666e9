"""analyze_weight recovers planted patterns exactly; the pass makes one entry per weight op."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import helper

from sparsec.passes.analyze_sparsity import AnalyzeSparsityPass, analyze_weight
from sparsec.passes.invariants import verify
from sparsec.plan import Plan

rng = np.random.default_rng(1)


def nm_weight(o: int, k: int, n: int, m: int) -> np.ndarray:
    """Exactly n nonzeros in every group of m along the input dim (positions random)."""
    w = rng.uniform(0.5, 1.5, (o, k)).astype(np.float32)
    g = w.reshape(o, k // m, m)
    drop = np.argsort(rng.random(g.shape), axis=2)[:, :, : m - n]
    np.put_along_axis(g, drop, 0, axis=2)
    return w


def block_weight(o: int, k: int, r: int, c: int, density: float) -> np.ndarray:
    mask = rng.random((o // r, k // c)) < density
    return (np.kron(mask, np.ones((r, c))) * rng.uniform(0.5, 1.5, (o, k))).astype(np.float32)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 16)])
def test_planted_nm_is_recovered(n, m):
    s = analyze_weight(nm_weight(64, 128, n, m))
    assert s.nm == (n, m)
    assert s.nnz == 64 * 128 * n // m
    assert s.density == pytest.approx(n / m, abs=0)


def test_nm_ties_go_to_smaller_m_and_needs_divisibility():
    # 1:2 everywhere is also 2:4, 4:8, 8:16: same ratio, smallest M wins
    assert analyze_weight(nm_weight(8, 32, 1, 2)).nm == (1, 2)
    # in = 6: only M = 2 divides it; a dense pair everywhere -> no candidate
    assert analyze_weight(np.ones((4, 6), np.float32)).nm is None
    # in = 12: M = 2, 4 divide it; a 2:4 pattern whose pairs are full -> (2, 4) only
    w = np.zeros((4, 12), np.float32)
    w[:, 0::4] = w[:, 1::4] = 1
    assert analyze_weight(w).nm == (2, 4)


@pytest.mark.parametrize("r,c", [(4, 4), (16, 1), (1, 16), (8, 8), (2, 2)])
def test_planted_block_is_recovered(r, c):
    w = block_weight(128, 256, r, c, 0.2)
    s = analyze_weight(w)
    assert s.block == (r, c)
    blocks = (w != 0).reshape(128 // r, r, 256 // c, c).any(axis=(1, 3))
    assert s.block_density == pytest.approx(blocks.mean(), abs=1e-12)
    assert s.density == pytest.approx(np.count_nonzero(w) / w.size, abs=1e-12)


def test_block_prefers_largest_area_then_lower_block_density():
    # 8x8 blocks are also 4x4, 2x2...: the largest area (64) is reported
    assert analyze_weight(block_weight(64, 64, 8, 8, 0.3)).block == (8, 8)
    # 4x1 and 1x4 have equal area; a 4x4-block weight with one row group thinner
    # still reports 4x4 (area 16 beats both)
    assert analyze_weight(block_weight(64, 64, 4, 4, 0.3)).block == (4, 4)
    # unstructured sparsity: no block within 1.1 x density
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    s = analyze_weight(w)
    assert s.block is None and s.block_density is None


def test_zero_rows_cols_nonfinite_and_all_zero():
    w = rng.standard_normal((16, 32)).astype(np.float32)
    w[[1, 5, 7]] = 0
    w[:, [0, 31]] = 0
    w[2, 3], w[4, 4] = np.nan, np.inf
    s = analyze_weight(w)
    assert (s.rows, s.cols, s.zero_rows, s.zero_cols, s.nonfinite) == (16, 32, 3, 2, 2)
    assert s.nnz == 13 * 30  # NaN and Inf count as nonzeros
    z = analyze_weight(np.zeros((8, 16), np.float32))
    assert (z.density, z.nnz, z.nm, z.block, z.zero_rows, z.zero_cols) == (0, 0, None, None, 8, 16)


def test_dense_weight():
    s = analyze_weight(np.ones((32, 32), np.float32))
    assert s.density == 1.0 and s.nm is None
    assert s.block is None and s.block_density is None  # no zero: no pattern to report


def test_pass_makes_one_entry_per_weight_op(tools):
    w_mm = nm_weight(32, 64, 2, 4)  # stored [in, out] for MatMul: transpose
    inits = {"mm.w": np.ascontiguousarray(w_mm.T), "gemm.w": nm_weight(16, 32, 1, 4),
             "conv.w": rng.standard_normal((8, 16, 3, 3)).astype(np.float32),
             "dw.w": rng.standard_normal((8, 1, 3, 3)).astype(np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "mm.w"], ["h"]),  # unnamed: gets a name
        helper.make_node("Gemm", ["h", "gemm.w"], ["y"], transB=1, name="fc"),
        helper.make_node("Conv", ["img", "conv.w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Conv", ["c", "dw.w"], ["z"], group=8, pads=[1, 1, 1, 1], name="dw"),
    ]
    m = tools.model(nodes, {"x": (4, 64), "img": (1, 16, 8, 8)}, ["y", "z"], inits)
    plan = Plan(target="cpu")
    p = AnalyzeSparsityPass(plan)
    result = p(m)
    verify(m, plan)
    assert result.modified and p.counts["named"] == 1 and p.counts["entries"] == 3
    assert p.counts["skipped"] == 1  # the depthwise conv
    e_mm, e_fc, e_conv = plan.entries
    assert e_mm.node == "MatMul_0" and e_mm.weight == "mm.w" and e_mm.weight_shape == (64, 32)
    assert (e_mm.stats.rows, e_mm.stats.cols, e_mm.stats.nm) == (32, 64, (2, 4))
    assert (e_fc.node, e_fc.stats.nm) == ("fc", (1, 4))
    assert (e_conv.stats.rows, e_conv.stats.cols) == (8, 16 * 9)
    assert e_conv.conv.kernel_shape == (3, 3) and e_conv.conv.pads == (1, 1, 1, 1)
    # running again replaces the entries rather than duplicating them
    p(m)
    assert len(plan.entries) == 3 and p.counts["named"] == 0
