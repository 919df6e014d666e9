"""Global magnitude pruning, and the torch mask helpers: keep_mask, torch_masks,
apply_torch_prune with torch.nn.utils.prune and torch.ao.pruning."""

import numpy as np
import pytest
import torch
from torch.nn.utils import prune as torch_prune

from sparsec.errors import UsageError
from sparsec.models import patterns, prune


def _w(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))


def test_global_unstructured_one_threshold_across_layers():
    ws = [_w((16, 32), 0, scale=1.0), _w((8, 4, 3, 3), 1, scale=0.1)]  # second layer smaller
    before = [w.copy() for w in ws]
    out = prune.global_unstructured(ws, 0.75)
    for w, b in zip(ws, before):
        np.testing.assert_array_equal(w, b)  # arguments untouched
    assert [o.shape for o in out] == [w.shape for w in ws]
    kept = sum(np.count_nonzero(o) for o in out)
    assert kept == round(0.25 * sum(w.size for w in ws))
    allw = np.concatenate([w.ravel() for w in ws])
    allo = np.concatenate([o.ravel() for o in out])
    assert np.abs(allw[allo != 0]).min() > np.abs(allw[allo == 0]).max()
    assert patterns.density(out[1]) < patterns.density(out[0])  # small layer pruned harder


def test_global_block_ranks_blocks_of_all_layers():
    ws = [_w((16, 32), 2), _w((8, 16), 3, scale=0.01)]
    out = prune.global_block(ws, 4, 4, 0.5)
    blocks = [w.size // 16 for w in ws]
    kept = [round(patterns.block_density(o, 4, 4) * b) for o, b in zip(out, blocks)]
    assert sum(kept) == sum(blocks) // 2
    assert kept[1] == 0  # the tiny layer's blocks are the smallest everywhere
    with pytest.raises(UsageError, match="does not tile"):
        prune.global_block([_w((6, 8))], 4, 4, 0.5)


def test_prune_module_global_scope():
    net = _net()
    names = prune.prune_module(net, "unstructured", 0.9, scope="global")
    assert names == ["0", "2"]
    ws = [net[0].weight.detach().numpy(), net[2].weight.detach().numpy()]
    total = sum(w.size for w in ws)
    assert sum(np.count_nonzero(w) for w in ws) == round(0.1 * total)
    with pytest.raises(UsageError, match="unknown global pruning method"):
        prune.prune_module(net, "n_m", 2, 4, scope="global")
    with pytest.raises(UsageError, match="scope"):
        prune.prune_module(net, "unstructured", 0.5, scope="everything")


def test_keep_mask_holds_zeros_through_training():
    net = _net()
    prune.prune_module(net, "n_m", 2, 4)
    assert prune.keep_mask(net) == ["0", "2"]
    masks = prune.torch_masks(net)
    assert set(masks) == {"0.weight", "2.weight"}
    assert all(m.mean() == 0.5 for m in masks.values())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, 32)
    for _ in range(3):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    assert patterns.nm_holds(net[0].weight.detach().numpy(), 2, 4)  # still 2:4 as seen
    # prune_module on a masked module ranks what the module sees and writes weight_orig
    prune.prune_module(net, "unstructured", 0.9, include="0")
    assert patterns.density(net[0].weight.detach().numpy()) == pytest.approx(0.1, abs=1e-3)


def test_apply_torch_prune_makes_masks_permanent_on_a_copy():
    net = _net()
    torch_prune.l1_unstructured(net[0], "weight", amount=0.8)
    torch_prune.random_structured(net[2], "weight", amount=0.5, dim=0)
    x = torch.randn(4, 32)
    with torch.no_grad():
        want = net(x)
    plain = prune.apply_torch_prune(net)
    assert hasattr(net[0], "weight_orig") and hasattr(net[0], "weight_mask")  # user's untouched
    names = {n for n, _ in plain.named_parameters()}
    assert names == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert not dict(plain.named_buffers())
    assert not plain[0]._forward_pre_hooks
    np.testing.assert_array_equal(plain[0].weight.detach().numpy() != 0,
                                  net[0].weight_mask.numpy() != 0)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), want, rtol=0, atol=0)
    assert patterns.zero_row_count(plain[2].weight.detach().numpy()) == 8


def test_ao_sparsifier_masks_before_and_after_squash():
    from torch.ao.pruning import WeightNormSparsifier

    net = _net()
    sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sp.prepare(net, [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    sp.step()
    masks = prune.torch_masks(net)
    assert set(masks) == {"0.weight", "2.weight"}
    assert patterns.nm_holds(masks["0.weight"].astype(np.float32), 2, 4)
    plain = prune.apply_torch_prune(net)  # parametrizations removed, values kept
    assert {n for n, _ in plain.named_parameters()} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    w = plain[0].weight.detach().numpy()
    assert patterns.nm_holds(w, 2, 4)
    np.testing.assert_array_equal(w, net[0].weight.detach().numpy())
    sp.squash_mask()  # the sparsifier's own way: the same weights
    np.testing.assert_array_equal(net[0].weight.detach().numpy(), w)
    assert prune.torch_masks(net) == {}
