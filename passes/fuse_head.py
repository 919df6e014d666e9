"""Fuse a CNN's classifier head, a 1x1 conv, its global average pool and the linear layer
after it, into one SparseConv:

    SparseLinear[dense](Flatten(GlobalAveragePool(SparseConv[dense, 1x1](X, ...))), ...)
        -> SparseConv(X, ..., <the linear's arrays and bias>) with pool = "mean",
           ln_entry, ln_layout, ln_out_features, ln_epilogue (+ ln_clip_*)

whose output is the linear's, ``[N, out]``. The pool is a GlobalAveragePool or a ReduceMean
over axes 2 and 3 (either keepdims); between it and the linear an optional Reshape, Flatten
or Squeeze that leaves ``[N, C]``. The conv is a plain 1x1 conv (stride 1, no padding, no
fused depthwise conv) on an image of at most ``HEAD_MAX_PIXELS`` pixels, dense, as the
linear is; each value between them has that one use and is not a graph output.

Why (``codegen/tvm/kernels/conv_head.py``): the linear is a GEMV over a weight read once per
image, MobileNetV2's 1280x1000 classifier a 5 MB one; by the time it runs, the rest of the
model has pushed that weight out of the caches, and it waits on memory (113 us in the model
against 32 us timed alone, Zen 4). Fused, the weight streams in while the conv computes, the
conv's output never leaves registers and the pool is a sum on the way out.

The Plan records it: the linear's entry gets ``fused_into`` the conv's, the conv's entry
``pool_nodes`` (the pool and reshape nodes absorbed). Runs after ``fuse_depthwise``.
Counts: ``fused`` and ``skipped: <reason>`` for every dense SparseLinear reading a pool.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec import ops
from sparsec.layouts import parse_layout

from .base import FusionPass, carried_attrs
from .mark_epilogues import _is_onnx, _single_use
from .weights import const_array

HEAD_KINDS = ("dense",)  # layouts of both: the kernel's GEMM and its weight stream
HEAD_MAX_PIXELS = 256  # the conv's image: the pixel-rows GEMM's (``conv_pixel_rows``)


def pooled(linear: ir.Node) -> tuple[ir.Node | None, list[ir.Node]] | None:
    """(the node whose output is pooled, the pool and reshape nodes) when ``linear`` reads a
    mean pool over H and W (through an optional Reshape, Flatten or Squeeze), else None."""
    between: list[ir.Node] = []
    node = linear.inputs[0].producer() if linear.inputs else None
    if node is not None and _is_onnx(node, "Reshape", "Flatten", "Squeeze"):
        between.append(node)
        node = node.inputs[0].producer()
    if node is None or not _is_pool(node):
        return None
    return node.inputs[0].producer(), [node, *between]


def match_head(linear: ir.Node) -> tuple[ir.Node, list[ir.Node]] | str | None:
    """(the SparseConv, the pool and reshape nodes) whose mean feeds ``linear``, why not, or
    None when ``linear`` does not read a pool at all."""
    found = pooled(linear)
    if found is None:
        return None
    conv, between = found
    a = linear.attributes
    if parse_layout(a.get_string("layout")).kind not in HEAD_KINDS:
        return f"linear layout {a.get_string('layout')} is not {' or '.join(HEAD_KINDS)}"
    if "residual" in a.get_strings("epilogue", ()):
        return "the linear has a residual"
    if conv is None or conv.domain != ops.DOMAIN or conv.op_type != ops.CONV:
        return "the pool does not read a SparseConv"
    c = conv.attributes
    if parse_layout(c.get_string("layout")).kind not in HEAD_KINDS:
        return f"conv layout {c.get_string('layout')} is not {' or '.join(HEAD_KINDS)}"
    if (tuple(c.get_ints("kernel_shape")) != (1, 1) or tuple(c.get_ints("strides")) != (1, 1)
            or any(c.get_ints("pads")) or c.get_strings("dw_epilogue", None) is not None):
        return "the conv is not a plain 1x1 conv with stride 1, no padding, nothing fused"
    shape = conv.outputs[0].shape
    if shape is None or not shape.is_static() or len(shape) != 4:
        return "the conv's output shape is not static NCHW"
    n, o, h, w = (int(d) for d in shape)
    if h * w > HEAD_MAX_PIXELS:
        return f"the conv's image has {h * w} pixels, more than {HEAD_MAX_PIXELS}"
    x = linear.inputs[0].shape
    if x is None or not x.is_static() or tuple(int(d) for d in x) != (n, o) \
            or a.get_int("in_features") != o:
        return f"the linear does not read [{n}, {o}]"
    if (value := shared(conv, between)) is not None:
        return f"{value.name} has another use or is a graph output"
    return conv, between


def shared(source: ir.Node, between: list[ir.Node]) -> ir.Value | None:
    """The first value from ``source`` through the pool and reshape nodes to the linear that
    has another use or is a graph output (the fusion would drop it), or None."""
    for value in (source.outputs[0], *(b.outputs[0] for b in between)):
        if _single_use(value) is None:
            return value
    return None


def _is_pool(node: ir.Node) -> bool:
    """A mean over axes 2 and 3 of an NCHW tensor."""
    if _is_onnx(node, "GlobalAveragePool"):
        return True
    if not _is_onnx(node, "ReduceMean"):
        return False
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1:
        data = const_array(node.inputs[1])
        axes = None if data is None else [int(v) for v in np.asarray(data).reshape(-1)]
    rank = len(node.inputs[0].shape or ())
    return rank == 4 and axes is not None and sorted(a % 4 for a in axes) == [2, 3]


class FuseHeadPass(FusionPass):
    """SparseConv 1x1 + mean pool + SparseLinear -> one SparseConv (module docstring)."""

    def fuse(self, graph: ir.Graph, entries: dict) -> bool:
        for linear in list(graph):
            if linear.domain != ops.DOMAIN or linear.op_type != ops.LINEAR:
                continue
            entry = entries[linear.attributes.get_string("entry")]
            with self.at(linear.name, entry.weight):
                found = match_head(linear)
                if found is None:
                    continue
                if isinstance(found, str):
                    self.counts[f"skipped: {found}"] += 1
                    continue
                self._fuse(graph, linear, *found, entries)
                self.counts["fused"] += 1
        return self.counts["fused"] > 0

    def _fuse(self, graph: ir.Graph, linear: ir.Node, conv: ir.Node, between: list[ir.Node],
              entries: dict) -> None:
        attrs = [ir.AttrString("pool", "mean"), *carried_attrs(linear, "ln_")]
        fused = ir.Node(ops.DOMAIN, ops.CONV, [*conv.inputs, *linear.inputs[1:]],
                        [*conv.attributes.values(), *attrs], name=conv.name)
        ir.convenience.replace_nodes_and_values(graph, linear, [conv, *between, linear],
                                                [fused], [linear.outputs[0]], [fused.outputs[0]])
        host = entries[conv.attributes.get_string("entry")]
        host.pool_nodes = [n.name for n in between]
        entries[linear.attributes.get_string("entry")].fused_into = host.node
