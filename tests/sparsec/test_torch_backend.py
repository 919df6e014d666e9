"""torch.compile(model, backend="sparsec"): the torch examples through Dynamo, fallbacks
that warn and still give eager's answer."""

import warnings

import pytest
import torch

from sparsec.errors import SparsecWarning
from sparsec.models import torch_examples
from sparsec.torch_backend import sparsec_backend

MODELS = ["mlp_2to4", "mobilenet_like", "transformer_block"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _spy():
    """A backend that is sparsec_backend and keeps what it returned."""
    made = []

    def backend(gm, example_inputs, **kw):
        made.append(sparsec_backend(gm, example_inputs, **kw))
        return made[-1]

    return backend, made


def test_registered_through_the_entry_point():
    from torch._dynamo.backends.registry import list_backends, lookup_backend

    assert "sparsec" in list_backends(exclude_tags=())
    assert lookup_backend("sparsec") is sparsec_backend


@pytest.mark.parametrize("name", MODELS)
def test_examples_match_eager(name):
    m = getattr(torch_examples, name)()
    x = m.example_inputs()
    backend, made = _spy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SparsecWarning)  # no silent fallback
        compiled = torch.compile(m, backend=backend)
        with torch.no_grad():
            got, want = compiled(*x), m(*x)
            again = compiled(*x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, want, rtol=1e-4, atol=1e-4)
    (run,) = made
    (cm,) = run.compiled_models.values()
    # the parameters came back as named constants, so the report reads like the module
    weights = {r["weight"].removesuffix(".T") for r in cm.report}
    assert set(m.planted) - {w for w in m.planted if ".dw" in w} <= weights
    assert any(r["layout"] != "dense" for r in cm.report) or name == "mlp_2to4"


def test_by_name_with_options_and_a_second_batch_size():
    m = torch_examples.mlp_2to4()
    (x,) = m.example_inputs()
    compiled = torch.compile(m, backend="sparsec", options={"layout": "csr"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SparsecWarning)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-4)
            # Dynamo recompiles with a dynamic batch; sparsec compiles the new shape
            torch.testing.assert_close(compiled(x[:3]), m(x[:3]), rtol=1e-4, atol=1e-4)


class _Embed(torch.nn.Module):
    """int64 indices in: sparsec compiles float32 inputs only."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, i):
        return self.fc(self.emb(i))


class _Cond(torch.nn.Module):
    """torch.cond captures as an ONNX If: control flow sparsec does not compile."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.fc(x), lambda x: x * 2, (x,))


@pytest.mark.parametrize("module,x,reason", [
    (_Embed, torch.tensor([[1, 2, 3]]), "int64"),
    (_Cond, torch.ones(2, 8), "control flow"),
])
def test_graphs_sparsec_cannot_take_fall_back_with_a_warning(module, x, reason):
    torch.manual_seed(0)
    m = module().eval()
    with pytest.warns(SparsecWarning, match=f"backend sparsec: .*{reason}.*running this graph "
                      "eagerly"):
        got = torch.compile(m, backend="sparsec")(x)
    with torch.no_grad():
        torch.testing.assert_close(got, m(x), rtol=0, atol=0)


def test_changed_parameter_runs_eagerly_with_a_warning():
    m = torch_examples.mlp_2to4()
    (x,) = m.example_inputs()
    compiled = torch.compile(m, backend="sparsec")
    with torch.no_grad():
        compiled(x)
        m.fc3.weight.mul_(0.5)
        with pytest.warns(SparsecWarning, match="a parameter changed since it was compiled"):
            got = compiled(x)
        torch.testing.assert_close(got, m(x), rtol=1e-4, atol=1e-4)
