"""The benchmark model zoo: plain-torch models with seeded weights (no torchvision, no hubs).

``ZOO`` maps a name to a ``ZooEntry``::

    from sparsec.models.zoo import ZOO
    from sparsec.models.prune import prune_module

    e = ZOO["bert_base"]
    m = e.build(seed=0)                      # eval mode; e.build(**e.tiny) for tests
    x = e.example_inputs(batch=1)            # tuple of float32 tensors
    prune_module(m, "unstructured", 0.9, include=e.include)
    cm = sparsec.compile(m, example_inputs=x)

| name               | model                                                          |
|--------------------|----------------------------------------------------------------|
| ``mlp``            | 4 Linear layers, 1024 wide, 1000 classes (``mlp.py``)          |
| ``mobilenetv2_224``| MobileNetV2 1.0 at 224x224 (``mobilenetv2.py``)                |
| ``mobilenetv2_96`` | MobileNetV2 1.0 at 96x96                                       |
| ``bert_base``      | BERT-base encoder, 12 layers, seq 128, embeddings in (``bert.py``) |
| ``bert_2layer``    | the same with 2 layers                                         |
| ``gpt2_decode``    | GPT-2 small, one decode step with a 128-token KV cache (``gpt2.py``) |
| ``gpt2_prefill``   | GPT-2 small, prefill of 128 tokens                             |

Every size argument of a model (``hidden``, ``layers``, ``resolution``...) can be
overridden in ``build`` and ``example_inputs`` alike; ``entry.tiny`` is a small size for
tests. Model modules are imported on first use, so importing this package is cheap.
"""

from __future__ import annotations

import fnmatch
import importlib
import math
from dataclasses import dataclass, field
from typing import Any


def config(default: dict[str, Any], size: dict[str, Any]) -> dict[str, Any]:
    """``default`` with ``size`` applied; a key ``default`` lacks is a TypeError."""
    unknown = sorted(set(size) - set(default))
    if unknown:
        raise TypeError(f"unknown size argument(s) {', '.join(unknown)}; "
                        f"known: {', '.join(default)}")
    return default | size


def seeded_build(cls, seed: int, **cfg):
    """``cls(**cfg)`` with ``seeded_init(..., seed)``; the global torch RNG (which
    torch's own default initialization draws from) is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        module = cls(**cfg)
    return seeded_init(module, seed)


def seeded_init(module, seed: int):
    """Give every parameter and BatchNorm statistic of ``module`` a value drawn from a
    private generator seeded with ``seed`` (the global torch RNG is untouched), in module
    order; return it in eval mode.

    Linear: N(0, 1/fan_in), conv: N(0, 2/fan_in) (He; ReLU6 follows), biases N(0, 0.02²),
    LayerNorm weight 1 + N(0, 0.1²) and bias N(0, 0.02²), BatchNorm weight U(0.5, 1.5),
    bias N(0, 0.1²), running mean N(0, 0.2²), running var U(0.5, 2)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        t.copy_(mean + std * torch.randn(t.shape, generator=g))

    def uniform(t, lo, hi):
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))

    with torch.no_grad():
        for name, mod in module.named_modules():
            own = list(mod.parameters(recurse=False))
            if isinstance(mod, nn.Linear):
                normal(mod.weight, 1.0 / math.sqrt(mod.in_features))
            elif isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                normal(mod.weight, math.sqrt(2.0 / fan_in))
            elif isinstance(mod, nn.LayerNorm):
                normal(mod.weight, 0.1, 1.0)
            elif isinstance(mod, nn.BatchNorm2d):
                uniform(mod.weight, 0.5, 1.5)
                normal(mod.bias, 0.1)
                normal(mod.running_mean, 0.2)
                uniform(mod.running_var, 0.5, 2.0)
                continue
            elif own:
                raise TypeError(f"seeded_init: no rule for {type(mod).__name__} '{name}'")
            if getattr(mod, "bias", None) is not None:
                normal(mod.bias, 0.02)
    return module.eval()


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: ``module``/``builder``/``inputs`` name the functions in
    ``sparsec.models.zoo.<module>``; ``preset`` is this entry's size on top of that
    module's ``DEFAULT``."""

    name: str
    description: str
    module: str
    builder: str = "build"
    inputs: str = "example_inputs"
    preset: dict[str, Any] = field(default_factory=dict)

    def _mod(self):
        return importlib.import_module(f"sparsec.models.zoo.{self.module}")

    def size(self, **size) -> dict[str, Any]:
        """The full size of the model built with these overrides."""
        return config(self._mod().DEFAULT, self.preset | size)

    @property
    def tiny(self) -> dict[str, Any]:
        """Size overrides for a model that compiles in seconds (tests)."""
        return dict(self._mod().TINY)

    @property
    def prunable(self) -> tuple[str, ...]:
        """fnmatch globs over module names of the prunable Linear/Conv2d layers."""
        return tuple(self._mod().PRUNABLE)

    def build(self, seed: int = 0, **size):
        """The model as an eval-mode ``nn.Module`` with seeded weights."""
        return getattr(self._mod(), self.builder)(seed, **(self.preset | size))

    def example_inputs(self, batch: int = 1, seed: int = 0, **size) -> tuple:
        """Seeded standard-normal float32 inputs for ``build(**size)``, as a tuple."""
        return getattr(self._mod(), self.inputs)(batch, seed, **(self.preset | size))

    def include(self, module_name: str) -> bool:
        """Is this module prunable? (``prune_module(m, ..., include=entry.include)``)"""
        return any(fnmatch.fnmatchcase(module_name, p) for p in self.prunable)

    def prunable_weights(self, model) -> list[str]:
        """Parameter names of the prunable weights of ``model``, in module order."""
        return [f"{n}.weight" for n, _ in model.named_modules() if n and self.include(n)]


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("mlp", "MLP: 1024 -> 3 x 1024 (ReLU) -> 1000, four prunable Linear layers", "mlp"),
    ZooEntry("mobilenetv2_224", "MobileNetV2 1.0 at 224x224: inverted residuals, depthwise "
             "3x3, ReLU6, BN; sparse 1x1 convs (XNNPACK's case)", "mobilenetv2",
             preset={"resolution": 224}),
    ZooEntry("mobilenetv2_96", "MobileNetV2 1.0 at 96x96", "mobilenetv2",
             preset={"resolution": 96}),
    ZooEntry("bert_base", "BERT-base encoder: 12 layers, 768 hidden, 12 heads, 3072 FFN, "
             "seq 128; float32 embeddings in (token lookup outside)", "bert"),
    ZooEntry("bert_2layer", "BERT-base encoder with 2 layers", "bert", preset={"layers": 2}),
    ZooEntry("gpt2_decode", "GPT-2 small decode step: batch 1, one token, 128-token float32 "
             "KV cache in, logits (vocab 8192) and the new cache out", "gpt2",
             builder="build_decode", inputs="decode_inputs"),
    ZooEntry("gpt2_prefill", "GPT-2 small prefill of 128 tokens with a constant causal mask; "
             "logits (vocab 8192) and the cache out", "gpt2",
             builder="build_prefill", inputs="prefill_inputs"),
)}
