"""SparseLinear TIR kernels (dense, csr, bsr, nm) against numpy.

Every case packs a random weight with ``sparsec.formats.pack``, runs the kernel's
``prepare`` and ``build``, compiles the PrimFunc alone with ``tvm.compile`` and calls it;
the reference is ``x @ unpack(packed).T`` in float64, then ``sparsec.ops.apply_epilogue``.
Tolerance: rtol = atol = 1e-4 (fp32 sums of at most a few thousand terms of size ~1).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from sparsec.codegen.tvm.kernels import kernel_for  # noqa: E402
from sparsec.codegen.tvm.kernels.linear_common import (  # noqa: E402
    balanced_splits,
    vector_lanes,
    vector_registers,
)
from sparsec.errors import CompileError  # noqa: E402
from sparsec.formats import pack, unpack  # noqa: E402
from sparsec.layouts import parse_layout  # noqa: E402
from sparsec.ops import SparseOpSpec, apply_epilogue  # noqa: E402
from sparsec.plan import EpilogueStep  # noqa: E402
from sparsec.testing import guarded_tensor  # noqa: E402
from sparsec.codegen.tvm.kernels.linear_dense import (  # noqa: E402
    ALIAS_BYTES,
    CHUNK_ABOVE,
    GEMV_PANEL_VECTORS,
    L1_WAYS,
    even_tiles,
)
from sparsec.codegen.tvm.kernels.linear_csr import panel_major, rows_lanes  # noqa: E402
from sparsec.codegen.tvm.stack_locals import compile_kernel  # noqa: E402
from sparsec.targetspec import PANEL_COLUMNS, csr_panel_columns, rows_block_vectors  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _host_target(level: str | None = None):
    """A generic x86-64 level the OS really exposes (hypervisors may hide AVX-512)."""
    flags = _cpu_flags()
    if level is None:
        level = "x86-64-v4" if "avx512f" in flags else "x86-64-v3" if "avx2" in flags else "x86-64"
    return tvm.target.Target({"kind": "llvm", "mcpu": level, "num-cores": 2})


HOST = _host_target()


# ---------------------------------------------------------------- helpers


def _weight(layout: str, out: int, inp: int, density: float, rng, zero_rows=(0,)):
    """A random weight that fits ``layout``: blocks for bsr, at most n of m for nm."""
    lay = parse_layout(layout)
    if lay.kind == "bsr":
        r, c = lay.params
        keep = rng.random((out // r, inp // c)) < density
        mask = np.kron(keep, np.ones((r, c), bool))
    else:
        mask = rng.random((out, inp)) < density
    w = rng.standard_normal((out, inp)).astype(np.float32) * mask
    if lay.kind == "nm":
        n, m = lay.params
        groups = w.reshape(out, inp // m, m)
        order = np.argsort(-np.abs(groups), axis=2, kind="stable")
        np.put_along_axis(groups, order[:, :, n:], 0.0, axis=2)
    for r in zero_rows:
        w[r % out] = 0.0  # an empty output row (a whole block row for bsr)
    return np.ascontiguousarray(w, np.float32)


def _run(layout, w, rows, steps=(), target=HOST, knobs=None, seed=1, plan_rows=0, guard="end"):
    """Build, compile and run one kernel; returns (y, reference). ``plan_rows``: the rows
    the plan expected (``SparseOpSpec.rows``; 0 unknown). Every buffer lies against an
    unreadable page at its ``guard`` side (``sparsec.testing``): a stray access faults."""
    rng = np.random.default_rng(seed)
    out, inp = w.shape
    packed = pack(w, layout)
    spec = SparseOpSpec("SparseLinear", layout, out, inp, "fc", list(steps), list(packed.arrays),
                        rows=plan_rows)
    kdef = kernel_for(spec)
    arrays = kdef.prepare(spec, packed.arrays, target)
    func = kdef.build(spec, (rows, inp), arrays, target, knobs)
    assert func.attrs["tirx.is_scheduled"] and func.attrs["tirx.noalias"]
    ex = compile_kernel(func, target)

    x = rng.standard_normal((rows, inp)).astype(np.float32)
    bias = rng.standard_normal(out).astype(np.float32) if spec.has_bias else None
    residual = rng.standard_normal((rows, out)).astype(np.float32) if spec.has_residual else None
    args = [x, *arrays.values()] + [a for a in (bias, residual) if a is not None]
    y = guarded_tensor(np.full((rows, out), np.nan, np.float32), guard)
    ex["main"](*[guarded_tensor(a, guard) for a in args], y)

    acc = (x.astype(np.float64) @ unpack(packed).astype(np.float64).T).astype(np.float32)
    return y.numpy(), apply_epilogue(acc, spec.epilogue, bias, residual)


def _check(layout, out, inp, rows, density, steps=(), seed=0, **kw):
    rng = np.random.default_rng(seed)
    w = _weight(layout, out, inp, density, rng)
    y, ref = _run(layout, w, rows, steps, seed=seed + 1, **kw)
    np.testing.assert_allclose(y, ref, **TOL)


S = EpilogueStep

# (layout, out, in) shapes that fit each layout; rows and densities vary per test.
SHAPES = {
    "dense": [(1, 1), (29, 37), (40, 64), (33, 100), (20, 48), (130, 300)],
    "csr": [(1, 1), (29, 37), (40, 64), (33, 100), (20, 48), (130, 300)],
    "bsr4x4": [(4, 4), (28, 36), (40, 64), (32, 100), (20, 48), (132, 300)],
    "bsr1x8": [(1, 8), (29, 40), (40, 64), (33, 96), (20, 48), (130, 296)],
    "bsr8x1": [(8, 1), (32, 37), (40, 64), (32, 100), (24, 48), (128, 300)],
    "bsr3x5": [(3, 5), (30, 35), (39, 65), (33, 100), (21, 45), (129, 300)],
    "nm2:4": [(1, 4), (29, 36), (40, 64), (33, 100), (20, 48), (130, 300)],
    "nm1:4": [(1, 4), (29, 36), (40, 64), (33, 100), (20, 48), (130, 300)],
    "nm3:8": [(1, 8), (29, 40), (40, 64), (33, 104), (20, 48), (130, 296)],
}
LAYOUTS = list(SHAPES)
# (rows, density) per shape index: batch 1, odd rows, all-zero and fully dense weights, 1000+.
ROWS_DENSITY = [(1, 1.0), (1, 0.3), (3, 0.2), (17, 0.5), (1003, 0.3), (5, 0.0)]


# ---------------------------------------------------------------- shapes, rows, densities


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", range(len(ROWS_DENSITY)))
def test_matches_numpy(layout, case):
    out, inp = SHAPES[layout][case]
    rows, density = ROWS_DENSITY[case]
    _check(layout, out, inp, rows, density, seed=case)


@pytest.mark.parametrize("layout", ["csr", "bsr4x4", "nm2:4", "dense"])
@pytest.mark.parametrize("rows", [2, 16, 33])
def test_fully_dense_weight_and_row_blocks(layout, rows):
    # rows 2 and 16 fill one row block partly / exactly; 33 leaves a tail block.
    _check(layout, 36, 64, rows, 1.0, seed=rows)


@pytest.mark.parametrize("rows", [1, 3])
def test_csr_int32_indices(rows):
    rng = np.random.default_rng(7)
    w = _weight("csr", 5, 40_000, 0.002, rng)
    w[1, 39_999] = 1.5  # a column past int16
    assert pack(w, "csr").arrays["indices"].dtype == np.int32
    y, ref = _run("csr", w, rows)
    np.testing.assert_allclose(y, ref, **TOL)


@pytest.mark.parametrize("rows", [1, 3])
def test_bsr_int32_indices(rows):
    rng = np.random.default_rng(8)
    w = _weight("bsr2x1", 4, 70_000, 0.003, rng, zero_rows=())
    w[2:4, 69_999] = 2.0
    assert pack(w, "bsr2x1").arrays["indices"].dtype == np.int32
    y, ref = _run("bsr2x1", w, rows)
    np.testing.assert_allclose(y, ref, **TOL)


@pytest.mark.parametrize("layout", ["bsr16x16", "bsr32x1", "bsr1x32"])
@pytest.mark.parametrize("rows", [1, 5])
def test_bsr_large_blocks(layout, rows):
    _check(layout, 2 * 32, 4 * 32, rows, 0.4, seed=rows)


@pytest.mark.parametrize("layout,path,rows", [
    ("csr", "nnz", 3), ("csr", "rows", 1), ("nm2:4", "nnz", 4), ("nm2:4", "rows", 1),
    ("bsr4x4", "rows", 1),
])
def test_forced_paths(layout, path, rows):
    _check(layout, 40, 64, rows, 0.4, knobs={"path": path}, seed=3)


@pytest.mark.parametrize("layout", ["csr", "nm2:4"])
@pytest.mark.parametrize("vectors", [2, 4])
@pytest.mark.parametrize("rows", [37, 64])
def test_rows_path_block_widths(layout, vectors, rows):
    """Row blocks of 2 or 4 vectors (the default picks by k: ``rows_block_vectors``); 37
    rows leave a narrower last block."""
    _check(layout, 40, 64, rows, 0.4, knobs={"block_vectors": vectors}, seed=rows)


@pytest.mark.parametrize("vectors,extra,inp,density,steps", [
    (4, 0, 600, 0.3, ()),  # one 4-vector block, three panels (the last one short)
    (8, 0, 520, 0.1, (S("bias"), S("relu"))),  # one 8-vector block
    (12, 4, 513, 0.05, (S("bias"), S("residual"))),  # 8 + a tail of 4 + 1 (4 valid rows)
    (17, 0, 1030, 0.02, ()),  # two 8-vector blocks and a 1-vector tail, empty segments
])
def test_csr_panels(vectors, extra, inp, density, steps):
    """The rows path over a weight stored panel by panel (``prepare`` with the plan's rows):
    full and tail row blocks, short last panel, epilogues, empty rows and segments. Rows
    count in the host's vectors (32 rows are 4 vectors on AVX2, 2 on AVX-512)."""
    rows = vectors * vector_lanes(HOST) + extra
    rng = np.random.default_rng(rows)
    w = _weight("csr", 44, inp, density, rng, zero_rows=(0, 7))
    w[3, 256:512] = 0.0  # a whole empty panel in one row
    packed = pack(w, "csr")
    spec = SparseOpSpec("SparseLinear", "csr", 44, inp, "fc", [], list(packed.arrays), rows=rows)
    arrays = kernel_for(spec).prepare(spec, packed.arrays, HOST)
    assert "pptr" in arrays and "indptr" not in arrays
    panel = csr_panel_columns(inp, rows, vector_lanes(HOST), np.count_nonzero(w) / w.size)
    assert arrays["pptr"].shape == (-(-inp // panel) * 44 + 1,)
    y, ref = _run("csr", w, rows, steps, seed=rows, plan_rows=rows)
    np.testing.assert_allclose(y, ref, **TOL)
    # Compiled for a different row count than planned: still right.
    y, ref = _run("csr", w, 3, steps, seed=rows, plan_rows=rows)
    np.testing.assert_allclose(y, ref, **TOL)
    # The last panel summed in chunks too (the partial sums added once).
    y, ref = _run("csr", w, rows, steps, seed=rows, plan_rows=rows, knobs={"chunk": 3})
    np.testing.assert_allclose(y, ref, **TOL)


def test_csr_panels_only_when_they_pay():
    for lanes in (8, 16):
        assert csr_panel_columns(4096, 4 * lanes - 1, lanes) == 0  # no full 4-vector block
        assert csr_panel_columns(PANEL_COLUMNS, 128, lanes) == 0  # one panel
        assert csr_panel_columns(4096, 0, lanes) == 0  # rows unknown
    assert csr_panel_columns(4096, 32, 8, 0.5) == csr_panel_columns(4096, 128, 8) == 256
    # AVX-512: X's panel sized to L1 (64 columns of 128 rows, 128 of 64), widened while a
    # row's segment would hold fewer than 8 nonzeros
    assert [csr_panel_columns(4096, 128, 16, d) for d in (0.5, 0.2, 0.1, 0.05, 0.0)] == \
        [64, 64, 128, 256, 256]
    assert csr_panel_columns(4096, 64, 16, 0.5) == 128


def test_panel_major_order():
    """Entries panel by panel, row by row inside a panel, columns in order."""
    w = np.zeros((2, 600), np.float32)
    w[0, [1, 300, 599]] = [1, 2, 3]
    w[1, [5, 6, 257]] = [4, 5, 6]
    a = pack(w, "csr").arrays
    values, indices, pptr = panel_major(a["values"], a["indices"], a["indptr"], 256, 600)
    assert indices.tolist() == [1, 5, 6, 300, 257, 599]
    assert values.tolist() == [1, 4, 5, 2, 6, 3]
    assert pptr.tolist() == [0, 1, 3, 4, 5, 6, 6]


def test_rows_block_vectors_by_k():
    assert rows_block_vectors(768, 8) == 4  # a 96 KiB block of X
    assert rows_block_vectors(1024, 8) == 4
    assert rows_block_vectors(3072, 8) == 2
    assert rows_block_vectors(768, 16) == 2  # AVX-512: 64 rows of 768 are 192 KiB


@pytest.mark.parametrize("layout", ["csr", "nm2:4"])
@pytest.mark.parametrize("gather", [{}, {"words": False}, {"gather": "vector"}])
@pytest.mark.parametrize("rows", [1, 3])
def test_nonzero_path_gathers(layout, gather, rows):
    """The nonzero path gathers X lane by lane from scalar loads, with csr's int16 columns
    read four to a 64-bit word (default) or one by one, or from a vector of columns; 72
    columns at 40% leave whole vectors and a tail in most rows."""
    knobs = {"path": "nnz", **gather}
    _check(layout, 40, 72, rows, 0.4, knobs=knobs, seed=rows)
    _check(layout, 40, 72, rows, 0.4, target=_host_target("x86-64-v3"), knobs=knobs, seed=rows)


@pytest.mark.parametrize("layout", ["csr", "nm2:4", "bsr16x1", "bsr8x1", "bsr4x4", "bsr2x3"])
@pytest.mark.parametrize("rows", [9, 37, 64])
@pytest.mark.parametrize("transposed", [True, False])
def test_transposed_output_stores(layout, rows, transposed):
    """The rows path stores groups of output columns through an in-register transpose
    (``transpose_store``): 300 outputs give whole groups and a remainder per task, 9 and 37
    rows padding lanes that must not be stored, and a residual read at every lane."""
    steps = [S("bias"), S("relu"), S("residual")]
    _check(layout, 304, 96, rows, 0.3, steps=steps, seed=rows,
           knobs={"transpose_store": transposed})
    if layout in ("bsr8x1", "bsr4x4"):  # 8 lanes: one block row, or two, per group
        _check(layout, 304, 96, rows, 0.3, steps=steps, seed=rows,
               target=_host_target("x86-64-v3"), knobs={"transpose_store": transposed})


# ---------------------------------------------------------------- epilogues

EPILOGUES = [
    [S("bias"), S("relu")],
    [S("clip", -0.5, 0.7)],
    [S("clip", None, 1.0), S("residual")],
    [S("gelu")],
    [S("bias"), S("sigmoid")],
    [S("bias"), S("gelu"), S("residual")],
]


@pytest.mark.parametrize("layout", ["dense", "csr", "bsr4x4", "bsr8x1", "nm2:4", "bitmap"])
@pytest.mark.parametrize("steps", EPILOGUES, ids=lambda s: "-".join(x.op for x in s))
@pytest.mark.parametrize("rows", [1, 6])
def test_epilogues(layout, steps, rows):
    _check(layout, 40, 64, rows, 0.5, steps=steps, seed=rows)


# ---------------------------------------------------------------- bitmap


# in a multiple of 16 (AVX-512's groups; AVX2's are 8)
BITMAP_SHAPES = [(1, 16), (29, 48), (40, 64), (130, 304)]


@pytest.mark.parametrize("shape", BITMAP_SHAPES)
@pytest.mark.parametrize("rows,density", [(1, 1.0), (1, 0.5), (2, 0.3), (3, 0.0), (4, 0.5),
                                          (16, 0.2)])
def test_bitmap_matches_numpy(shape, rows, density):
    _check("bitmap", *shape, rows, density, seed=rows)


@pytest.mark.parametrize("knobs", [{"together": 2}, {"together": 3}, {"unroll": 1},
                                   {"unroll": 3}, {"prefetch": 0}])
@pytest.mark.parametrize("rows", [1, 2])
def test_bitmap_knobs(knobs, rows):
    """Output rows side by side (with a remainder), accumulator sets (with a remainder of
    groups), no prefetch: the same numbers."""
    _check("bitmap", 37, 80, rows, 0.45, knobs=knobs, seed=3)


def test_bitmap_expand_table():
    """Lane l of mask m takes value number popcount(m below l), for every 8-bit mask."""
    from sparsec.codegen.tvm.kernels.linear_bitmap import expand_table

    lut = expand_table(8)
    for m in (0b1, 0b10110100, 0xFF):
        taken = [lut[m, lane] for lane in range(8) if m >> lane & 1]
        assert taken == list(range(bin(m).count("1")))


def test_bitmap_needs_whole_groups_of_sixteen_on_avx512():
    packed = pack(np.ones((4, 24), np.float32), "bitmap")  # fits the format (24 % 8 == 0)
    spec = SparseOpSpec("SparseLinear", "bitmap", 4, 24, "fc", [], list(packed.arrays))
    with pytest.raises(CompileError, match="divisible by 16"):
        kernel_for(spec).prepare(spec, packed.arrays, _host_target("x86-64-v4"))


# ---------------------------------------------------------------- other targets and threads


@pytest.mark.skipif("avx2" not in _cpu_flags(), reason="needs an AVX2 host")
@pytest.mark.parametrize("layout", ["dense", "csr", "bsr4x4", "bsr8x1", "nm2:4", "bitmap"])
@pytest.mark.parametrize("rows", [1, 9])
def test_avx2_code(layout, rows):
    # 8 lanes and 16 registers: other tile sizes, and no AVX-512 gather.
    _check(layout, 48, 72, rows, 0.4, steps=[S("bias"), S("gelu")],
           target=_host_target("x86-64-v3"), seed=rows)


@pytest.mark.parametrize("layout", ["dense", "csr", "bsr4x4", "nm2:4"])
def test_two_threads(layout):
    """The parallel loops really in parallel (TVM's pool is per calling thread)."""
    errors = []

    def body():
        try:
            tvm.get_global_func("runtime.config_threadpool")(-3, 2, ["0", "1"])
            _check(layout, 128, 256, 37, 0.3, seed=11)
            _check(layout, 128, 256, 1, 0.3, seed=12)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert not errors, errors[0]


# ---------------------------------------------------------------- small pieces


def test_vector_facts_follow_the_target():
    def lanes(d):
        return vector_lanes(tvm.target.Target(d))

    assert lanes({"kind": "llvm", "mcpu": "skylake-avx512"}) == 16
    assert lanes({"kind": "llvm", "mcpu": "znver3"}) == 8
    assert lanes({"kind": "llvm", "mcpu": "haswell"}) == 8
    assert lanes({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}) == 4
    assert vector_registers(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})) == 16
    assert vector_lanes(HOST, {"lanes": 4}) == 4


def test_balanced_splits():
    costs = np.array([100, 1, 1, 1, 1, 100, 1, 1], np.int64)
    s = balanced_splits(costs, 4)
    assert s[0] == 0 and s[-1] == len(costs) and np.all(np.diff(s) >= 0)
    assert balanced_splits(np.ones(3), 8).tolist() == [0, 1, 2, 3]


def test_prepare_dense_panels():
    w = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    spec = SparseOpSpec("SparseLinear", "dense", 3, 5, "fc", [], ["w"])
    panels = kernel_for(spec).prepare(spec, {"w": w}, HOST)["w_panels"]
    lanes = vector_lanes(HOST)
    assert panels.shape == (1, 5, lanes)
    np.testing.assert_array_equal(panels[0, :, :3], w.T)
    assert not panels[0, :, 3:].any()


def test_wrong_input_shape_is_a_compile_error():
    w = np.ones((4, 8), np.float32)
    packed = pack(w, "csr")
    spec = SparseOpSpec("SparseLinear", "csr", 4, 8, "fc", [], list(packed.arrays))
    kdef = kernel_for(spec)
    arrays = kdef.prepare(spec, packed.arrays, HOST)
    with pytest.raises(CompileError, match="fc"):
        kdef.build(spec, (2, 9), arrays, HOST, None)


# ---------------------------------------------------------------- accuracy of long reductions


@pytest.mark.parametrize("layout,density", [("dense", 1.0), ("csr", 0.9), ("nm2:4", 0.5),
                                            ("bsr4x4", 0.9), ("bsr16x1", 0.9)])
@pytest.mark.parametrize("rows", [1, 8, 33])
def test_long_reductions_are_summed_in_chunks(layout, density, rows):
    """k = 4096 with N(0, 1) terms: outputs reach ~250. One running float32 sum per output
    was off by up to 4.4e-4 from float64 (onnxruntime: 8e-5), enough to fail verification at
    1e-4; partial sums of 128-256 terms keep the error under 1e-4. Dense at 33 rows runs
    the k-blocked order (partial sums in memory), at 1 and 8 rows the in-register chunks."""
    w = _weight(layout, 256, 4096, density, np.random.default_rng(0))
    y, ref = _run(layout, w, rows)
    assert np.abs(y - ref).max() < 1e-4


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("rows", [3, 13])
def test_dense_with_and_without_packed_x(pack, rows):
    """X packed into row blocks (by default only for K >= 2048 and 8+ panels) or read in place."""
    _check("dense", 70, 300, rows, 1.0, knobs={"pack": pack}, seed=rows)


@pytest.mark.parametrize("rows", [1, 13])
def test_dense_chunked_sums_forced(rows):
    """The chunked sums (by default only for k > CHUNK_ABOVE) on a short k: chunks of 64
    and a short last one, in registers at 1 row, in the k-blocked order at 13 (3 row blocks)."""
    _check("dense", 70, 300, rows, 1.0, knobs={"chunk_above": 0, "k_chunk": 64}, seed=rows)


@pytest.mark.parametrize("rows", [1, 40])
def test_dense_unchunked_accuracy(rows):
    """Up to k = CHUNK_ABOVE the sum is one running sum: still within 1e-5 of float64."""
    w = _weight("dense", 64, CHUNK_ABOVE, 1.0, np.random.default_rng(rows))
    y, ref = _run("dense", w, rows)
    assert np.abs(y - ref).max() < 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("rows", [8, 10])
def test_dense_even_row_tiles(rows):
    """8 rows as 4 + 4 and 10 as 5 + 5 (``even_tiles``), with a residual to check the rows
    each tile writes."""
    assert even_tiles(rows, 6) == rows // 2
    _check("dense", 70, 300, rows, 1.0, steps=EPILOGUES[-1], seed=rows)


@pytest.mark.parametrize("rows", [14, 20])
def test_dense_aliased_rows(rows):
    """X's rows 4 KiB apart (k = 1024), unpacked: tiles of at most L1_WAYS rows (14 as
    7 + 7, 20 as 8 + 8 + 4 where AVX-512 would take 14 + 6), with a residual to check the
    rows each tile writes."""
    assert (1024 * 4) % ALIAS_BYTES == 0 and even_tiles(rows, L1_WAYS) <= L1_WAYS
    _check("dense", 70, 1024, rows, 1.0, steps=EPILOGUES[-1], seed=rows)


def test_even_tiles():
    assert [even_tiles(r, 6) for r in (1, 3, 6, 7, 8, 9, 10, 12, 13, 128)] == [
        1, 3, 6, 6, 4, 6, 5, 6, 6, 6]
    assert even_tiles(16, 14) == 8  # AVX-512's 14-row tiles: 8 + 8


@pytest.mark.parametrize("rows,plan_rows,out", [(1, 1, 70), (1, 1, 64), (1, 1, 20), (3, 1, 70),
                                              (1, 0, 70)])
def test_dense_gemv_panels(rows, plan_rows, out):
    """A layer the plan runs on one row gets panels of GEMV_PANEL_VECTORS vectors (a last
    panel partly padding, an output narrower than one panel keeps 2 vectors); built for
    more rows than the plan said, the same panels still give the right answer."""
    lanes = vector_lanes(HOST)
    spec = SparseOpSpec("SparseLinear", "dense", out, 300, "fc", [], ["w"], rows=plan_rows)
    w = np.random.default_rng(out).standard_normal((out, 300)).astype(np.float32)
    nb = kernel_for(spec).prepare(spec, {"w": w}, HOST)["w_panels"].shape[2]
    wide = plan_rows == 1 and out >= GEMV_PANEL_VECTORS * lanes
    assert nb == (GEMV_PANEL_VECTORS if wide else min(2, -(-out // lanes))) * lanes
    _check("dense", out, 300, rows, 1.0, steps=EPILOGUES[-1], plan_rows=plan_rows, seed=out)


def test_dense_prefetch_default():
    """A weight of 32 MiB streamed once is prefetched at 2 rows, not at one (the GEMV)."""
    o, k = 2048, 4096
    w = np.zeros((o, k), np.float32)
    for rows, want in ((1, False), (2, True)):
        spec = SparseOpSpec("SparseLinear", "dense", o, k, "fc", [], ["w"], rows=rows)
        kdef = kernel_for(spec)
        func = kdef.build(spec, (rows, k), kdef.prepare(spec, {"w": w}, HOST), HOST)
        assert ("llvm.prefetch" in func.script()) == want, rows


@pytest.mark.parametrize("rows", [1, 5])
def test_dense_prefetch_path(rows):
    """W prefetching (on by default only for weights over 32 MiB) is forced on a small one."""
    _check("dense", 70, 700, rows, 1.0, knobs={"prefetch": 32})


@pytest.mark.parametrize("layout,rows,plan_rows", [
    ("csr", 60, 60), ("csr", 1, 1), ("csr", 13, 0), ("bsr4x4", 9, 0), ("bsr16x1", 1, 0),
    ("nm2:4", 7, 0), ("dense", 5, 0), ("dense", 1, 0)])
def test_no_stray_access(layout, rows, plan_rows):
    """Every buffer against an unreadable page at its start, then at its end
    (``sparsec.testing``): a read or write outside any of them faults. The csr rows path's
    square transposition once read past the end of X (a 64-row block of 60 rows)."""
    w = _weight(layout, 48, 1032, 0.3, np.random.default_rng(rows))
    for guard in ("start", "end"):
        y, ref = _run(layout, w, rows, [EpilogueStep("bias")], plan_rows=plan_rows, guard=guard)
        np.testing.assert_allclose(y, ref, **TOL)


def test_csr_rows_path_width_follows_the_rows():
    """AVX-512 pads the fewest rows (4 lanes only up to 4 rows, the wider on a tie); AVX2
    keeps 8."""
    widths = [rows_lanes(r, 16) for r in (2, 4, 5, 8, 9, 16, 17, 24, 31, 32, 128)]
    assert widths == [4, 4, 8, 8, 16, 16, 8, 8, 16, 16, 16]
    assert [rows_lanes(r, 8) for r in (2, 8, 24)] == [8, 8, 8]


@pytest.mark.parametrize("rows", [2, 4, 8, 12, 24])
def test_csr_rows_path_at_few_rows(rows):
    """The widths ``rows_lanes`` picks on this host, against numpy."""
    _check("csr", 70, 300, rows, 0.1, seed=rows)

