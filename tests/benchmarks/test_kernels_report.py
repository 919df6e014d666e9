"""The single-layer benchmark's tables and its 1x1 conv points."""

import numpy as np

from benchmarks.kernels import ConvPoint, Point, make_weight, run_conv_point
from benchmarks.kernels_report import conv_table, table


def test_summary_counts_wins_against_the_best_peer():
    a = Point((64, 64), "unstructured", 0.1, 1, "csr", {"sparsec": 1.0, "onnxruntime": 2.0,
                                                         "torch": 1.5}, bound_ms=0.5)
    b = Point((64, 64), "unstructured", 0.5, 1, "dense", {"sparsec": 1.0, "onnxruntime": 0.9,
                                                          "torch": 3.0}, bound_ms=0.5)
    text = table([a, b])
    assert "| 64x64 | unstructured | 0.1 | 1 | csr | 1.000 | 2.000 | 1.500 | - | - | torch |" \
           " 1.50x | 0.500 | 50% |" in text
    assert "| onnxruntime | 0.90x |" in text
    assert "faster than every peer at 1 of 2 points; geometric mean 50% of the bound" in text


def test_conv_point_measures_sparsec_and_its_peers():
    """A real (small) 1x1 conv: compiled, verified, timed against every peer."""
    p = ConvPoint(16, 24, 8, 0.2)
    w = make_weight((24, 16), "unstructured", 0.2, np.random.default_rng(0))
    run_conv_point(p, w, bandwidth=16.0, gflops=132.0, deepsparse=None)
    assert p.layout and set(p.ms) == {"sparsec", "onnxruntime", "torch", "torch-csr",
                                      "scipy-csr"}
    assert all(v > 0 for v in p.ms.values())
    nnz = int(np.count_nonzero(w))
    assert np.isclose(p.bound_ms, 1e3 * max(nnz * 6 / 16e9, 2 * nnz * 64 / 132e9))
    text = conv_table([p])
    assert f"| 16->24 | 8x8 | 0.2 | {p.layout} |" in text
    assert "of 1 points" in text


def test_second_look_keeps_each_engines_faster_median():
    """A point behind or within SECOND_LOOK of its best peer is timed again; every engine
    keeps its faster median, the first look stays in first_ms, and the table marks the
    point and counts the wins of both looks."""
    from benchmarks.kernels import needs_second_look, second_look
    from benchmarks.kernels_report import SECOND_LOOK

    clear = Point((64, 64), "unstructured", 0.1, 1, "csr", {"sparsec": 1.0, "torch": 2.0},
                  bound_ms=0.5)
    p = Point((64, 64), "unstructured", 0.1, 8, "csr", {"sparsec": 2.0, "onnxruntime": 1.5},
              bound_ms=0.5, candidates_ms={"csr": 2.0, "dense": 1.8})
    assert not needs_second_look(clear) and needs_second_look(p)
    assert needs_second_look(Point((8, 8), "unstructured", 0.1, 1, "csr", {
        "sparsec": 1.0, "torch": SECOND_LOOK * 0.99}))

    def rerun(q, w):
        assert w.shape == (64, 64)
        q.ms = {"sparsec": 1.0, "onnxruntime": 1.6}
        q.candidates_ms = {"csr": 1.0, "dense": 1.9}

    second_look(p, np.zeros((64, 64), np.float32), rerun)
    assert p.ms == {"sparsec": 1.0, "onnxruntime": 1.5}
    assert p.first_ms == {"sparsec": 2.0, "onnxruntime": 1.5}
    assert p.candidates_ms == {"csr": 1.0, "dense": 1.8}
    text = table([clear, p])
    assert "| onnxruntime | 1.50x \\* |" in text and "| torch | 2.00x |" in text
    assert "faster than every peer at 2 of 2 points" in text
    assert "(1 points within 1.10x" in text and "sparsec was faster at 1 of 2" in text
