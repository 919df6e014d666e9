"""The five example models used by tests, the demo and the docs, as ONNX.

Each function returns an ``Example``: an opset-17 ``onnx.ModelProto`` with seeded random
weights (initializers under torch-style names), seeded float32 inputs, and ``planted``,
the sparsity pattern promised for each weight-bearing initializer (``[out, in]``
orientation; see ``sparsec.models.params``). All shapes are concrete.

| name                | graph                                                             |
|---------------------|-------------------------------------------------------------------|
| ``mlp_2to4``        | x[8,256] -> Gemm 2:4 -> Relu -> Gemm 2:4 -> Relu -> Gemm dense      |
| ``mobilenet_like``  | x[1,3,64,64] -> stem -> 3 x (depthwise, sparse 1x1) -> GAP -> Gemm  |
| ``transformer_block`` | x[1,32,128] -> pre-LN attention + erf-Gelu FFN, block-sparse MatMuls |
| ``lm_head``         | x[1,256] -> MatMul [256, 4096] at 95%                             |
| ``half_zero_rows``  | x[4,512] -> Gemm with 256 zero output rows -> Relu -> Gemm        |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from sparsec.models import params as P
from sparsec.models.onnx_graph import GraphBuilder


@dataclass
class Example:
    name: str
    onnx_model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    planted: dict[str, dict]
    description: str = ""
    outputs: list[str] = field(default_factory=list)


def _example(name: str, g: GraphBuilder, ep: P.ExampleParams, doc: str) -> Example:
    model = g.model(doc)
    outs = [o.name for o in model.graph.output]
    return Example(name, model, ep.inputs, ep.planted, doc, outs)


def _gemm(g: GraphBuilder, p: dict, x: str, layer: str, bias: bool = True) -> str:
    """``Gemm(x, W, b, transB=1)`` with ``W`` ``[out, in]``, named after the layer."""
    ins = [x, g.weight(f"{layer}.weight", p[f"{layer}.weight"])]
    if bias:
        ins.append(g.weight(f"{layer}.bias", p[f"{layer}.bias"]))
    return g.op("Gemm", ins, layer, transB=1)


def _linear_matmul(g: GraphBuilder, p: dict, x: str, layer: str, bias: bool = True) -> str:
    """``MatMul(x, Wᵀ)`` (+ ``Add b``): torch's ``[out, in]`` weight stored as ``[in, out]``."""
    y = g.op("MatMul", [x, g.weight(f"{layer}.weight", p[f"{layer}.weight"].T)], layer)
    if bias:
        y = g.op("Add", [y, g.weight(f"{layer}.bias", p[f"{layer}.bias"])], f"{layer}.bias_add")
    return y


def mlp_2to4() -> Example:
    ep = P.mlp_2to4()
    g = GraphBuilder("mlp_2to4")
    h = g.input("x", ep.inputs["x"].shape)
    for layer in ("fc1", "fc2"):
        h = g.op("Relu", [_gemm(g, ep.params, h, layer)], f"{layer}.relu")
    g.output(_gemm(g, ep.params, h, "fc3"), (8, 10))
    return _example("mlp_2to4", g, ep, "Three Gemm layers; fc1 and fc2 pruned to 2:4.")


def _conv(g, p, x, layer, *, group=1, stride=1, k=3) -> str:
    ins = [x, g.weight(f"{layer}.weight", p[f"{layer}.weight"])]
    if f"{layer}.bias" in p:
        ins.append(g.weight(f"{layer}.bias", p[f"{layer}.bias"]))
    pad = k // 2
    attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [pad] * 4}
    return g.op("Conv", ins, layer, group=group, **attrs)


def _bn(g, p, x, layer) -> str:
    stats = ("weight", "bias", "running_mean", "running_var")
    names = [g.weight(f"{layer}.{s}", p[f"{layer}.{s}"]) for s in stats]
    return g.op("BatchNormalization", [x, *names], layer, epsilon=1e-5)


def _relu6(g, x, name) -> str:
    return g.op("Clip", [x, g.const(0.0, name="zero"), g.const(6.0, name="six")], name)


def mobilenet_like() -> Example:
    ep = P.mobilenet_like()
    p = ep.params
    g = GraphBuilder("mobilenet_like")
    h = g.input("x", ep.inputs["x"].shape)
    h = _relu6(g, _bn(g, p, _conv(g, p, h, "stem.conv", stride=2), "stem.bn"), "stem.act")
    for name, cin, _, stride, bn, _ in P.MOBILENET_BLOCKS:
        h = _conv(g, p, h, f"{name}.dw", group=cin, stride=stride)
        h = _relu6(g, _bn(g, p, h, f"{name}.dw_bn") if bn else h, f"{name}.dw_act")
        h = _conv(g, p, h, f"{name}.pw", k=1)
        h = _relu6(g, _bn(g, p, h, f"{name}.pw_bn") if bn else h, f"{name}.pw_act")
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h], "pool")], "flatten", axis=1)
    g.output(_gemm(g, p, h, "classifier"), (1, 10))
    doc = "Depthwise-separable CNN: dense stem and depthwise convs, 1x1 convs at 88/90/85%."
    return _example("mobilenet_like", g, ep, doc)


def _layernorm(g, p, x, layer) -> str:
    w, b = (g.weight(f"{layer}.{s}", p[f"{layer}.{s}"]) for s in ("weight", "bias"))
    return g.op("LayerNormalization", [x, w, b], layer, axis=-1, epsilon=1e-5)


def _attention(g, p, x) -> str:
    """Multi-head self-attention with softmax(q·kᵀ / sqrt(d))·v, heads split by Reshape."""
    s, h, nh = P.TRANSFORMER["seq"], P.TRANSFORMER["hidden"], P.TRANSFORMER["heads"]
    d = h // nh
    qkv = _linear_matmul(g, p, x, "attn.qkv")
    q, k, v = g.op("Split", [qkv], "attn.split", outputs=3, axis=-1)
    heads = g.const([1, s, nh, d], np.int64, "attn.heads_shape")
    # q, v -> [1, heads, seq, d]; k -> [1, heads, d, seq] (already transposed for q·kᵀ)
    perms = {"q": [0, 2, 1, 3], "k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}
    split = {"q": q, "k": k, "v": v}
    for n, t in split.items():
        t = g.op("Reshape", [t, heads], f"attn.{n}_heads")
        split[n] = g.op("Transpose", [t], f"attn.{n}_t", perm=perms[n])
    q, k, v = split["q"], split["k"], split["v"]
    scores = g.op("MatMul", [q, k], "attn.scores")
    scores = g.op("Div", [scores, g.const(math.sqrt(d), name="attn.sqrt_d")], "attn.scale")
    probs = g.op("Softmax", [scores], "attn.softmax", axis=-1)
    ctx = g.op("MatMul", [probs, v], "attn.ctx")
    ctx = g.op("Transpose", [ctx], "attn.ctx_t", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const([1, s, h], np.int64, "attn.merge_shape")], "attn.merge")
    return _linear_matmul(g, p, ctx, "attn.out")


def _gelu_erf(g, x, name) -> str:
    """``x * 0.5 * (1 + Erf(x / sqrt(2)))``, the exact Gelu as exporters write it."""
    e = g.op("Div", [x, g.const(math.sqrt(2.0), name="sqrt2")], f"{name}.div")
    e = g.op("Erf", [e], f"{name}.erf")
    e = g.op("Add", [e, g.const(1.0, name="one")], f"{name}.add")
    return g.op("Mul", [g.op("Mul", [x, e], f"{name}.mul"), g.const(0.5, name="half")], name)


def transformer_block() -> Example:
    ep = P.transformer_block()
    p = ep.params
    g = GraphBuilder("transformer_block")
    x = g.input("x", ep.inputs["x"].shape)
    h = g.op("Add", [x, _attention(g, p, _layernorm(g, p, x, "ln1"))], "attn.residual")
    f = _linear_matmul(g, p, _layernorm(g, p, h, "ln2"), "ffn.fc1")
    f = _linear_matmul(g, p, _gelu_erf(g, f, "ffn.gelu"), "ffn.fc2")
    g.output(g.op("Add", [h, f], "ffn.residual"), ep.inputs["x"].shape)
    doc = "Pre-LN transformer block, 4 heads; qkv/fc1 in 4x4 blocks, out/fc2 in 16x1 blocks."
    return _example("transformer_block", g, ep, doc)


def lm_head() -> Example:
    ep = P.lm_head()
    g = GraphBuilder("lm_head")
    x = g.input("x", ep.inputs["x"].shape)
    g.output(_linear_matmul(g, ep.params, x, "lm_head", bias=False), (1, 4096))
    return _example("lm_head", g, ep, "A 95%-sparse vocabulary projection at batch 1.")


def half_zero_rows() -> Example:
    ep = P.half_zero_rows()
    g = GraphBuilder("half_zero_rows")
    x = g.input("x", ep.inputs["x"].shape)
    h = g.op("Relu", [_gemm(g, ep.params, x, "fc1")], "fc1.relu")
    g.output(_gemm(g, ep.params, h, "fc2"), (4, 64))
    doc = "fc1 has half of its output channels (and their bias) zero; fc2 is dense."
    return _example("half_zero_rows", g, ep, doc)


ALL: dict[str, Callable[[], Example]] = {
    "mlp_2to4": mlp_2to4,
    "mobilenet_like": mobilenet_like,
    "transformer_block": transformer_block,
    "lm_head": lm_head,
    "half_zero_rows": half_zero_rows,
}


def save(example: Example, path: str | Path, *, inputs_path: str | Path | None = None) -> Path:
    """Write the model to ``path`` (``.onnx``) and, when asked, its inputs to an ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(example.onnx_model, str(path))
    if inputs_path is not None:
        np.savez(Path(inputs_path), **example.inputs)
    return path
