"""The torch front doors: nn.Module + example_inputs, ExportedProgram, and a saved .pt2."""

import numpy as np
import pytest
import torch

import sparsec
from sparsec.errors import CaptureError, UsageError
from sparsec.models import torch_examples

MODELS = ["mlp_2to4", "mobilenet_like", "transformer_block"]


@pytest.mark.parametrize("name", MODELS)
def test_module_matches_torch(name):
    m = getattr(torch_examples, name)()
    x = m.example_inputs()
    cm = sparsec.compile(m, example_inputs=x)
    assert cm.verification["ok"] and cm.verification["reference"] == "torch"
    with torch.no_grad():
        want = m(*x).numpy()
    np.testing.assert_allclose(cm(*x), want, rtol=1e-4, atol=1e-4)
    # PyTorch parameter names reach the report (".T": the exporter stored it transposed)
    # and name the layers
    weights = {r["weight"].removesuffix(".T") for r in cm.report}
    assert set(m.planted) - {w for w in m.planted if ".dw" in w} <= weights
    assert {r["name"] for r in cm.report} == {w.removesuffix(".weight") for w in weights}


def test_pt2_file_and_exported_program(tmp_path):
    m = torch_examples.mlp_2to4()
    x = m.example_inputs()
    ep = torch.export.export(m, x)
    path = tmp_path / "mlp.pt2"
    torch.export.save(ep, str(path))
    cm_file = sparsec.compile(str(path))
    cm_ep = sparsec.compile(ep)
    with torch.no_grad():
        want = m(*x).numpy()
    np.testing.assert_allclose(cm_file(x[0]), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cm_ep(x[0]), want, rtol=1e-4, atol=1e-4)
    # torch tensors in, numpy out; by name too
    name = cm_ep.inputs[0]["name"]
    np.testing.assert_allclose(cm_ep(**{name: x[0]}), want, rtol=1e-4, atol=1e-4)


def test_module_without_example_inputs():
    with pytest.raises(UsageError, match="example_inputs"):
        sparsec.compile(torch_examples.mlp_2to4())


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return x * 2
        return x


def test_uncapturable_module():
    with pytest.raises(CaptureError, match="torch.export could not capture _DataDependent"):
        sparsec.compile(_DataDependent(), example_inputs=(torch.randn(2, 3),))
