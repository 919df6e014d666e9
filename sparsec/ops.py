"""The two custom ONNX ops that the passes emit and every backend lowers.

Domain ``ai.sparsec`` (opset 1). A planned weight-bearing op and its fused epilogue become
one node; the value names around it stay those of the original graph, so the first and
last values of a fused group can be compared with the original model.

``SparseLinear``: ``Y = epilogue(X · Wᵀ)`` with ``W`` of shape ``[out_features, in_features]``.
  X has any rank >= 1 and last dim ``in_features``; Y has X's leading dims and ``out_features``.
``SparseConv``: ``Y = epilogue(conv2d(X, W))``, X in NCHW, ``W`` ``[O, C*kh*kw]`` (group 1).

Inputs, in this order:
  0. X
  1.. the layout's format arrays (``sparsec.formats``, in their dict order), as initializers
  then ``bias`` [out] when "bias" is in the epilogue
  then ``residual`` (Y's shape) when "residual" is in the epilogue
  then, for a SparseConv with a fused depthwise conv, ``dw_weight`` [O, 1, kh, kw] and
  ``dw_bias`` [O] when "bias" is in ``dw_epilogue`` (C instead of O with dw_before)
  then, with a fused projection too, its format arrays, bias and residual, as above

Attributes:
  layout (str), out_features (int), in_features (int), entry (str: the Plan entry's node),
  rows (int, optional: the GEMM rows the plan chose the layout for, batch x sequence or
  N x OH x OW, 1 when the shapes are not static; a kernel may lay its arrays out for it),
  epilogue (strings, in order, from ``sparsec.plan.EPILOGUE_OPS``), clip_min/clip_max (float);
  SparseConv also: kernel_shape, strides, pads (top, left, bottom, right), dilations; and
  with a fused depthwise conv (``passes/fuse_depthwise.py``): dw_kernel_shape, dw_strides,
  dw_pads, dw_epilogue (+ dw_clip_min/dw_clip_max). Then
  ``Y = dw_epilogue(depthwise_conv2d(epilogue(conv2d(X, W)), dw_weight))``. A fused 1x1
  projection after that adds pj_entry, pj_layout, pj_out_features, pj_epilogue
  (+ pj_clip_min/pj_clip_max): ``Y = pj_epilogue(conv2d(that, W_pj))``. With dw_before = 1
  the depthwise conv comes first instead, over the C input channels (``dw_weight``
  [C, 1, kh, kw], ``dw_bias`` [C]):
  ``Y = epilogue(conv2d(dw_epilogue(depthwise_conv2d(X, dw_weight)), W))``, W a 1x1 conv.
  A 1x1 SparseConv with a fused head (``passes/fuse_head.py``) has pool = "mean", ln_entry,
  ln_layout, ln_out_features, ln_epilogue (+ ln_clip_min/ln_clip_max), the linear's format
  arrays and bias after its own inputs, and Y ``[N, ln_out_features]``:
  ``Y = ln_epilogue(mean_hw(epilogue(conv2d(X, W))) · W_lnᵀ)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from math import erf, sqrt

import numpy as np

from sparsec.plan import ConvAttrs, EpilogueStep

DOMAIN = "ai.sparsec"
LINEAR = "SparseLinear"
CONV = "SparseConv"
OP_TYPES = (LINEAR, CONV)


@dataclass
class SparseOpSpec:
    """The attributes of a SparseLinear / SparseConv node, read into plain Python."""

    op_type: str
    layout: str
    out_features: int
    in_features: int
    entry: str
    epilogue: list[EpilogueStep]
    array_names: list[str]  # format array input names, in order
    conv: ConvAttrs | None = None
    depthwise: ConvAttrs | None = None  # a fused depthwise conv after the conv (group = out)
    dw_epilogue: list[EpilogueStep] = field(default_factory=list)
    project: SparseOpSpec | None = None  # a fused 1x1 projection after the depthwise conv
    rows: int = 0  # the GEMM rows the plan expected (attribute ``rows``); 0: not given
    dw_before: bool = False  # the depthwise conv comes before the conv (it reads X; group =
    # in) instead of after it; the conv is then the projection (attribute ``dw_before``)
    head: SparseOpSpec | None = None  # a fused global average pool and SparseLinear after it

    @property
    def has_dw_bias(self) -> bool:
        return any(s.op == "bias" for s in self.dw_epilogue)

    @property
    def has_bias(self) -> bool:
        return any(s.op == "bias" for s in self.epilogue)

    @property
    def has_residual(self) -> bool:
        return any(s.op == "residual" for s in self.epilogue)


def epilogue_attrs(steps: list[EpilogueStep], prefix: str = "") -> dict[str, object]:
    attrs: dict[str, object] = {f"{prefix}epilogue": [s.op for s in steps]}
    for s in steps:
        if s.op == "clip":
            attrs[f"{prefix}clip_min"] = float(-np.inf if s.min is None else s.min)
            attrs[f"{prefix}clip_max"] = float(np.inf if s.max is None else s.max)
    return attrs


def epilogue_from_attrs(ops: list[str], clip_min: float | None, clip_max: float | None):
    return [
        EpilogueStep(op, clip_min, clip_max) if op == "clip" else EpilogueStep(op) for op in ops
    ]


def apply_epilogue(
    acc: np.ndarray,
    steps: list[EpilogueStep],
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    channel_axis: int = -1,
) -> np.ndarray:
    """Numpy reference of an epilogue (float32 throughout); kernels must match it."""
    y = acc.astype(np.float32, copy=True)
    for s in steps:
        if s.op == "bias":
            shape = [1] * y.ndim
            shape[channel_axis] = -1
            y = y + bias.reshape(shape)
        elif s.op == "relu":
            y = np.maximum(y, 0)
        elif s.op == "clip":
            y = np.clip(y, -np.inf if s.min is None else s.min, np.inf if s.max is None else s.max)
        elif s.op == "gelu":
            y = 0.5 * y * (1 + _erf(y / sqrt(2)))
        elif s.op == "sigmoid":
            y = 1 / (1 + np.exp(-y))
        elif s.op == "residual":
            y = y + residual
        else:
            raise ValueError(f"unknown epilogue step {s.op!r}")
    return y.astype(np.float32)


_erf = np.vectorize(erf, otypes=[np.float64])
