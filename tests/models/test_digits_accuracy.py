"""Accuracy that is real: digits MLP, 90% pruned + fine-tuned, compiled by sparsec.

The compiled model must predict what the pruned torch model predicts (>= 99.5% of the 360
test images), and the pruned model must stay within 1 point of the dense one."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sparsec.models import digits  # noqa: E402


@pytest.fixture(scope="module", params=["layer", "global"])
def result(request):
    return digits.run(sparsity=0.9, scope=request.param, seed=0)


def test_compiled_predicts_what_pruned_torch_predicts(result):
    assert result.agreement >= 0.995, result.summary()
    assert abs(result.compiled_accuracy - result.pruned_accuracy) <= 0.005, result.summary()
    assert result.compiled.verification["ok"]


def test_pruned_within_one_point_of_dense(result):
    assert result.dense_accuracy >= 0.95, result.summary()  # the dense model learned digits
    assert result.pruned_accuracy >= result.dense_accuracy - 0.01, result.summary()


def test_ninety_percent_pruned_and_sparse_layouts_chosen(result):
    total = sum(r["shape"][0] * r["shape"][1] for r in result.report)
    kept = sum(r["density"] * r["shape"][0] * r["shape"][1] for r in result.report)
    assert kept / total == pytest.approx(0.1, abs=1e-3)  # what sparsec saw in the weights
    assert set(result.density) == {"fc1.weight", "fc2.weight", "fc3.weight"}  # masks held
    # The 10%-dense layers run sparse. Global pruning leaves fc1 (64 -> 256) at 25%, where
    # at 360 rows dense can be the faster layout: on the AMD EPYC CI machine dense took
    # 0.18 ms and csr 0.21 ms, and the calibrated model keeps it dense there.
    thin = [r for r in result.report if r["name"] in ("fc1", "fc2") and r["density"] <= 0.15]
    assert thin, result.report
    assert all(r["layout"] != "dense" for r in thin), result.report


def test_recipe_is_deterministic():
    a, b = digits.data(0), digits.data(0)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64)
    assert np.bincount(a.y_test).min() >= 35  # stratified: every class is tested
