"""A verifier of the IR and the Plan, run after every pass in the tests.

``verify(model, plan=None)`` raises ``InvariantError`` (a ``CompileError``) naming the first
broken rule:

- the node graph is acyclic (networkx) and the node list is topologically sorted;
- every used value is defined: a graph input, an initializer, or the output of a node of
  this graph placed earlier; every graph output is defined;
- node names are unique where set;
- every Plan entry names exactly one of: a node of the graph (before lowering: its op type
  is ``entry.op`` and its weight input is the initializer ``entry.weight``, of shape
  ``entry.weight_shape``; every ``fused_nodes`` name exists) or an ``ai.sparsec`` node whose
  ``entry`` attribute is the entry's node (after lowering: SparseConv for a Conv,
  SparseLinear otherwise, with the entry's layout, the right number of inputs, and no
  fused node left in the graph);
- every layout name parses; epilogue steps are known; the stats are consistent with the
  weight shape (rows x cols, nnz, density, zero rows/cols, N:M and block dividing it).
"""

from __future__ import annotations

import math

import networkx as nx
import onnx_ir as ir

from sparsec import ops
from sparsec.errors import CompileError, SparsecError
from sparsec.formats import array_keys
from sparsec.layouts import parse_layout
from sparsec.plan import EPILOGUE_OPS, Plan, PlanEntry


class InvariantError(CompileError):
    """The IR or the Plan broke an invariant (a bug in a pass)."""


def node_graph(graph: ir.Graph) -> nx.DiGraph:
    """Nodes of ``graph`` as a networkx DiGraph (an edge per producer -> consumer)."""
    g = nx.DiGraph()
    g.add_nodes_from(graph)
    for node in graph:
        for value in node.inputs:
            if value is not None and (producer := value.producer()) is not None:
                g.add_edge(producer, node)
    return g


def verify_graph(graph: ir.Graph) -> None:
    if not nx.is_directed_acyclic_graph(node_graph(graph)):
        raise InvariantError("invariant: the graph has a cycle")
    defined = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    names: set[str] = set()
    for node in graph:
        if node.graph is not graph:
            raise InvariantError(f"invariant: node {node.name} does not point back to its graph")
        if node.name:
            if node.name in names:
                raise InvariantError(f"invariant: two nodes are named {node.name}")
            names.add(node.name)
        for value in node.inputs:
            if value is not None and id(value) not in defined:
                raise InvariantError(
                    f"invariant: node {node.name} uses {value.name}, which is undefined "
                    "or defined later (graph not topologically sorted)")
        defined.update(id(v) for v in node.outputs)
    for value in graph.outputs:
        if id(value) not in defined:
            raise InvariantError(f"invariant: graph output {value.name} is not defined")


def verify_stats(entry: PlanEntry) -> None:
    s, where = entry.stats, f"invariant: entry {entry.node} (weight {entry.weight})"
    shape = entry.weight_shape
    if s.rows * s.cols != math.prod(shape):
        raise InvariantError(f"{where}: stats {s.rows}x{s.cols} do not match shape {list(shape)}")
    if entry.op == "Conv" and s.rows != shape[0]:
        raise InvariantError(f"{where}: stats rows {s.rows} != output channels {shape[0]}")
    size = s.rows * s.cols
    if not 0 <= s.nnz <= size or abs(s.density - (s.nnz / size if size else 0.0)) > 1e-9:
        raise InvariantError(f"{where}: nnz {s.nnz} / density {s.density} inconsistent")
    if not (0 <= s.zero_rows <= s.rows and 0 <= s.zero_cols <= s.cols and s.nonfinite <= s.nnz):
        raise InvariantError(f"{where}: zero rows/cols or nonfinite count out of range")
    if s.nm is not None and not (0 < s.nm[0] < s.nm[1] and s.cols % s.nm[1] == 0):
        raise InvariantError(f"{where}: N:M {s.nm} does not fit {s.cols} columns")
    if s.block is not None and (s.rows % s.block[0] or s.cols % s.block[1]
                                or s.block_density is None or not 0 <= s.block_density <= 1):
        raise InvariantError(f"{where}: block {s.block} does not fit {s.rows}x{s.cols}")


def _own_inputs(entry: PlanEntry) -> int:
    """Format arrays, bias and residual of one entry."""
    kinds = [e.op for e in entry.epilogue]
    return len(array_keys(entry.layout)) + ("bias" in kinds) + ("residual" in kinds)


def _expected_inputs(entry: PlanEntry, plan: Plan) -> int:
    dw = entry.depthwise
    dw_inputs = 0 if dw is None else 1 + any(e.op == "bias" for e in dw.epilogue)
    projection = [e for e in plan.entries if e.fused_into == entry.node]
    return 1 + _own_inputs(entry) + dw_inputs + sum(_own_inputs(e) for e in projection)


def verify_plan(graph: ir.Graph, plan: Plan) -> None:
    nodes = {n.name: n for n in graph if n.name}
    lowered = {n.attributes.get_string("entry"): n for n in graph
               if n.domain == ops.DOMAIN and n.op_type in ops.OP_TYPES}
    seen: set[str] = set()
    for entry in plan.entries:
        where = f"invariant: entry {entry.node} (weight {entry.weight})"
        if entry.node in seen:
            raise InvariantError(f"{where}: two entries for one node")
        seen.add(entry.node)
        try:
            parse_layout(entry.layout)
        except SparsecError as exc:
            raise InvariantError(f"{where}: {exc}") from None
        if any(e.op not in EPILOGUE_OPS for e in entry.epilogue):
            raise InvariantError(f"{where}: unknown epilogue step in {entry.epilogue}")
        verify_stats(entry)
        if entry.fused_into is not None:
            host = lowered.get(entry.fused_into)
            if host is None or entry.node not in (host.attributes.get_string("pj_entry", None),
                                                  host.attributes.get_string("ln_entry", None)):
                raise InvariantError(f"{where}: fused into {entry.fused_into}, but that node "
                                     f"does not compute it")
            if entry.node in nodes:
                raise InvariantError(f"{where}: fused into {entry.fused_into} but still in "
                                     f"the graph")
            continue
        sparse = lowered.get(entry.node)
        if sparse is not None:
            want = ops.CONV if entry.op == "Conv" else ops.LINEAR
            if sparse.op_type != want or sparse.attributes.get_string("layout") != entry.layout:
                raise InvariantError(f"{where}: lowered to {sparse.op_type} "
                                     f"{sparse.attributes.get_string('layout')}, expected "
                                     f"{want} {entry.layout}")
            if len(sparse.inputs) != _expected_inputs(entry, plan):
                raise InvariantError(f"{where}: {sparse.op_type} has {len(sparse.inputs)} inputs")
            fused = entry.fused_nodes + entry.pool_nodes + (
                [] if entry.depthwise is None else
                [entry.depthwise.node, *entry.depthwise.fused_nodes])
            if any(name in nodes and nodes[name] is not sparse for name in fused):
                raise InvariantError(f"{where}: a fused node is still in the graph")
            continue
        node = nodes.get(entry.node)
        if node is None or node.op_type != entry.op:
            raise InvariantError(f"{where}: no {entry.op} node and no sparsec node for it")
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is None or w.name != entry.weight or not w.is_initializer():
            raise InvariantError(f"{where}: the node's weight is not initializer {entry.weight}")
        if tuple(w.shape or ()) != tuple(entry.weight_shape):
            raise InvariantError(f"{where}: weight shape {w.shape} != {list(entry.weight_shape)}")
        missing = [n for n in entry.fused_nodes if n not in nodes]
        if missing:
            raise InvariantError(f"{where}: fused nodes {missing} are not in the graph")


def verify(model: ir.Model, plan: Plan | None = None) -> None:
    """Check the IR (and the Plan if given); InvariantError names the first broken rule."""
    verify_graph(model.graph)
    if plan is not None:
        verify_plan(model.graph, plan)
    if any(n.domain == ops.DOMAIN for n in model.graph) and \
            model.opset_imports.get(ops.DOMAIN) != 1:
        raise InvariantError(f"invariant: sparsec nodes but no opset import {ops.DOMAIN}: 1")
