"""A BERT-base-style encoder (Devlin et al. 2019): post-LayerNorm blocks, exact GELU.

``x[batch, seq, hidden] -> embed_norm -> layers.0 .. layers.{L-1} -> [batch, seq, hidden]``

The input is the float32 *sum of the embeddings* (token + position + segment): sparsec
compiles float32 inputs only, so the token-id lookup stays outside the compiled model
(``hidden = embedding(ids) + ...`` in the caller). No attention mask (unpadded batch)
and no pooler: the output is the last hidden state.

A layer ``layers.i`` is::

    x = attn_norm(x + attn.out(softmax(q kᵀ / sqrt(d)) v)),  q, k, v = split(attn.qkv(x))
    x = ffn_norm(x + ffn.fc2(gelu(ffn.fc1(x))))

Prunable: ``attn.qkv`` (fused q/k/v), ``attn.out``, ``ffn.fc1``, ``ffn.fc2`` of every
layer. Defaults are BERT-base (12 layers, 768 hidden, 12 heads, 3072 FFN, 110 M weights
with embeddings, 85 M here) at sequence length 128.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsec.models.zoo import config, seeded_build

DEFAULT = {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "seq": 128}
TINY = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "seq": 16}
PRUNABLE = ("layers.*.attn.qkv", "layers.*.attn.out", "layers.*.ffn.fc1", "layers.*.ffn.fc2")
EPS = 1e-12  # BERT's LayerNorm epsilon


class AttentionProjections(nn.Module):
    """The fused q/k/v projection and the output projection of multi-head attention; the
    subclasses (BERT's here, GPT-2's causal one with a KV cache) define ``forward``."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)


class SelfAttention(AttentionProjections):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads
        q, k, v = (t.reshape(b, s, self.heads, d).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        return self.out((probs @ v).transpose(1, 2).reshape(b, s, h))


class FeedForward(nn.Module):
    """fc1 -> GELU -> fc2. ``approximate="none"`` is BERT's exact (erf) GELU; GPT-2 uses
    ``"tanh"`` (its "gelu_new")."""

    def __init__(self, hidden: int, inner: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.attn_norm = nn.LayerNorm(hidden, eps=EPS)
        self.ffn = FeedForward(hidden, ffn)
        self.ffn_norm = nn.LayerNorm(hidden, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x))
        return self.ffn_norm(x + self.ffn(x))


class BertEncoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, ffn: int, seq: int) -> None:
        super().__init__()
        self.hidden, self.seq = hidden, seq
        self.embed_norm = nn.LayerNorm(hidden, eps=EPS)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x


def build(seed: int = 0, **size) -> BertEncoder:
    """An eval-mode ``BertEncoder`` with seeded weights; ``size`` overrides ``DEFAULT``."""
    return seeded_build(BertEncoder, seed, **config(DEFAULT, size))


def example_inputs(batch: int = 1, seed: int = 0, **size) -> tuple[torch.Tensor, ...]:
    """``(hidden_states,)``: standard normal ``[batch, seq, hidden]`` embeddings."""
    cfg = config(DEFAULT, size)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, cfg["seq"], cfg["hidden"], generator=g),)
