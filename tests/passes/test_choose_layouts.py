"""The cost model's choices, forced layouts, and the LayoutErrors of forced misfits."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from onnx import helper

from sparsec.errors import LayoutError, SparsecWarning
from sparsec.layouts import parse_layout
from sparsec.options import CompileOptions
from sparsec.passes.analyze_sparsity import AnalyzeSparsityPass
from sparsec.passes.choose_layouts import ChooseLayoutsPass, estimate_times
from sparsec.passes.cleanup import ShapesPass
from sparsec.passes.invariants import verify
from sparsec.passes.mark_epilogues import MarkEpiloguesPass
from sparsec.plan import Plan
from sparsec.targetspec import CostConstants, TargetSpec

rng = np.random.default_rng(7)
CPU = TargetSpec("cpu", "test cpu")


def sparse(shape, density):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0
    return w


def two_four(o, k):
    w = rng.uniform(0.5, 1.5, (o, k)).astype(np.float32)
    g = w.reshape(o, k // 4, 4)
    np.put_along_axis(g, np.argsort(rng.random(g.shape), axis=2)[:, :, :2], 0, axis=2)
    return w


def choose(tools, weights: dict[str, np.ndarray], options=None, target=CPU, batch=1,
           conv: np.ndarray | None = None):
    """One Gemm (transB=1) per weight, side by side; optionally a conv on img."""
    nodes = [helper.make_node("Gemm", [f"x_{name}", name], [f"y_{name}"], transB=1,
                              name=f"fc_{name}") for name in weights]
    inputs = {f"x_{name}": (batch, w.shape[1]) for name, w in weights.items()}
    inits = dict(weights)
    if conv is not None:
        kh = conv.shape[2]
        nodes.append(helper.make_node("Conv", ["img", "cw"], ["y_conv"], name="conv",
                                      pads=[kh // 2] * 4))
        inputs["img"], inits["cw"] = (1, conv.shape[1], 8, 8), conv
    m = tools.model(nodes, inputs, [n.output[0] for n in nodes], inits)
    ShapesPass()(m)
    plan = Plan(target=target.name)
    AnalyzeSparsityPass(plan)(m)
    p = ChooseLayoutsPass(plan, options or CompileOptions(), target)
    assert not p(m).modified
    verify(m, plan)
    return {e.weight: e for e in plan.entries}, p


def test_dense_at_0_6_and_csr_at_0_05(tools):
    entries, p = choose(tools, {"d60": sparse((1024, 1024), 0.6),
                                "d05": sparse((1024, 1024), 0.05)})
    d60, d05 = entries["d60"], entries["d05"]
    assert d60.layout == "dense" and d60.reason.startswith("dense: density 0.60 above break-even")
    assert d05.layout == "csr" and d05.reason.startswith("csr: est. ")
    assert "faster than dense (density 0.05)" in d05.reason
    assert d05.estimated_speedup > CPU.cost.min_speedup and d60.estimated_speedup == 1.0
    assert p.counts == {"dense": 1, "csr": 1}


def test_rows_change_the_csr_rate(tools):
    w = sparse((256, 256), 0.05)
    one, _ = choose(tools, {"w": w}, batch=1)
    many, _ = choose(tools, {"w": w}, batch=64)
    c = CPU.cost
    # rows >= vector_lanes uses csr_batch_gflops: the estimate moves with the rate ratio
    ratio = many["w"].estimated_speedup / one["w"].estimated_speedup
    assert ratio > 1.0 and c.csr_batch_gflops > c.csr_gflops


def test_csr_rate_of_4_vector_panel_blocks():
    """csr_panel4_gflops prices the csr kernel where it runs column panels in 4-vector row
    blocks (32-63 rows on AVX2, k > 256); elsewhere, or unset, csr_wide_gflops does."""
    from sparsec.passes.choose_layouts import layout_time
    from sparsec.plan import PlanEntry, SparsityStats

    def csr_ms(k, rows, panel4):
        cost = dataclasses.replace(CostConstants(), csr_wide_gflops=50.0,
                                   csr_panel4_gflops=panel4, overhead_s=0.0)
        stats = SparsityStats(rows=1024, cols=k, nnz=1024 * k // 10, density=0.1)
        entry = PlanEntry(node="n", op="MatMul", weight="w", weight_shape=(1024, k),
                          stats=stats)
        return layout_time(parse_layout("csr"), entry, rows,
                           dataclasses.replace(CPU, cost=cost)) * 1e3

    assert csr_ms(1024, 32, 100.0) == pytest.approx(csr_ms(1024, 32, None) / 2)
    assert csr_ms(1024, 63, 100.0) < csr_ms(1024, 63, None)
    for k, rows in ((1024, 64), (1024, 128), (1024, 31), (256, 32)):  # 8-vector, no panels
        assert csr_ms(k, rows, 100.0) == csr_ms(k, rows, None), (k, rows)


def test_weights_that_fit_the_cache_are_priced_at_its_bandwidth(tools):
    """A model whose weights fit the last-level cache reads them from there: at one row a
    dense GEMV is then no longer memory-bound, and a 30% weight stays dense. Too big for
    the cache, or with no cache term, the same weight goes csr."""
    w = sparse((1024, 1024), 0.3)  # 4 MiB as float32

    def layout(llc_bytes, llc_gbs=200.0):
        cost = dataclasses.replace(CostConstants(), llc_bytes=llc_bytes,
                                   llc_bandwidth_gbs=llc_gbs)
        entries, _ = choose(tools, {"w": w}, target=dataclasses.replace(CPU, cost=cost))
        cached = "; weights in the 32 MiB cache" in entries["w"].reason
        assert cached == (entries["w"].layout == "dense"), entries["w"].reason
        return entries["w"].layout

    assert layout(32 << 20) == "dense"
    assert layout(1 << 20) == "csr"  # the weights do not fit
    assert layout(32 << 20, llc_gbs=0.0) == "csr"  # no cache term
    assert layout(0) == "csr"  # cache size unknown


def test_what_a_call_writes_and_a_fused_head_count_for_the_cache(tools):
    """What a call writes passes through the cache too: a 4 MiB weight with a conv writing 4
    MiB beside it no longer fits 6 MiB, and goes csr. A dense linear reading a dense 1x1
    conv's mean pool (``fuse_head``) is priced as cached anyway: its weight streams while
    the conv computes. Not when the fusion is off, the conv is not dense or the pool's output
    has another use (as ``fuse_head`` decides)."""
    w = sparse((1024, 1024), 0.3)

    def head(side, llc_mib, extra_use=False, **opts):
        nodes = [helper.make_node("Conv", ["img", "cw"], ["c"], name="conv"),
                 helper.make_node("Relu", ["c"], ["r"], name="act"),
                 helper.make_node("GlobalAveragePool", ["r"], ["m"], name="pool"),
                 helper.make_node("Flatten", ["m"], ["f"], name="flat"),
                 helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="fc")]
        cw = rng.standard_normal((1024, 16, 1, 1)).astype(np.float32)
        m = tools.model(nodes, {"img": (1, 16, side, side)}, ["y", "m"] if extra_use else ["y"],
                        {"cw": cw, "w": w})
        ShapesPass()(m)
        plan = Plan(target="cpu")
        AnalyzeSparsityPass(plan)(m)
        MarkEpiloguesPass(plan, True)(m)
        cost = dataclasses.replace(CostConstants(), llc_bytes=llc_mib << 20,
                                   llc_bandwidth_gbs=200.0)
        ChooseLayoutsPass(plan, CompileOptions(**opts), dataclasses.replace(CPU, cost=cost))(m)
        return {e.weight: e for e in plan.entries}

    assert head(4, 6)["w"].layout == "dense"  # 4 MiB + 64 KiB written: cached
    assert head(32, 6)["w"].layout == "csr"  # + 4 MiB written, and no fusion at 1024 pixels
    fused = head(16, 5)["w"]  # + 1 MiB written: not cached, but fused with the conv
    assert fused.layout == "dense" and "weights stream during conv's GEMM" in fused.reason
    assert head(16, 5, fuse_head=False)["w"].layout == "csr"
    assert head(16, 5, layouts={"conv": "csr"})["w"].layout == "csr"
    assert head(16, 5, extra_use=True)["w"].layout == "csr"  # the pool's output is kept


def test_structured_layouts_win_when_their_rate_is_high(tools):
    fast = TargetSpec("fast", "structured kernels are fast",
                      cost=dataclasses.replace(CostConstants(), nm_gflops=200.0, bsr_gflops=200.0))
    block = np.kron(rng.random((128, 128)) < 0.05, np.ones((4, 4))).astype(np.float32)
    entries, _ = choose(tools, {"nm": two_four(256, 256), "blk": block * 1.5}, target=fast)
    assert entries["nm"].layout == "nm2:4"
    assert entries["blk"].layout == "bsr4x4"
    # a target that does not run bsr or nm falls back to csr / dense
    csr_only = dataclasses.replace(fast, layouts=("dense", "csr"))
    entries, _ = choose(tools, {"nm": two_four(256, 256), "blk": block * 1.5}, target=csr_only)
    assert entries["nm"].layout == "dense" and entries["blk"].layout == "csr"


def test_pointwise_conv_gets_chw_spmm(tools):
    entries, _ = choose(tools, {"w": sparse((8, 8), 1.0)}, conv=sparse((128, 64, 1, 1), 0.1))
    assert entries["cw"].layout == "chw-spmm"
    times = estimate_times(entries["cw"], 64, CPU)
    assert {"dense", "chw-spmm", "csr"} <= set(times)
    assert min(times, key=times.get) == "chw-spmm"  # ties with csr go to chw-spmm


def test_small_and_nonfinite_stay_dense(tools):
    bad = sparse((256, 256), 0.05)
    bad[3, 3] = np.nan
    with pytest.warns(SparsecWarning, match="fc_bad"):
        entries, _ = choose(tools, {"small": sparse((32, 64), 0.05), "bad": bad})
    small = entries["small"]
    assert small.layout == "dense" and "2048 multiply-adds a call, below the 4096 minimum" \
        in small.reason
    assert entries["bad"].layout == "dense" and "NaN/Inf" in entries["bad"].reason


def test_small_weight_with_much_work_is_not_kept_dense(tools):
    """The minimum counts work, not weights: MobileNetV2's 16->96 expand conv has 1536
    weights but runs them at every pixel."""
    entries, _ = choose(tools, {"w": sparse((8, 8), 1.0)}, conv=sparse((96, 16, 1, 1), 0.1))
    assert entries["cw"].layout == "chw-spmm", entries["cw"].reason
    # the same weight as a linear layer at batch 1 is too little work
    entries, _ = choose(tools, {"lin": sparse((96, 16), 0.1)})
    assert entries["lin"].layout == "dense" and "minimum" in entries["lin"].reason


def test_bitmap_once_calibrated_at_moderate_density_and_few_rows(tools):
    """bitmap is priced on dense-shaped FLOPs and sparse bytes: at density 0.45 a weight
    streaming from memory at one row goes bitmap where the target runs it at a calibrated
    rate; uncalibrated (None), on a target without it, or at 32 rows it does not."""
    w = sparse((1024, 1024), 0.45)
    runs = dataclasses.replace(CPU, layouts=CPU.layouts + ("bitmap",), vector_lanes=16)
    rated = dataclasses.replace(runs, cost=dataclasses.replace(
        CostConstants(), bitmap_gflops=60.0, bitmap_batch_gflops=60.0))

    def pick(target, batch=1):
        entries, _ = choose(tools, {"w": w}, target=target, batch=batch)
        return entries["w"]

    e = pick(rated)
    assert e.layout == "bitmap" and e.reason.startswith("bitmap: est. "), e.reason
    assert pick(runs).layout != "bitmap" and pick(CPU).layout != "bitmap"
    assert "bitmap" not in estimate_times(e, 32, rated)
    assert pick(rated, batch=32).layout != "bitmap"


def test_forced_bitmap_misfits(tools):
    runs = dataclasses.replace(CPU, layouts=CPU.layouts + ("bitmap",), vector_lanes=16)
    force = CompileOptions(layouts={"*": "bitmap"})
    with pytest.raises(LayoutError, match=r"fc_w.*bitmap on cpu needs in \(40\) divisible by 16"):
        choose(tools, {"w": sparse((8, 40), 0.5)}, target=runs, options=force)
    with pytest.raises(LayoutError, match="up to 16 rows of input; this layer has 17"):
        choose(tools, {"w": sparse((8, 32), 0.5)}, target=runs, options=force, batch=17)
    with pytest.raises(LayoutError, match="bitmap runs MatMul/Gemm weights; this is a Conv"):
        choose(tools, {"w": sparse((8, 32), 0.5)}, conv=sparse((8, 4, 3, 3), 0.5),
               target=runs, options=CompileOptions(layouts={"conv": "bitmap"}))
    entries, _ = choose(tools, {"w": sparse((8, 32), 0.5)}, target=runs, options=force,
                        batch=16)
    assert entries["w"].layout == "bitmap"


def test_forced_layout_is_honoured(tools):
    opts = CompileOptions(layouts={"fc_a": "bsr2x2", "b": "csr", "*": "dense"})
    entries, p = choose(tools, {"a": sparse((64, 64), 0.9), "b": sparse((64, 64), 0.9),
                                "c": sparse((1024, 1024), 0.01)}, options=opts)
    assert [entries[k].layout for k in "abc"] == ["bsr2x2", "csr", "dense"]
    assert all(entries[k].forced and entries[k].reason == "forced by --layout" for k in "abc")
    assert entries["a"].estimated_speedup > 0 and p.counts == {"bsr": 1, "csr": 1, "dense": 1}


def test_forced_misfits_raise_layout_error(tools):
    with pytest.raises(LayoutError, match=r"nm2:4 .*fc_w \(weight w\).*not 2:4"):
        choose(tools, {"w": sparse((64, 64), 0.9)}, options=CompileOptions(layouts={"w": "nm2:4"}))
    with pytest.raises(LayoutError, match=r"conv \(weight cw\).*chw-spmm needs a 1x1"):
        choose(tools, {"w": sparse((8, 8), 1.0)}, conv=sparse((8, 4, 3, 3), 0.5),
               options=CompileOptions(layouts={"conv": "chw-spmm"}))
    with pytest.raises(LayoutError, match="fc_w.*this is a Gemm"):
        choose(tools, {"w": sparse((8, 8), 1.0)}, options=CompileOptions(layouts={"*": "chw-spmm"}))
    with pytest.raises(LayoutError, match=r"bsr4x4 .*fc_w.*divisible"):
        choose(tools, {"w": sparse((6, 8), 1.0)}, options=CompileOptions(layouts={"*": "bsr4x4"}))
    dense_only = TargetSpec("tiny", "dense only", layouts=("dense",))
    with pytest.raises(LayoutError, match="target tiny does not run csr"):
        choose(tools, {"w": sparse((8, 8), 1.0)}, target=dense_only,
               options=CompileOptions(layouts={"*": "csr"}))


def test_forced_layout_on_nonfinite_weight_warns_but_is_used(tools):
    bad = sparse((64, 64), 0.1)
    bad[0, 0] = np.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries, _ = choose(tools, {"bad": bad}, options=CompileOptions(layouts={"*": "csr"}))
    assert entries["bad"].layout == "csr"
    assert any(issubclass(w.category, SparsecWarning) for w in caught)
