"""torch versions of three examples: ``mlp_2to4``, ``mobilenet_like``, ``transformer_block``.

Each module is built in eval mode from the same seeded, pruned weights as its ONNX twin
(``sparsec.models.params``), so for the same inputs it computes the same function, and
its parameter names are the ONNX initializer names (``fc1.weight``, ``blocks.0.pw.weight``,
``attn.qkv.weight``). ``example_inputs()`` returns the example's inputs as a tuple of
tensors, ready for ``torch.export.export(m, m.example_inputs())``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from sparsec.models import params as P


class _Example(nn.Module):
    """Loads an ``ExampleParams`` into the module and keeps its inputs."""

    def _load(self, ep: P.ExampleParams) -> None:
        state = {k: torch.from_numpy(np.array(v)) for k, v in ep.params.items()}
        for key, value in self.state_dict().items():
            if key.endswith("num_batches_tracked"):
                state[key] = value
        self.load_state_dict(state, strict=True)  # every parameter gets a seeded value
        self._inputs = ep.inputs
        self.planted = ep.planted
        self.eval()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.array(v)) for v in self._inputs.values())


class MLP(_Example):
    """x[8,256] -> fc1 (2:4) -> relu -> fc2 (2:4) -> relu -> fc3 (dense) -> [8,10]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 512)
        self.fc2 = nn.Linear(512, 512)
        self.fc3 = nn.Linear(512, 10)
        self.relu = nn.ReLU()
        self._load(P.mlp_2to4())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Block(nn.Module):
    """Depthwise 3x3 -> [BN] -> ReLU6 -> sparse 1x1 -> [BN] -> ReLU6 (convs have a bias
    exactly when there is no BatchNorm)."""

    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=not bn)
        self.dw_bn = nn.BatchNorm2d(cin) if bn else nn.Identity()
        self.pw = nn.Conv2d(cin, cout, 1, bias=not bn)
        self.pw_bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.dw_bn(self.dw(x)))
        return self.act(self.pw_bn(self.pw(x)))


class MobileNetLike(_Example):
    """x[1,3,64,64] -> stem -> blocks.0..2 (1x1 at 88/90/85%) -> avg pool -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.blocks = nn.ModuleList(
            _Block(cin, cout, stride, bn) for _, cin, cout, stride, bn, _ in P.MOBILENET_BLOCKS
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, 10)
        self._load(P.mobilenet_like())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads
        q, k, v = (
            t.reshape(b, s, self.heads, d).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1)
        )
        probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        return self.out((probs @ v).transpose(1, 2).reshape(b, s, h))


class _FFN(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.act = nn.GELU()  # exact (erf) form
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(_Example):
    """Pre-LN block: x + attn(ln1(x)), then h + ffn(ln2(h)); qkv/fc1 in 4x4 blocks,
    out/fc2 in 16x1 blocks (``[out, in]``), 25% block density."""

    def __init__(self) -> None:
        super().__init__()
        h, f, nh = (P.TRANSFORMER[k] for k in ("hidden", "ffn", "heads"))
        self.ln1 = nn.LayerNorm(h)
        self.attn = _Attention(h, nh)
        self.ln2 = nn.LayerNorm(h)
        self.ffn = _FFN(h, f)
        self._load(P.transformer_block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.ln1(x))
        return h + self.ffn(self.ln2(h))


def mlp_2to4() -> MLP:
    return MLP()


def mobilenet_like() -> MobileNetLike:
    return MobileNetLike()


def transformer_block() -> TransformerBlock:
    return TransformerBlock()


ALL: dict[str, Callable[[], _Example]] = {
    "mlp_2to4": mlp_2to4,
    "mobilenet_like": mobilenet_like,
    "transformer_block": transformer_block,
}
