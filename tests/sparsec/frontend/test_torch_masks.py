"""sparsec.compile of modules whose weights are computed: torch.nn.utils.prune masks and
torch.ao.pruning parametrizations are applied in a copy, so the report sees the sparsity
under the PyTorch names and the user's module keeps working as it was."""

import numpy as np
import pytest
import torch
from torch.nn.utils import prune as torch_prune

import sparsec


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def _rows(cm):
    return {r["name"]: r for r in cm.report}


def test_torch_nn_utils_prune_masks():
    net = _net()
    torch_prune.l1_unstructured(net[0], "weight", amount=0.9)
    torch_prune.global_unstructured([(net[2], "weight")], torch_prune.L1Unstructured, amount=0.9)
    net.train()
    x = torch.randn(64, 256)  # rows enough that csr pays on every calibrated machine
    cm = sparsec.compile(net, example_inputs=(x,))
    assert cm.verification["ok"]
    rows = _rows(cm)
    assert set(rows) == {"0", "2", "4"}  # the masked layers are weight ops with their names
    for name in ("0", "2"):
        assert rows[name]["weight"] == f"{name}.weight"
        assert rows[name]["density"] == pytest.approx(0.1, abs=1e-3)
        assert rows[name]["layout"] == "csr"
    assert rows["4"]["density"] == 1.0
    # the user's module is untouched: still masked, still in training mode
    assert net.training and hasattr(net[0], "weight_mask") and net[0]._forward_pre_hooks
    with torch.no_grad():
        np.testing.assert_allclose(cm(x), net.eval()(x).numpy(), rtol=1e-4, atol=1e-4)


def test_torch_ao_pruning_parametrizations():
    from torch.ao.pruning import WeightNormSparsifier

    net = _net()
    sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=3)
    sp.prepare(net, [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    sp.step()
    x = torch.randn(4, 256)
    cm = sparsec.compile(net, example_inputs=(x,))
    rows = _rows(cm)
    for name in ("0", "2"):
        assert rows[name]["weight"] == f"{name}.weight"
        assert rows[name]["density"] == 0.25 and rows[name]["nm"] == [1, 4]
    with torch.no_grad():  # the user's parametrized module still works (own class kept)
        want = net(x).numpy()
    np.testing.assert_allclose(cm(x), want, rtol=1e-4, atol=1e-4)
    assert type(net[0]).__name__ == "ParametrizedLinear" and hasattr(net[0], "weight")
    sp.squash_mask()  # after squash_mask the weights are plain: same report
    rows_after = _rows(sparsec.compile(net, example_inputs=(x,), verify=False))
    assert [rows_after[n]["nm"] for n in ("0", "2")] == [[1, 4], [1, 4]]
