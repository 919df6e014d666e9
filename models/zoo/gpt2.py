"""A GPT-2-small-style decoder (Radford et al. 2019): pre-LayerNorm blocks, tanh GELU,
final LayerNorm and LM head; in two shapes of the same weights.

- ``GPT2Decode``: one decode step at batch 1, the memory-bound LLM case::

      (x[b, 1, hidden], past[layers, 2, b, heads, P, head_dim])
          -> (logits[b, 1, vocab], present[layers, 2, b, heads, P + 1, head_dim])

  Each layer concatenates the new token's key and value onto its slice of ``past``
  (``past[i, 0]`` keys, ``past[i, 1]`` values) and attends over all ``P + 1`` positions;
  no mask is needed.
- ``GPT2Prefill``: the prompt, compute-bound::

      x[b, S, hidden] -> (logits[b, S, vocab], present[layers, 2, b, heads, S, head_dim])

  with a causal mask held as a constant buffer (``0`` on and below the diagonal,
  ``-1e9`` above), so there are no integer inputs.

``present`` of a prefill is the ``past`` of the next decode step. The inputs are float32
*embeddings* (token + position, ``wte[ids] + wpe[pos]``): sparsec compiles float32 inputs
only, so the embedding lookup stays outside the compiled model. The LM head (``hidden ->
vocab``, no bias) is inside and prunable; ``vocab`` defaults to 8192 to keep the zoo
light (GPT-2's 50257 works). Prunable: ``attn.qkv``, ``attn.out``, ``ffn.fc1``,
``ffn.fc2`` of every layer, and ``lm_head``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsec.models.zoo import config, seeded_build
from sparsec.models.zoo.bert import AttentionProjections, FeedForward

DEFAULT = {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "vocab": 8192,
           "seq": 128, "past": 128}
TINY = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "vocab": 512, "seq": 16, "past": 16}
PRUNABLE = ("layers.*.attn.qkv", "layers.*.attn.out", "layers.*.ffn.fc1", "layers.*.ffn.fc2",
            "lm_head")
EPS = 1e-5  # GPT-2's LayerNorm epsilon
MASKED = -1e9  # added to the scores of future positions in the prefill


class CausalSelfAttention(AttentionProjections):
    def forward(self, x: torch.Tensor, past: torch.Tensor | None,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``past`` ``[2, b, heads, P, d]`` or None; returns (output, ``[2, b, heads, P+s, d]``)."""
        b, s, h = x.shape
        d = h // self.heads
        q, k, v = (t.reshape(b, s, self.heads, d).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        if past is not None:
            past_k, past_v = past.unbind(0)  # Split, not Gather (TVM's take warns)
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if mask is not None:
            scores = scores + mask
        ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, s, h)
        return self.out(ctx), torch.stack([k, v])


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=EPS)
        self.attn = CausalSelfAttention(hidden, heads)
        self.ffn_norm = nn.LayerNorm(hidden, eps=EPS)
        self.ffn = FeedForward(hidden, ffn, approximate="tanh")  # GPT-2's "gelu_new"

    def forward(self, x: torch.Tensor, past: torch.Tensor | None,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        a, kv = self.attn(self.attn_norm(x), past, mask)
        x = x + a
        return x + self.ffn(self.ffn_norm(x)), kv


class GPT2(nn.Module):
    """The weights shared by both shapes: ``layers.i``, ``norm`` (ln_f) and ``lm_head``."""

    def __init__(self, layers: int, hidden: int, heads: int, ffn: int, vocab: int,
                 seq: int, past: int) -> None:
        super().__init__()
        self.hidden, self.heads, self.seq, self.past = hidden, heads, seq, past
        self.layers = nn.ModuleList(DecoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden, eps=EPS)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def _run(self, x: torch.Tensor, past: torch.Tensor | None, mask: torch.Tensor | None):
        pasts = [None] * len(self.layers) if past is None else past.unbind(0)
        present = []
        for layer, layer_past in zip(self.layers, pasts):
            x, kv = layer(x, layer_past, mask)
            present.append(kv)
        return self.lm_head(self.norm(x)), torch.stack(present)


class GPT2Decode(GPT2):
    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, past, None)


class GPT2Prefill(GPT2):
    def __init__(self, **cfg) -> None:
        super().__init__(**cfg)
        s = self.seq
        mask = torch.full((s, s), MASKED).triu(1)  # 0 on and below the diagonal
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, None, self.causal_mask)


def build_decode(seed: int = 0, **size) -> GPT2Decode:
    """An eval-mode ``GPT2Decode``; the same seed gives ``build_prefill``'s weights."""
    return seeded_build(GPT2Decode, seed, **config(DEFAULT, size))


def build_prefill(seed: int = 0, **size) -> GPT2Prefill:
    """An eval-mode ``GPT2Prefill`` for ``seq`` tokens; same weights as ``build_decode``."""
    return seeded_build(GPT2Prefill, seed, **config(DEFAULT, size))


def decode_inputs(batch: int = 1, seed: int = 0, **size) -> tuple[torch.Tensor, ...]:
    """``(x, past)``: standard normal ``[batch, 1, hidden]`` and
    ``[layers, 2, batch, heads, past, hidden // heads]``."""
    c = config(DEFAULT, size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, c["hidden"], generator=g)
    shape = (c["layers"], 2, batch, c["heads"], c["past"], c["hidden"] // c["heads"])
    return x, torch.randn(*shape, generator=g)


def prefill_inputs(batch: int = 1, seed: int = 0, **size) -> tuple[torch.Tensor, ...]:
    """``(x,)``: standard normal ``[batch, seq, hidden]`` embeddings."""
    c = config(DEFAULT, size)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, c["seq"], c["hidden"], generator=g),)
