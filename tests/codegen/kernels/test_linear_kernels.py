"""SparseLinear TIR kernels (csr, bsr, nm, dense) against numpy: shapes, rows, densities,
forced paths, epilogues, other targets, threads and stray accesses. A case is built, run
and compared by ``linear_kernel_cases`` (tests/support); the dense GEMM's own choices are
tested in test_linear_dense.py, the bitmap layout in test_linear_bitmap.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from linear_kernel_cases import (  # noqa: E402
    EPILOGUES,
    HOST,
    TOL,
    S,
    check_kernel,
    host_target,
    kernel_weight,
    run_kernel,
)

from sparsec.codegen.tvm.kernels import kernel_for  # noqa: E402
from sparsec.codegen.tvm.kernels.linear_common import (  # noqa: E402
    balanced_splits,
    vector_lanes,
    vector_registers,
)
from sparsec.codegen.tvm.kernels.linear_csr import panel_major, rows_lanes  # noqa: E402
from sparsec.errors import CompileError  # noqa: E402
from sparsec.formats import pack  # noqa: E402
from sparsec.ops import SparseOpSpec  # noqa: E402
from sparsec.plan import EpilogueStep  # noqa: E402
from sparsec.targets.cpu import cpu_flags  # noqa: E402
from sparsec.targetspec import PANEL_COLUMNS, csr_panel_columns, rows_block_vectors  # noqa: E402

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
    check_kernel(layout, out, inp, rows, density, seed=case)


@pytest.mark.parametrize("layout", ["csr", "bsr4x4", "nm2:4", "dense"])
@pytest.mark.parametrize("rows", [2, 16, 33])
def test_fully_dense_weight_and_row_blocks(layout, rows):
    # rows 2 and 16 fill one row block partly / exactly; 33 leaves a tail block.
    check_kernel(layout, 36, 64, rows, 1.0, seed=rows)


@pytest.mark.parametrize("rows", [1, 3])
def test_csr_int32_indices(rows):
    rng = np.random.default_rng(7)
    w = kernel_weight("csr", 5, 40_000, 0.002, rng)
    w[1, 39_999] = 1.5  # a column past int16
    assert pack(w, "csr").arrays["indices"].dtype == np.int32
    y, ref = run_kernel("csr", w, rows)
    np.testing.assert_allclose(y, ref, **TOL)


@pytest.mark.parametrize("rows", [1, 3])
def test_bsr_int32_indices(rows):
    rng = np.random.default_rng(8)
    w = kernel_weight("bsr2x1", 4, 70_000, 0.003, rng, zero_rows=())
    w[2:4, 69_999] = 2.0
    assert pack(w, "bsr2x1").arrays["indices"].dtype == np.int32
    y, ref = run_kernel("bsr2x1", w, rows)
    np.testing.assert_allclose(y, ref, **TOL)


@pytest.mark.parametrize("layout", ["bsr16x16", "bsr32x1", "bsr1x32"])
@pytest.mark.parametrize("rows", [1, 5])
def test_bsr_large_blocks(layout, rows):
    check_kernel(layout, 2 * 32, 4 * 32, rows, 0.4, seed=rows)


@pytest.mark.parametrize("layout,path,rows", [
    ("csr", "nnz", 3), ("csr", "rows", 1), ("nm2:4", "nnz", 4), ("nm2:4", "rows", 1),
    ("bsr4x4", "rows", 1),
])
def test_forced_paths(layout, path, rows):
    check_kernel(layout, 40, 64, rows, 0.4, knobs={"path": path}, seed=3)


@pytest.mark.parametrize("layout", ["csr", "nm2:4"])
@pytest.mark.parametrize("vectors", [2, 4])
@pytest.mark.parametrize("rows", [37, 64])
def test_rows_path_block_widths(layout, vectors, rows):
    """Row blocks of 2 or 4 vectors (the default picks by k: ``rows_block_vectors``); 37
    rows leave a narrower last block."""
    check_kernel(layout, 40, 64, rows, 0.4, knobs={"block_vectors": vectors}, seed=rows)


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
    w = kernel_weight("csr", 44, inp, density, rng, zero_rows=(0, 7))
    w[3, 256:512] = 0.0  # a whole empty panel in one row
    packed = pack(w, "csr")
    spec = SparseOpSpec("SparseLinear", "csr", 44, inp, "fc", [], list(packed.arrays), rows=rows)
    arrays = kernel_for(spec).prepare(spec, packed.arrays, HOST)
    assert "pptr" in arrays and "indptr" not in arrays
    panel = csr_panel_columns(inp, rows, vector_lanes(HOST), np.count_nonzero(w) / w.size)
    assert arrays["pptr"].shape == (-(-inp // panel) * 44 + 1,)
    y, ref = run_kernel("csr", w, rows, steps, seed=rows, plan_rows=rows)
    np.testing.assert_allclose(y, ref, **TOL)
    # Compiled for a different row count than planned: still right.
    y, ref = run_kernel("csr", w, 3, steps, seed=rows, plan_rows=rows)
    np.testing.assert_allclose(y, ref, **TOL)
    # The last panel summed in chunks too (the partial sums added once).
    y, ref = run_kernel("csr", w, rows, steps, seed=rows, plan_rows=rows, knobs={"chunk": 3})
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
    check_kernel(layout, 40, 72, rows, 0.4, knobs=knobs, seed=rows)
    check_kernel(layout, 40, 72, rows, 0.4, target=host_target("x86-64-v3"), knobs=knobs, seed=rows)


@pytest.mark.parametrize("layout", ["csr", "nm2:4", "bsr16x1", "bsr8x1", "bsr4x4", "bsr2x3"])
@pytest.mark.parametrize("rows", [9, 37, 64])
@pytest.mark.parametrize("transposed", [True, False])
def test_transposed_output_stores(layout, rows, transposed):
    """The rows path stores groups of output columns through an in-register transpose
    (``transpose_store``): 300 outputs give whole groups and a remainder per task, 9 and 37
    rows padding lanes that must not be stored, and a residual read at every lane."""
    steps = [S("bias"), S("relu"), S("residual")]
    check_kernel(layout, 304, 96, rows, 0.3, steps=steps, seed=rows,
           knobs={"transpose_store": transposed})
    if layout in ("bsr8x1", "bsr4x4"):  # 8 lanes: one block row, or two, per group
        check_kernel(layout, 304, 96, rows, 0.3, steps=steps, seed=rows,
               target=host_target("x86-64-v3"), knobs={"transpose_store": transposed})


# ---------------------------------------------------------------- epilogues



@pytest.mark.parametrize("layout", ["dense", "csr", "bsr4x4", "bsr8x1", "nm2:4", "bitmap"])
@pytest.mark.parametrize("steps", EPILOGUES, ids=lambda s: "-".join(x.op for x in s))
@pytest.mark.parametrize("rows", [1, 6])
def test_epilogues(layout, steps, rows):
    check_kernel(layout, 40, 64, rows, 0.5, steps=steps, seed=rows)


# ---------------------------------------------------------------- other targets and threads


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="needs an AVX2 host")
@pytest.mark.parametrize("layout", ["dense", "csr", "bsr4x4", "bsr8x1", "nm2:4", "bitmap"])
@pytest.mark.parametrize("rows", [1, 9])
def test_avx2_code(layout, rows):
    # 8 lanes and 16 registers: other tile sizes, and no AVX-512 gather.
    check_kernel(layout, 48, 72, rows, 0.4, steps=[S("bias"), S("gelu")],
           target=host_target("x86-64-v3"), seed=rows)


@pytest.mark.parametrize("layout", ["dense", "csr", "bsr4x4", "nm2:4"])
def test_two_threads(layout):
    """The parallel loops really in parallel (TVM's pool is per calling thread)."""
    errors = []

    def body():
        try:
            tvm.get_global_func("runtime.config_threadpool")(-3, 2, ["0", "1"])
            check_kernel(layout, 128, 256, 37, 0.3, seed=11)
            check_kernel(layout, 128, 256, 1, 0.3, seed=12)
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
    w = kernel_weight(layout, 256, 4096, density, np.random.default_rng(0))
    y, ref = run_kernel(layout, w, rows)
    assert np.abs(y - ref).max() < 1e-4


@pytest.mark.parametrize("layout,rows,plan_rows", [
    ("csr", 60, 60), ("csr", 1, 1), ("csr", 13, 0), ("bsr4x4", 9, 0), ("bsr16x1", 1, 0),
    ("nm2:4", 7, 0), ("dense", 5, 0), ("dense", 1, 0)])
def test_no_stray_access(layout, rows, plan_rows):
    """Every buffer against an unreadable page at its start, then at its end
    (``sparsec.testing``): a read or write outside any of them faults. The csr rows path's
    square transposition once read past the end of X (a 64-row block of 60 rows)."""
    w = kernel_weight(layout, 48, 1032, 0.3, np.random.default_rng(rows))
    for guard in ("start", "end"):
        y, ref = run_kernel(layout, w, rows, [EpilogueStep("bias")], plan_rows=plan_rows,
                            guard=guard)
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
    check_kernel("csr", 70, 300, rows, 0.1, seed=rows)
