"""The kernels' code for each x86 vector ISA, compiled and inspected on any x86 host.

The numeric tests run the code of the host's ISA only. On the CI machine (AVX2) the AVX-512
kernels (16 lanes, 32 registers, masked gathers, 16x16 transposes) would otherwise never
be built at all. Here every kernel is compiled for both ISAs, and its assembly must use the
ISA's registers: zmm for x86-64-v4, ymm and no zmm for x86-64-v3. Where the host has
AVX-512, the numeric tests also run that code (``HOST`` in the other test files).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from sparsec.codegen.tvm.kernels import kernel_for  # noqa: E402
from sparsec.codegen.tvm.stack_locals import compile_kernel  # noqa: E402
from sparsec.formats import pack  # noqa: E402
from sparsec.ops import ConvAttrs, SparseOpSpec  # noqa: E402
from sparsec.plan import EpilogueStep  # noqa: E402

ISAS = {"avx512": "x86-64-v4", "avx2": "x86-64-v3"}
ZMM = re.compile(r"%zmm\d+")
YMM = re.compile(r"%ymm\d+")


def _target(isa: str):
    """The target of an ISA key of ``ISAS``, or of an LLVM CPU name (znver4)."""
    return tvm.target.Target({"kind": "llvm", "mcpu": ISAS.get(isa, isa), "num-cores": 2})


def _weight(rows: int, cols: int, layout: str, rng, density: float = 0.4) -> np.ndarray:
    """A random weight that fits ``layout`` (two of every four for nm2:4)."""
    if layout == "nm2:4":
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        w.reshape(rows, cols // 4, 4)[..., 2:] = 0  # two of every four
        return w
    if layout.startswith("bsr"):
        r, c = (int(d) for d in layout[3:].split("x"))
        keep = np.kron(rng.random((rows // r, cols // c)) < density, np.ones((r, c), bool))
        return (rng.standard_normal((rows, cols)) * keep).astype(np.float32)
    keep = rng.random((rows, cols)) < density
    return (rng.standard_normal((rows, cols)) * keep).astype(np.float32)


def _asm(spec: SparseOpSpec, given: dict, in_shape, isa: str) -> str:
    target = _target(isa)
    kd = kernel_for(spec)
    arrays = kd.prepare(spec, given, target)
    func = kd.build(spec, in_shape, arrays, target, {})
    ex = compile_kernel(func, target)
    return ex.mod.inspect_source("asm")


def _linear(layout: str, rows: int) -> tuple[SparseOpSpec, dict, tuple]:
    w = _weight(48, 64, layout, np.random.default_rng(0))
    packed = pack(w, layout)
    spec = SparseOpSpec("SparseLinear", layout, 48, 64, "fc", [EpilogueStep("bias")],
                        list(packed.arrays))
    return spec, dict(packed.arrays), (rows, 64)


def _conv(layout: str) -> tuple[SparseOpSpec, dict, tuple]:
    k = (1, 1) if layout == "chw-spmm" else (3, 3)
    pads = (0,) * 4 if layout == "chw-spmm" else (1,) * 4
    w = _weight(16, 8 * k[0] * k[1], layout, np.random.default_rng(1))
    packed = pack(w, layout)
    spec = SparseOpSpec("SparseConv", layout, 16, w.shape[1], "conv", [EpilogueStep("relu")],
                        list(packed.arrays), ConvAttrs(k, (1, 1), pads, (1, 1)))
    return spec, dict(packed.arrays), (1, 8, 20, 20)


def _expand_depthwise(layout: str, stride: int, project: bool):
    rng = np.random.default_rng(2)
    packed = pack(_weight(24, 8, layout, rng, 1.0 if layout == "dense" else 0.4), layout)
    spec = SparseOpSpec("SparseConv", layout, 24, 8, "expand", [EpilogueStep("relu")],
                        list(packed.arrays), ConvAttrs((1, 1)),
                        ConvAttrs((3, 3), (stride, stride), (1, 1, 1, 1), (1, 1), 24),
                        [EpilogueStep("relu")])
    given = dict(packed.arrays)
    if project:
        pj = pack(_weight(12, 24, "csr", rng), "csr")
        spec.project = SparseOpSpec("SparseConv", "csr", 12, 24, "project", [],
                                    list(pj.arrays), ConvAttrs((1, 1)))
        given.update({f"pj_{k}": v for k, v in pj.arrays.items()})
    return spec, given, (1, 8, 20, 20)


CASES = {
    **{f"linear-{lay}-rows{r}": (lambda lay=lay, r=r: _linear(lay, r))
       for lay in ("dense", "csr", "bsr4x4", "bsr16x1", "nm2:4") for r in (1, 9)},
    **{f"linear-bitmap-rows{r}": (lambda r=r: _linear("bitmap", r)) for r in (1, 3)},
    "conv-chw-spmm": lambda: _conv("chw-spmm"),
    "conv-dense-3x3": lambda: _conv("dense"),
    "conv-bsr2x2-3x3": lambda: _conv("bsr2x2"),
    "expand-dw-chw-spmm": lambda: _expand_depthwise("chw-spmm", 1, False),
    "expand-dw-dense-stride2": lambda: _expand_depthwise("dense", 2, False),
    "expand-dw-csr-project": lambda: _expand_depthwise("csr", 1, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_avx512_code_uses_zmm_registers(case):
    asm = _asm(*CASES[case](), "avx512")
    assert ZMM.search(asm), f"{case}: no zmm register in the AVX-512 build"


@pytest.mark.parametrize("case", ["linear-csr-rows9", "linear-bsr4x4-rows9", "conv-chw-spmm",
                                  "expand-dw-dense-stride2"])
def test_avx2_code_stays_in_ymm_registers(case):
    """The check above can fail: the AVX2 build of the same kernel has no zmm register."""
    asm = _asm(*CASES[case](), "avx2")
    assert YMM.search(asm) and not ZMM.search(asm), case


def test_avx512_csr_gathers_sixteen_lanes():
    """One-row csr gathers x with AVX-512's 16-lane gather (AVX2: 8 lanes, ymm)."""
    spec, given, shape = _linear("csr", 1)
    gathers = [ln for ln in _asm(spec, given, shape, "avx512").splitlines() if "vgatherdps" in ln]
    assert gathers and all("zmm" in ln for ln in gathers), gathers[:3]


def test_no_hardware_gather_on_amd_zen():
    """AMD Zen's AVX-512 gather is slower than lane-by-lane loads (``hardware_gather``):
    a build for znver4 gathers without vgatherdps, still in zmm registers."""
    from sparsec.codegen.tvm.kernels.linear_common import hardware_gather

    assert hardware_gather(_target("avx512"), 16) and not hardware_gather(_target("znver4"), 16)
    asm = _asm(*_linear("csr", 1), "znver4")
    assert "vgatherdps" not in asm and ZMM.search(asm)


def test_no_software_prefetch_on_zen4():
    """A dense GEMM whose 32 MiB weight streams once prefetches it on Zen 3, not on Zen 4
    (``linear_common.NO_PREFETCH_CPUS``)."""
    from sparsec.codegen.tvm.kernels.linear_common import software_prefetch

    def script(mcpu):
        spec = SparseOpSpec("SparseLinear", "dense", 2048, 4096, "fc", [], ["w"], rows=4)
        nb = 2 * (16 if mcpu == "znver4" else 8)  # panels of 2 vectors
        panels = {"w_panels": np.zeros((2048 // nb, 4096, nb), np.float32)}
        return kernel_for(spec).build(spec, (4, 4096), panels, _target(mcpu), {}).script()

    assert software_prefetch(_target("avx512")) and not software_prefetch(_target("znver4"))
    assert "llvm.prefetch" in script("znver3") and "llvm.prefetch" not in script("znver4")


def test_avx512_csr_rows_path_narrows_its_vectors_to_the_rows():
    """At 8 rows the AVX-512 rows path multiplies in ymm (8 lanes) rather than zmm half of
    zeros (``linear_csr.rows_lanes``); at 16 rows in zmm."""
    def fmas(rows):
        asm = _asm(*_linear("csr", rows), "avx512")
        return [ln for ln in asm.splitlines() if "vfmadd" in ln]

    eight, sixteen = fmas(8), fmas(16)
    assert eight and not any("zmm" in ln for ln in eight), eight[:3]
    assert any("zmm" in ln for ln in sixteen), sixteen[:3]



@pytest.mark.parametrize("rows", [1, 3])
def test_bitmap_expands_with_the_isa(rows):
    """The bitmap kernel spreads a group's stored values to their columns with AVX-512's
    vexpandps under a k-mask taken from the group's 16 bits, one per group and row of
    output; with AVX2 with a permute of the values by a table row, in ymm (``vpermps``,
    which LLVM emits as ``vpermd``; ``linear_bitmap._expand``)."""
    wide = _asm(*_linear("bitmap", rows), "avx512")
    assert any("vexpandps" in ln and "zmm" in ln and "{%k" in ln for ln in wide.splitlines())
    assert "popcnt" in wide and "vfmadd" in wide
    narrow = _asm(*_linear("bitmap", rows), "avx2")
    assert re.search(r"vperm(ps|d)\s.*%ymm", narrow) and "vexpandps" not in narrow
    assert not ZMM.search(narrow)
