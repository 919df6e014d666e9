"""Fuse a depthwise conv into the sparse 1x1 conv that feeds it (an inverted-residual block's
expand + depthwise pair):

    act(Conv[group=O](SparseConv[csr|chw-spmm, 1x1](X, ...), Wd, Bd?))
        -> SparseConv(X, ..., Wd, Bd?) with dw_kernel_shape, dw_strides, dw_pads, dw_epilogue

when the SparseConv is a 1x1 conv with stride 1, no padding and no residual, its output has
one use and is not a graph output; the Conv has ``group == O``, a constant ``[O, 1, kh, kw]``
weight, a constant ``[O]`` bias or none, no dilation, equal strides of 1 or 2 (2 needs an
even input width), explicit pads (``auto_pad`` NOTSET) and a static ``[N, O, H, W]`` input;
``act`` is a chain of Relu / Clip with constant bounds, each with one use and not a graph
output (possibly empty). The expanded tensor then lives one channel at a time in cache
(``codegen/tvm/kernels/conv_dw.py``) instead of making a round trip through memory.

Then the block's projection joins too:

    SparseConv[csr|chw-spmm, 1x1](fused(X)) -> fused(X) with pj_entry, pj_layout,
        pj_out_features, pj_epilogue (+ pj_clip_*), and the projection's format arrays,
        bias and residual appended to the inputs

when the fused node's output has one use, a plain 1x1 SparseConv (stride 1, no padding)
with a sparse layout, so the depthwise output is not written out either; each task
accumulates its channels' share of the projection in cache (``conv_dw``).

A depthwise conv with no sparse 1x1 conv before it (a MobileNetV2's first block reads the
stem's output) joins the projection after it instead:

    SparseConv[csr|chw-spmm, 1x1](act(Conv[group=C](X, Wd, Bd?)))
        -> SparseConv(X, ...) with dw_before = 1 and the dw_* attributes

when the depthwise conv and its activations have no other use; its output then never goes
to memory (``entry.depthwise.before``). Counted as ``fused before``.

One left then (its projection dense: MobileNetV2 at 0-50%) joins a dense kxk conv before
it, the stem, when it is 3x3 with stride 1 and padding 1 (``match_conv_depthwise``):

    act(Conv[group=O](SparseConv[dense, kxk](X, ...), Wd, Bd?)) -> SparseConv(X, ...)
        with the dw_* attributes

and the stem's output never goes to memory (``codegen/tvm/kernels/conv_stem_dw.py``).
Counted as ``fused after conv``. Its projection then joins as above, dense too: the
kernel computes it row by row from the depthwise row in L1.

The Plan records the fusions (``entry.depthwise``; the projection's entry gets
``fused_into``); the fused node's output takes the last fused value, as
``lower_sparse_ops`` does. Runs after ``lower_sparse_ops``. Counts: ``fused``,
``projections``, ``skipped: <reason>`` for every SparseConv left alone and
``projection kept: <reason>``.
"""

from __future__ import annotations

import onnx_ir as ir

from sparsec import ops
from sparsec.layouts import parse_layout
from sparsec.plan import ConvAttrs, DepthwiseFusion, EpilogueStep

from .base import FusionPass, carried_attrs
from .mark_epilogues import _clip_bounds, _is_onnx, _single_use
from .weights import const_array

FUSABLE_KINDS = ("csr", "chw-spmm", "dense")
PROJECTION_KINDS = ("csr", "chw-spmm")  # a dense projection keeps its register-blocked GEMM


def match_depthwise(sparse: ir.Node) -> tuple[ir.Node, list[ir.Node], list[EpilogueStep]] | str:
    """(the depthwise Conv, its activation nodes, its epilogue) after ``sparse``, or why not."""
    a = sparse.attributes
    if parse_layout(a.get_string("layout")).kind not in FUSABLE_KINDS:
        return f"layout {a.get_string('layout')} is not {' or '.join(FUSABLE_KINDS)}"
    if (why := _plain_1x1(sparse)) or "residual" in a.get_strings("epilogue", ()):
        return why or "not a 1x1 conv with stride 1, no padding and no residual"
    dw = _single_use(sparse.outputs[0])
    if dw is None or not _is_onnx(dw, "Conv") or dw.inputs[0] is not sparse.outputs[0]:
        return "its output does not feed exactly one Conv"
    return _depthwise(dw, a.get_int("out_features"))


def match_depthwise_before(sparse: ir.Node) -> tuple[ir.Node, list[ir.Node],
                                                     list[EpilogueStep]] | str:
    """(the depthwise Conv, its activation nodes, its epilogue) that compute ``sparse``'s
    input and nothing else, or why not (the first block of a MobileNetV2 has no expand conv:
    its depthwise conv reads the stem's output)."""
    a = sparse.attributes
    if parse_layout(a.get_string("layout")).kind not in PROJECTION_KINDS:
        return f"layout {a.get_string('layout')} is not {' or '.join(PROJECTION_KINDS)}"
    if why := _plain_1x1(sparse):
        return why
    dw = sparse.inputs[0].producer()
    while dw is not None and (_is_onnx(dw, "Relu") or _is_onnx(dw, "Clip")) and dw.inputs:
        dw = dw.inputs[0].producer()
    if dw is None or not _is_onnx(dw, "Conv"):
        return "its input does not come from a Conv (and activations)"
    found = _depthwise(dw, a.get_int("in_features"))
    if isinstance(found, str):
        return found
    _, nodes, _ = found
    if (nodes[-1] if nodes else dw).outputs[0] is not sparse.inputs[0] \
            or _single_use(sparse.inputs[0]) is not sparse:
        return f"Conv {dw.name}'s output (or its activation's) has another use"
    return found


def match_conv_depthwise(sparse: ir.Node) -> tuple[ir.Node, list[ir.Node],
                                                   list[EpilogueStep]] | str:
    """(the depthwise Conv, its activation nodes, its epilogue) after ``sparse`` when that is
    a dense kxk conv (group 1, no residual) and the depthwise conv is 3x3, stride 1,
    padding 1, or why not."""
    a = sparse.attributes
    if parse_layout(a.get_string("layout")).kind != "dense":
        return f"layout {a.get_string('layout')} is not dense"
    if (tuple(a.get_ints("kernel_shape")) == (1, 1) or a.get_int("group", 1) != 1
            or "residual" in a.get_strings("epilogue", ())
            or a.get_strings("dw_epilogue", None) is not None):
        return "not a dense kxk conv with group 1, no residual and nothing fused"
    dw = _single_use(sparse.outputs[0])
    if dw is None or not _is_onnx(dw, "Conv") or dw.inputs[0] is not sparse.outputs[0]:
        return "its output does not feed exactly one Conv"
    d = dw.attributes
    w = dw.inputs[1].shape if len(dw.inputs) > 1 and dw.inputs[1] is not None else None
    if (w is None or tuple(w)[2:] != (3, 3)
            or tuple(d.get_ints("strides", (1, 1))) != (1, 1)
            or tuple(d.get_ints("pads", (0, 0, 0, 0))) != (1, 1, 1, 1)):
        return f"Conv {dw.name} is not a 3x3 conv with stride 1 and padding 1"
    return _depthwise(dw, a.get_int("out_features"))


def _plain_1x1(sparse: ir.Node) -> str:
    """Why ``sparse`` is not a 1x1 conv with stride 1, no padding and nothing fused yet, or
    ''."""
    a = sparse.attributes
    if (tuple(a.get_ints("kernel_shape")) != (1, 1) or tuple(a.get_ints("strides")) != (1, 1)
            or any(a.get_ints("pads"))):
        return "not a 1x1 conv with stride 1 and no padding"
    if a.get_strings("dw_epilogue", None) is not None:
        return "already fused"
    return ""


def _depthwise(dw: ir.Node, channels: int) -> tuple[ir.Node, list[ir.Node],
                                                     list[EpilogueStep]] | str:
    """(``dw``, the activation nodes after it, its epilogue) when ``dw`` is a depthwise
    conv over ``channels`` the kernel computes, or why not."""
    out = channels
    w = const_array(dw.inputs[1]) if len(dw.inputs) > 1 else None
    b = const_array(dw.inputs[2]) if len(dw.inputs) > 2 and dw.inputs[2] is not None else None
    shape = dw.inputs[0].shape
    d = dw.attributes
    strides = tuple(d.get_ints("strides", (1, 1)))
    if (d.get_int("group", 1) != out or w is None or w.shape[:2] != (out, 1) or w.ndim != 4
            or (len(dw.inputs) > 2 and dw.inputs[2] is not None
                and (b is None or b.shape != (out,)))):
        return f"Conv {dw.name} is not a depthwise conv with constant weights over {out} channels"
    if (d.get_string("auto_pad", "NOTSET") != "NOTSET"
            or tuple(d.get_ints("dilations", (1, 1))) != (1, 1)
            or strides not in ((1, 1), (2, 2))):
        return f"Conv {dw.name}: needs explicit pads, no dilation and stride 1 or 2"
    if shape is None or not shape.is_static() or len(shape) != 4:
        return f"Conv {dw.name}: input shape is not static NCHW"
    if strides == (2, 2) and int(shape[3]) % 2:
        return f"Conv {dw.name}: stride 2 over an odd width {int(shape[3])}"
    steps = [EpilogueStep("bias")] if b is not None else []
    nodes: list[ir.Node] = []
    y = dw.outputs[0]
    while not y.is_graph_output() and (node := _single_use(y)) is not None:
        if _is_onnx(node, "Relu"):
            steps.append(EpilogueStep("relu"))
        elif _is_onnx(node, "Clip") and (bounds := _clip_bounds(node)) is not None:
            steps.append(EpilogueStep("clip", *bounds))
        else:
            break
        nodes.append(node)
        y = node.outputs[0]
    return dw, nodes, steps


def match_projection(fused: ir.Node, kinds=PROJECTION_KINDS) -> ir.Node | str:
    """The 1x1 SparseConv with a layout of ``kinds`` that reads ``fused``'s output (the
    block's projection), or why not."""
    pj = _single_use(fused.outputs[0])
    if pj is None or pj.domain != ops.DOMAIN or pj.op_type != ops.CONV \
            or pj.inputs[0] is not fused.outputs[0]:
        return "the output does not feed exactly one SparseConv"
    a = pj.attributes
    kind = parse_layout(a.get_string("layout")).kind
    if kind not in kinds:
        return f"projection layout {a.get_string('layout')} is not {' or '.join(kinds)}"
    if (tuple(a.get_ints("kernel_shape")) != (1, 1) or tuple(a.get_ints("strides")) != (1, 1)
            or any(a.get_ints("pads")) or a.get_strings("dw_epilogue", None) is not None):
        return "the next SparseConv is not a plain 1x1 conv with stride 1 and no padding"
    return pj


def _sparse_convs(graph: ir.Graph, entries: dict):
    """(SparseConv node, its Plan entry) for each SparseConv still in ``graph`` when the walk
    reaches it (a projection fused a moment ago is not)."""
    for node in list(graph):
        if node.domain == ops.DOMAIN and node.op_type == ops.CONV and node.graph is graph:
            yield node, entries[node.attributes.get_string("entry")]


class FuseDepthwisePass(FusionPass):
    """SparseConv 1x1 + depthwise Conv + activation -> one SparseConv (module docstring)."""

    def fuse(self, graph: ir.Graph, entries: dict) -> bool:
        for sparse, entry in _sparse_convs(graph, entries):
            with self.at(sparse.name, entry.weight):
                found = match_depthwise(sparse)
                if isinstance(found, str):
                    self.counts[f"skipped: {found}"] += 1
                    continue
                node = self._fuse(graph, sparse, entry, *found)
                self.counts["fused"] += 1
                self._fuse_projection(graph, node, entries, PROJECTION_KINDS)
        # A depthwise conv with no sparse 1x1 conv before it (MobileNetV2's first block)
        # joins the projection after it instead; left over then, one after a dense kxk conv
        # (MobileNetV2's stem, when the first block's projection is dense) joins that conv
        # (``conv_stem_dw``).
        # The dense projection after that one joins too (``conv_stem_dw`` computes it row
        # by row from the depthwise row in L1).
        self._fuse_left(graph, entries, match_depthwise_before, "fused before", True)
        self._fuse_left(graph, entries, match_conv_depthwise, "fused after conv", False,
                        projection=("dense",))
        return sum(self.counts[k] for k in ("fused", "fused before", "fused after conv")) > 0

    def _fuse_left(self, graph: ir.Graph, entries: dict, match, count: str,
                   before: bool, projection=()) -> None:
        """Fuse what ``match`` finds at each SparseConv with no depthwise conv yet (the
        reasons it gives are counted by the first walk already), and then the projection
        after it when its layout is one of ``projection``."""
        for sparse, entry in _sparse_convs(graph, entries):
            if entry.depthwise is not None:
                continue
            with self.at(sparse.name, entry.weight):
                found = match(sparse)
                if isinstance(found, str):
                    continue
                node = self._fuse(graph, sparse, entry, *found, before=before)
                self.counts[count] += 1
                if projection:
                    self._fuse_projection(graph, node, entries, projection)

    def _fuse_projection(self, graph: ir.Graph, node: ir.Node, entries: dict,
                         kinds) -> None:
        """The projection after the fused ``node`` joins it when its layout is one of
        ``kinds`` (``match_projection``); counted either way."""
        pj = match_projection(node, kinds)
        if isinstance(pj, str):
            self.counts[f"projection kept: {pj}"] += 1
            return
        fused = ir.Node(ops.DOMAIN, ops.CONV, [*node.inputs, *pj.inputs[1:]],
                        [*node.attributes.values(), *carried_attrs(pj, "pj_")], name=node.name)
        ir.convenience.replace_nodes_and_values(graph, pj, [node, pj], [fused],
                                                [pj.outputs[0]], [fused.outputs[0]])
        entries[pj.attributes.get_string("entry")].fused_into = node.attributes.get_string(
            "entry")
        self.counts["projections"] += 1

    def _fuse(self, graph: ir.Graph, sparse: ir.Node, entry, dw: ir.Node,
              acts: list[ir.Node], steps: list[EpilogueStep], before: bool = False) -> ir.Node:
        d = dw.attributes
        w = dw.inputs[1]
        kernel = tuple(int(k) for k in w.shape[2:])
        conv = ConvAttrs(kernel, tuple(d.get_ints("strides", (1, 1))),
                         tuple(d.get_ints("pads", (0, 0, 0, 0))), (1, 1), int(w.shape[0]))
        attrs = [ir.AttrInt64s("dw_kernel_shape", list(kernel)),
                 ir.AttrInt64s("dw_strides", list(conv.strides)),
                 ir.AttrInt64s("dw_pads", list(conv.pads)),
                 ir.AttrStrings("dw_epilogue", [s.op for s in steps])]
        if before:
            attrs.append(ir.AttrInt64("dw_before", 1))
        for key, value in ops.epilogue_attrs(steps, "dw_").items():
            if key != "dw_epilogue":
                attrs.append(ir.AttrFloat32(key, float(value)))
        dw_inputs = [w] + ([dw.inputs[2]] if steps[:1] == [EpilogueStep("bias")] else [])
        x = dw.inputs[0] if before else sparse.inputs[0]
        node = ir.Node(ops.DOMAIN, ops.CONV, [x, *sparse.inputs[1:], *dw_inputs],
                       [*sparse.attributes.values(), *attrs], name=sparse.name)
        last = sparse if before else (acts[-1] if acts else dw)
        ir.convenience.replace_nodes_and_values(
            graph, last, [dw, *acts, sparse] if before else [sparse, dw, *acts], [node],
            [last.outputs[0]], [node.outputs[0]])
        entry.depthwise = DepthwiseFusion(dw.name, w.name, conv, steps, [n.name for n in acts],
                                          before)
        return node
