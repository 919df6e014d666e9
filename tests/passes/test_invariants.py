"""The verifier accepts what the passes produce and names what is broken."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from sparsec.errors import CompileError
from sparsec.options import CompileOptions
from sparsec.passes import pipeline
from sparsec.passes.invariants import InvariantError, verify
from sparsec.targetspec import TargetSpec

rng = np.random.default_rng(9)
CPU = TargetSpec("cpu", "test cpu")


def mlp(tools):
    w1 = rng.standard_normal((64, 32)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.9] = 0
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    return tools.model(nodes, {"x": (2, 32)}, ["y"], {"w1": w1})


def test_accepts_analyzed_and_lowered(tools):
    am, plan = pipeline.analyze(mlp(tools), CompileOptions(), CPU)
    verify(am, plan)
    lm, plan = pipeline.run(mlp(tools), CompileOptions(), CPU)
    verify(lm, plan)
    assert issubclass(InvariantError, CompileError)


def test_unsorted_graph_and_undefined_value(tools):
    m = mlp(tools)
    relu = m.graph.node("relu")
    m.graph.remove(relu)
    m.graph.insert_before(m.graph.node("fc1"), relu)
    with pytest.raises(InvariantError, match="relu uses h.*topologically"):
        verify(m)
    m = mlp(tools)
    stray = ir.Value(name="stray")
    m.graph.node("relu").replace_input_with(0, stray)
    with pytest.raises(InvariantError, match="stray"):
        verify(m)


def test_plan_entries_checked(tools):
    am, plan = pipeline.analyze(mlp(tools), CompileOptions(), CPU)
    entry = plan.entries[0]
    bad = dataclasses.replace(entry, node="nope")
    with pytest.raises(InvariantError, match="entry nope"):
        verify(am, dataclasses.replace(plan, entries=[bad]))
    bad = dataclasses.replace(entry, layout="bsr3")
    with pytest.raises(InvariantError, match="unknown layout"):
        verify(am, dataclasses.replace(plan, entries=[bad]))
    bad = dataclasses.replace(entry, stats=dataclasses.replace(entry.stats, nnz=10**9))
    with pytest.raises(InvariantError, match="nnz"):
        verify(am, dataclasses.replace(plan, entries=[bad]))
    bad = dataclasses.replace(entry, stats=dataclasses.replace(entry.stats, nm=(2, 3)))
    with pytest.raises(InvariantError, match="N:M"):
        verify(am, dataclasses.replace(plan, entries=[bad]))
    bad = dataclasses.replace(entry, fused_nodes=["gone"])
    with pytest.raises(InvariantError, match="gone"):
        verify(am, dataclasses.replace(plan, entries=[bad]))
    lm, plan = pipeline.run(mlp(tools), CompileOptions(), CPU)
    bad = dataclasses.replace(plan.entries[0], layout="csr")
    with pytest.raises(InvariantError, match="expected SparseLinear csr"):
        verify(lm, dataclasses.replace(plan, entries=[bad]))
