"""Mark the elementwise chain after each planned op that its kernel can apply (its epilogue).

Starting at the op's output ``y``, while ``y`` is not a graph output and has one use:

    Add(y, c) or Add(c, y), c constant broadcastable to the out channels -> "bias"
        (Linear: c of shape [out], [1, out], ... or a scalar; Conv: [O,1,1], [1,O,1,1] or a
        scalar; at most one bias: a bias Add right after the op's own bias is merged into it)
    Relu(y)                                          -> "relu"
    Clip(y, min, max) with constant min/max          -> "clip" (Relu6 is Clip(0, 6))
    Sigmoid(y)                                       -> "sigmoid"
    Gelu(y) (approximate="none")                     -> "gelu"
    Add(y, r) or Add(r, y), r not constant, shape(r) == shape(y) -> "residual" (at most one)

and, when ``y`` has exactly two uses forming the erf form of GELU,

    0.5 * y * (1 + Erf(y / sqrt2))  (Div by sqrt2 or Mul by 1/sqrt2; the three products in
    any association and operand order; * 0.5 or / 2)  -> "gelu"

The op's own bias (Gemm ``beta·C``, Conv ``B``) is always the first step, fused or not.
Matching stops at the first node that fits none of these, a value that is a graph output,
or one with several uses (so an op whose output is a graph output fuses nothing).
Order is kept: ``[bias, relu, residual]`` differs from ``[bias, residual, relu]``.

``match_epilogue(wop, fuse)`` returns the structured match (nodes, bias sources,
residual value); ``MarkEpiloguesPass`` writes ``entry.epilogue`` and ``entry.fused_nodes``.
Later passes re-run ``match_epilogue`` and check it against the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import sqrt

import numpy as np
import onnx_ir as ir

from sparsec.plan import EpilogueStep, Plan

from .base import SparsecPass
from .weights import WeightOp, const_array, nodes_by_name, weight_op_for


@dataclass
class BiasSource:
    """Where (part of) a bias lives: the op's own bias input, or a constant input of an Add."""

    node: ir.Node
    index: int  # input index of the constant
    channel_axis: int  # axis of the constant (after padding to the output rank) that is "out"


@dataclass
class StepMatch:
    step: EpilogueStep
    nodes: list[ir.Node] = field(default_factory=list)  # graph nodes this step absorbs
    bias: np.ndarray | None = None  # "bias": the [out] vector (all sources summed)
    sources: list[BiasSource] = field(default_factory=list)  # "bias": where it comes from
    residual: ir.Value | None = None  # "residual": the other operand


@dataclass
class EpilogueMatch:
    steps: list[StepMatch]
    output: ir.Value  # the last value of the fused group (the op's output if nothing fused)
    stop: str  # why matching stopped, for debugging

    @property
    def epilogue(self) -> list[EpilogueStep]:
        return [s.step for s in self.steps]

    @property
    def nodes(self) -> list[ir.Node]:
        return [n for s in self.steps for n in s.nodes]

    def bias(self) -> np.ndarray | None:
        found = [s.bias for s in self.steps if s.step.op == "bias"]
        return found[0] if found else None

    def bias_step(self) -> StepMatch | None:
        found = [s for s in self.steps if s.step.op == "bias"]
        return found[0] if found else None

    def residual(self) -> ir.Value | None:
        found = [s.residual for s in self.steps if s.step.op == "residual"]
        return found[0] if found else None


def _is_onnx(node: ir.Node, *ops: str) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in ops


def _scalar(value: ir.Value | None) -> float | None:
    a = const_array(value)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


def _close(x: float | None, want: float) -> bool:
    return x is not None and abs(x - want) <= 1e-5 * abs(want)


def _static_shape(value: ir.Value) -> tuple[int, ...] | None:
    if value.shape is None or not value.shape.is_static():
        return None
    return tuple(int(d) for d in value.shape)


def _single_use(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if value.is_graph_output() or len(uses) != 1:
        return None
    return uses[0].node


def _other(node: ir.Node, value: ir.Value) -> tuple[int, ir.Value] | None:
    """For a binary node using ``value`` once: (index, other operand)."""
    if len(node.inputs) != 2 or node.inputs[0] is node.inputs[1]:
        return None
    i = 1 if node.inputs[0] is value else 0
    return i, node.inputs[i]


def _bias_vector(c: np.ndarray, out: int, rank: int | None, axis: int) -> np.ndarray | None:
    """``c`` as an [out] per-channel vector if adding it only broadcasts along the channel
    axis (``axis`` counted from the end: -1 for Linear, -3 for NCHW) without growing the
    output's rank; None otherwise."""
    if c.dtype != np.float32:
        return None
    if c.size == 1:
        return np.full(out, c.reshape(-1)[0], np.float32) if c.ndim <= (rank or 1) else None
    if rank is None or c.ndim > rank or c.ndim < -axis:
        return None
    shape = c.shape
    if shape[axis] != out or any(d != 1 for i, d in enumerate(shape) if i != c.ndim + axis):
        return None
    return np.ascontiguousarray(c.reshape(out), np.float32)


def _match_gelu_erf(x: ir.Value) -> tuple[list[ir.Node], ir.Value] | None:
    """The erf-form GELU rooted at ``x``: (its nodes, its output) or None."""
    uses = list(x.uses())
    if x.is_graph_output() or len(uses) != 2 or uses[0].node is uses[1].node:
        return None
    for head, other in ((uses[0].node, uses[1].node), (uses[1].node, uses[0].node)):
        if not _is_inv_sqrt2(head, x):
            continue
        erf = _single_use(head.outputs[0])
        if erf is None or not _is_onnx(erf, "Erf"):
            continue
        add = _single_use(erf.outputs[0])
        if add is None or not _is_onnx(add, "Add"):
            continue
        o = _other(add, erf.outputs[0])
        if o is None or not _close(_scalar(o[1]), 1.0):
            continue
        t = add.outputs[0]  # 1 + erf(x / sqrt2)
        if t.is_graph_output():
            continue
        found = _gelu_products(x, t, other)
        if found is not None:
            return [head, erf, add, *found[0]], found[1]
    return None


def _is_scaling(node: ir.Node, value: ir.Value, factor: float) -> bool:
    """node computes value * factor (either order) or value / (1 / factor)."""
    if _is_onnx(node, "Mul") and (o := _other(node, value)):
        return _close(_scalar(o[1]), factor)
    return (_is_onnx(node, "Div") and node.inputs[0] is value
            and _close(_scalar(node.inputs[1]), 1 / factor))


def _is_half(node: ir.Node, value: ir.Value) -> bool:
    return _is_scaling(node, value, 0.5)


def _is_inv_sqrt2(node: ir.Node, value: ir.Value) -> bool:
    return _is_scaling(node, value, 1 / sqrt(2))


def _gelu_products(x: ir.Value, t: ir.Value, other: ir.Node):
    """0.5 * x * t from x's other user: ((x*t)*0.5), ((x*0.5)*t) or (x*(t*0.5))."""
    if _is_onnx(other, "Mul") and (o := _other(other, x)) and o[1] is t:  # (x*t)*0.5
        last = _single_use(other.outputs[0])
        if last is not None and _is_half(last, other.outputs[0]):
            return [other, last], last.outputs[0]
    if _is_half(other, x) and len(t.uses()) == 1:  # (x*0.5)*t
        last = _single_use(other.outputs[0])
        if last is not None and _is_onnx(last, "Mul") and (o := _other(last, other.outputs[0])) \
                and o[1] is t:
            return [other, last], last.outputs[0]
    half = _single_use(t)  # x*(t*0.5)
    if half is not None and _is_half(half, t) and _is_onnx(other, "Mul") \
            and (o := _other(other, x)) and o[1] is half.outputs[0]:
        return [half, other], other.outputs[0]
    return None


def _clip_bounds(node: ir.Node) -> tuple[float | None, float | None] | None:
    bounds: list[float | None] = []
    for i, key in ((1, "min"), (2, "max")):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is not None:
            s = _scalar(v)
            if s is None:
                return None
            bounds.append(s)
        else:
            bounds.append(node.attributes.get_float(key, None))
    return bounds[0], bounds[1]


def match_epilogue(wop: WeightOp, fuse: bool = True) -> EpilogueMatch:
    """The epilogue chain after ``wop`` (see the module docstring), found through uses."""
    out = wop.out_features
    y = wop.y
    rank = len(y.shape) if y.shape is not None else (
        len(wop.x.shape) if wop.x.shape is not None and not wop.is_conv else None)
    axis = -3 if wop.is_conv else -1
    steps: list[StepMatch] = []
    own = wop.bias()
    if own is not None:
        steps.append(StepMatch(EpilogueStep("bias"), bias=own,
                               sources=[BiasSource(wop.node, 2, 0)]))
    if not fuse:
        return EpilogueMatch(steps, y, "fusion disabled")
    while True:
        if y.is_graph_output():
            return EpilogueMatch(steps, y, f"{y.name} is a graph output")
        gelu = _match_gelu_erf(y)
        if gelu is not None:
            steps.append(StepMatch(EpilogueStep("gelu"), nodes=gelu[0]))
            y = gelu[1]
            continue
        node = _single_use(y)
        if node is None:
            return EpilogueMatch(steps, y, f"{y.name} has {len(y.uses())} uses")
        kinds = [s.step.op for s in steps]
        if _is_onnx(node, "Relu"):
            steps.append(StepMatch(EpilogueStep("relu"), nodes=[node]))
        elif _is_onnx(node, "Sigmoid"):
            steps.append(StepMatch(EpilogueStep("sigmoid"), nodes=[node]))
        elif _is_onnx(node, "Clip") and "clip" not in kinds and (b := _clip_bounds(node)):
            steps.append(StepMatch(EpilogueStep("clip", b[0], b[1]), nodes=[node]))
        elif node.op_type == "Gelu" and node.domain in ("", "ai.onnx", "com.microsoft") \
                and node.attributes.get_string("approximate", "none") == "none":
            steps.append(StepMatch(EpilogueStep("gelu"), nodes=[node]))
        elif _is_onnx(node, "Add") and (o := _other(node, y)):
            c = const_array(o[1])
            if c is not None:
                vec = _bias_vector(c, out, rank, axis)
                if vec is None:
                    return EpilogueMatch(steps, y, f"Add {node.name}: constant is not a bias")
                src = BiasSource(node, o[0], c.ndim + axis if c.size > 1 else -1)
                if not kinds:
                    steps.append(StepMatch(EpilogueStep("bias"), [node], vec, [src]))
                elif kinds == ["bias"]:  # right after the op's own bias: merge
                    steps[0].nodes.append(node)
                    steps[0].bias = steps[0].bias + vec
                    steps[0].sources.append(src)
                else:
                    return EpilogueMatch(steps, y, f"Add {node.name}: a bias after {kinds[-1]}")
            elif "residual" in kinds:
                return EpilogueMatch(steps, y, f"Add {node.name}: a second residual")
            elif _static_shape(o[1]) is None or _static_shape(o[1]) != _static_shape(y):
                return EpilogueMatch(steps, y, f"Add {node.name}: residual shape differs")
            elif o[1].dtype not in (None, ir.DataType.FLOAT):
                return EpilogueMatch(steps, y, f"Add {node.name}: residual is not FLOAT")
            else:
                steps.append(StepMatch(EpilogueStep("residual"), [node], residual=o[1]))
        else:
            return EpilogueMatch(steps, y, f"{node.op_type} node {node.name} is not fusable")
        y = node.outputs[0]


class MarkEpiloguesPass(SparsecPass):
    """Fill ``entry.epilogue`` and ``entry.fused_nodes`` for every Plan entry. Only the Plan
    changes (the result's ``modified`` is False); counts["steps"], counts["fused_nodes"]."""

    def __init__(self, plan: Plan, fuse: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.fuse = fuse

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        by_name = nodes_by_name(graph)
        for entry in self.plan.entries:
            with self.at(entry.node, entry.weight):
                m = match_epilogue(weight_op_for(graph, entry.node, by_name), self.fuse)
            entry.epilogue = m.epilogue
            entry.fused_nodes = [n.name for n in m.nodes]
            self.counts["steps"] += len(m.steps)
            self.counts["fused_nodes"] += len(entry.fused_nodes)
        return False
