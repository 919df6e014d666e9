"""Fold an inference-mode BatchNormalization into the convolution before it.

``BatchNormalization(Conv(X, W, B), scale, bias, mean, var) -> Conv(X, W', B')`` when
W, B, scale, bias, mean and var are constants, the Conv's output has the BatchNorm as its
only consumer (and is not a graph output), and the BatchNorm is in inference mode
(``training_mode`` absent or 0, only its first output used). With
``s = scale / sqrt(var + epsilon)``:

    W'[o] = W[o] * s[o]          B'[o] = (B[o] - mean[o]) * s[o] + bias[o]   (B = 0 if absent)

Works for every ``group`` (depthwise too): W's first axis is always the output channel.
The Conv's output value takes over the BatchNorm output's name, shape and graph-output
status, so values after it keep their names. Arithmetic is in float64, stored as float32.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import SparsecPass
from .weights import const_array, set_const_input


def match_conv_bn(bn: ir.Node) -> str | None:
    """Why ``bn`` cannot be folded into the Conv before it (None when it can)."""
    where = f"BatchNormalization node {bn.name}"
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
        return f"{bn.op_type} node {bn.name} is not a BatchNormalization"
    if bn.attributes.get_int("training_mode", 0):
        return f"{where} is in training mode"
    if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
        return f"{where}: its running statistics outputs are used"
    x = bn.inputs[0]
    conv = x.producer() if x is not None else None
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return f"{where}: input is not produced by a Conv"
    if len(x.uses()) != 1 or x.is_graph_output():
        return f"{where}: Conv {conv.name}'s output has other users"
    if any(const_array(v) is None for v in bn.inputs[1:5]):
        return f"{where}: scale, bias, mean and var must be constants"
    w = const_array(conv.inputs[1])
    if w is None or w.dtype != np.float32 or w.ndim < 3:
        return f"{where}: Conv {conv.name}'s weight is not a constant fp32 tensor"
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and const_array(conv.inputs[2]) is None:
        return f"{where}: Conv {conv.name}'s bias is not a constant"
    return None


class FoldBatchNormPass(SparsecPass):
    """``BN(Conv(x)) -> Conv'(x)``; counts["folded"]."""

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        for bn in list(graph):
            if match_conv_bn(bn) is not None:
                continue
            conv = bn.inputs[0].producer()
            with self.at(conv.name, conv.inputs[1].name):
                self._fold(graph, conv, bn)
            self.counts["folded"] += 1
        return self.counts["folded"] > 0

    @staticmethod
    def _fold(graph: ir.Graph, conv: ir.Node, bn: ir.Node) -> None:
        scale, beta, mean, var = (const_array(v).astype(np.float64) for v in bn.inputs[1:5])
        eps = bn.attributes.get_float("epsilon", 1e-5)
        w = const_array(conv.inputs[1]).astype(np.float64)
        o = w.shape[0]
        has_b = len(conv.inputs) > 2 and conv.inputs[2] is not None
        b = const_array(conv.inputs[2]).astype(np.float64) if has_b else np.zeros(o)
        s = scale.reshape(o) / np.sqrt(var.reshape(o) + eps)
        new_w = (w * s.reshape(o, *([1] * (w.ndim - 1)))).astype(np.float32)
        new_b = ((b.reshape(o) - mean.reshape(o)) * s + beta.reshape(o)).astype(np.float32)
        base = conv.name or "conv"
        set_const_input(graph, conv, 1, new_w, conv.inputs[1].name or f"{base}.weight")
        set_const_input(graph, conv, 2, new_b, f"{base}.bias")

        conv_out, bn_out = conv.outputs[0], bn.outputs[0]
        name, shape, type_ = bn_out.name, bn_out.shape, bn_out.type
        bn_out.replace_all_uses_with(conv_out, replace_graph_outputs=True)
        graph.remove(bn, safe=True)
        bn_out.name = None
        conv_out.name, conv_out.shape = name, shape or conv_out.shape
        conv_out.type = type_ or conv_out.type
