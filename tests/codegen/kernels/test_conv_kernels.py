"""SparseConv TIR kernels (codegen/tvm/kernels/conv*.py) against torch's conv2d.

Each case packs a random weight of the layout's structure with ``sparsec.formats.pack``, runs
``prepare`` and ``build``, compiles the PrimFunc alone and compares with
``conv2d(pad(X), unpack(W))`` followed by ``sparsec.ops.apply_epilogue`` (rtol = atol = 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from sparsec.codegen.tvm.kernels import kernel_for
from sparsec.codegen.tvm.kernels.conv import KERNELS, simd_lanes
from sparsec.codegen.tvm.kernels.conv_geometry import pow2_pieces
from sparsec.codegen.tvm.stack_locals import compile_kernel
from sparsec.errors import CompileError
from sparsec.formats import pack, unpack
from sparsec.layouts import parse_layout
from sparsec.ops import SparseOpSpec, apply_epilogue
from sparsec.plan import ConvAttrs, EpilogueStep
from sparsec.targets.cpu import cpu_flags, detect_host, tvm_target
from sparsec.testing import guarded_tensor

TOL = dict(rtol=1e-4, atol=1e-4)
HOST = tvm_target(detect_host())
FLAGS = cpu_flags()


def _steps(names):
    return [EpilogueStep("clip", 0.0, 6.0) if s == "clip" else EpilogueStep(s) for s in names]


def _weight(rng, layout: str, o: int, k: int, density: float) -> np.ndarray:
    """A random [o, k] weight with the layout's structure at about ``density``."""
    lay = parse_layout(layout)
    if lay.kind == "bsr":
        r, c = lay.params
        mask = np.kron(rng.random((o // r, k // c)) < density, np.ones((r, c)))
    elif lay.kind == "nm":
        n, m = lay.params
        keep = np.argsort(rng.random((o, k // m, m)), axis=2)[:, :, :n]
        mask = np.zeros((o, k // m, m))
        np.put_along_axis(mask, keep, 1.0, axis=2)
        mask = mask.reshape(o, k) * (rng.random((o, k)) < min(1.0, density * m / n))
    else:
        mask = rng.random((o, k)) < density
    return (rng.standard_normal((o, k)) * mask).astype(np.float32)


def _run(layout, x_shape, o, kernel=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0),
         dilations=(1, 1), density=0.3, epilogue=(), target=HOST, knobs=None, seed=0,
         zero_rows=(), guard="end", plan_rows=0):
    rng = np.random.default_rng(seed)
    n, c, h, w = x_shape
    kh, kw = kernel
    wd = _weight(rng, layout, o, c * kh * kw, density)
    wd[list(zero_rows)] = 0.0
    packed = pack(wd, layout)
    spec = SparseOpSpec("SparseConv", layout, o, c * kh * kw, "conv_node", _steps(epilogue),
                        list(packed.arrays), ConvAttrs(kernel, strides, pads, dilations),
                        rows=plan_rows)
    kd = kernel_for(spec)
    arrays = kd.prepare(spec, packed.arrays, target)
    func = kd.build(spec, x_shape, arrays, target, knobs or {})
    lib = compile_kernel(func, target)

    x = rng.standard_normal(x_shape).astype(np.float32)
    xt = torch.nn.functional.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]))
    wt = torch.from_numpy(unpack(packed).reshape(o, c, kh, kw))
    ref = torch.nn.functional.conv2d(xt, wt, stride=strides, dilation=dilations).numpy()
    bias = rng.standard_normal(o).astype(np.float32)
    residual = rng.standard_normal(ref.shape).astype(np.float32)
    ref = apply_epilogue(ref, spec.epilogue, bias, residual, channel_axis=1)

    args = [x, *arrays.values()]
    args += [bias] if spec.has_bias else []
    args += [residual] if spec.has_residual else []
    args.append(np.full(ref.shape, np.nan, np.float32))  # every output must be written
    tensors = [guarded_tensor(a, guard) for a in args]  # a stray access faults
    lib["main"](*tensors)
    return tensors[-1].numpy(), ref, packed


# (layout, x shape, O, kernel, strides, pads, dilations, density, epilogue)
CASES = [
    # 1x1, stride 1: every layout reads X directly
    ("chw-spmm", (1, 32, 13, 11), 17, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.1, ("bias", "relu")),
    ("chw-spmm", (2, 16, 7, 7), 24, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.3, ("residual",)),
    ("chw-spmm", (1, 24, 16, 16), 8, (1, 1), (1, 1), (0,) * 4, (1, 1), 1.0, ("sigmoid",)),
    ("csr", (1, 1, 9, 9), 5, (1, 1), (1, 1), (0,) * 4, (1, 1), 1.0, ("gelu",)),
    ("csr", (3, 20, 5, 6), 1, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.5, ("bias", "clip")),
    ("csr", (1, 64, 7, 7), 96, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.1, ()),
    ("dense", (2, 5, 7, 7), 13, (1, 1), (1, 1), (0,) * 4, (1, 1), 1.0, ("bias", "gelu")),
    ("dense", (1, 1, 8, 8), 1, (1, 1), (1, 1), (0,) * 4, (1, 1), 1.0, ("relu",)),
    ("bsr4x4", (1, 32, 9, 9), 16, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.3, ("bias", "residual")),
    ("bsr1x4", (2, 8, 13, 11), 6, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.5, ("sigmoid",)),
    ("nm2:4", (1, 16, 10, 10), 12, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.5, ("clip",)),
    ("nm1:4", (2, 16, 7, 9), 10, (1, 1), (1, 1), (0,) * 4, (1, 1), 0.25, ("bias", "relu")),
    # kxk, strides, asymmetric pads, dilations: columns from the padded copy Z
    ("csr", (1, 8, 13, 11), 12, (3, 3), (1, 1), (1,) * 4, (1, 1), 0.2, ("bias", "relu")),
    ("csr", (2, 5, 13, 11), 7, (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), 0.3, ("residual", "sigmoid")),
    ("csr", (1, 3, 20, 23), 4, (3, 2), (2, 1), (0, 2, 1, 0), (2, 3), 0.5, ("gelu",)),
    ("csr", (1, 4, 40, 90), 6, (3, 3), (1, 1), (1,) * 4, (1, 1), 0.3, ("bias",)),  # long rows
    ("dense", (1, 3, 30, 30), 8, (3, 3), (2, 1), (1, 0, 2, 1), (2, 1), 1.0, ()),
    ("dense", (2, 6, 7, 7), 9, (3, 3), (1, 1), (1,) * 4, (1, 1), 1.0, ("bias", "clip")),
    ("dense", (1, 16, 14, 14), 32, (1, 1), (2, 2), (0,) * 4, (1, 1), 1.0, ("relu",)),
    ("bsr2x3", (1, 4, 20, 26), 8, (3, 3), (1, 1), (1,) * 4, (1, 1), 0.3, ("relu",)),
    ("bsr4x1", (2, 3, 11, 13), 8, (2, 2), (2, 1), (0, 1, 1, 0), (1, 2), 0.5, ("gelu",)),
    ("bsr8x2", (1, 2, 9, 9), 16, (5, 5), (1, 1), (2,) * 4, (1, 1), 0.5, ("bias",)),
    ("nm2:4", (1, 4, 9, 9), 8, (2, 2), (1, 1), (1,) * 4, (1, 1), 0.5, ("clip",)),
    ("nm1:8", (1, 8, 12, 12), 5, (3, 3), (2, 2), (1,) * 4, (1, 1), 0.125, ("sigmoid",)),
    ("chw-spmm", (1, 1, 1, 1), 1, (1, 1), (1, 1), (0,) * 4, (1, 1), 1.0, ("bias",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-O{c[2]}-k{c[3]}-s{c[4]}")
def test_matches_torch(case):
    layout, shape, o, k, s, p, d, density, epi = case
    out, ref, _ = _run(layout, shape, o, k, s, p, d, density, epi)
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("layout", ["csr", "chw-spmm", "bsr2x1", "nm1:4", "dense"])
def test_all_zero_and_empty_channels(layout):
    out, ref, packed = _run(layout, (2, 8, 7, 7), 6, density=0.0, epilogue=("bias",))
    np.testing.assert_allclose(out, ref, **TOL)
    out, ref, _ = _run(layout, (1, 8, 9, 5), 6, density=0.6, zero_rows=(0, 1, 4),
                       epilogue=("residual", "relu"))
    np.testing.assert_allclose(out, ref, **TOL)
    assert np.all(out[:, [0, 1]] >= 0)


@pytest.mark.parametrize("layout,kernel", [("csr", (1, 1)), ("chw-spmm", (1, 1)),
                                           ("nm1:4", (1, 1)), ("bsr1x1", (1, 1)),
                                           ("csr", (3, 3))])
def test_int32_indices(layout, kernel):
    c = 33000 // (kernel[0] * kernel[1]) // 4 * 4
    pads = (1, 1, 1, 1) if kernel != (1, 1) else (0,) * 4
    out, ref, packed = _run(layout, (1, c, 2, 3), 3, kernel, pads=pads, density=0.002)
    if "indices" in packed.arrays and layout != "nm1:4":
        assert packed.arrays["indices"].dtype == np.int32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("knobs", [{"pack": True}, {"pack": False}, {"align": True},
                                   {"align": False}, {"tile_lanes": 8}, {"threads": 1}])
@pytest.mark.parametrize("layout,kernel,strides", [("csr", (1, 1), (1, 1)),
                                                   ("csr", (3, 3), (1, 1)),
                                                   ("bsr2x2", (1, 1), (2, 2))])
def test_knob_paths(knobs, layout, kernel, strides):
    """Packed panels, aligned Z planes, narrow tiles and channel splits all agree."""
    pads = (1, 1, 1, 1) if kernel != (1, 1) else (0,) * 4
    out, ref, _ = _run(layout, (2, 8, 13, 11), 8, kernel, strides, pads, density=0.5,
                       epilogue=("bias", "relu"), knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)


ISAS = [("x86-64-v3", "avx2", 8), ("x86-64-v4", "avx512f", 16)]


@pytest.mark.parametrize("mcpu,flag,lanes", ISAS)
def test_vector_widths(mcpu, flag, lanes):
    if flag not in FLAGS:
        pytest.skip(f"host lacks {flag}")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    assert simd_lanes(target) == lanes
    for layout, shape, o, k, pads in [("chw-spmm", (1, 16, 13, 11), 9, (1, 1), (0,) * 4),
                                      ("dense", (1, 6, 9, 17), 7, (3, 3), (1,) * 4),
                                      ("bsr2x2", (1, 4, 11, 11), 6, (3, 3), (0, 1, 1, 0))]:
        out, ref, _ = _run(layout, shape, o, k, pads=pads, density=0.4, epilogue=("gelu",),
                           target=target)
        np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("layout,x_shape,kernel,strides,pads", [
    ("chw-spmm", (1, 16, 13, 11), (1, 1), (1, 1), (0, 0, 0, 0)),  # direct: tail tiles
    ("dense", (1, 3, 30, 30), (3, 3), (2, 2), (1, 1, 1, 1)),  # a stem: Z filled from X
    ("bsr2x1", (2, 8, 9, 9), (3, 3), (1, 1), (1, 1, 1, 1))])
def test_no_stray_access(layout, x_shape, kernel, strides, pads):
    """Every buffer against an unreadable page at its start, then at its end
    (``sparsec.testing``): a read or write outside any of them faults."""
    for guard in ("start", "end"):
        out, ref, _ = _run(layout, x_shape, 12, kernel, strides, pads, density=0.5,
                           epilogue=("bias",), guard=guard)
        np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("x_shape,o,epilogue", [
    ((1, 160, 3, 3), 320, ("bias", "clip")),  # MobileNetV2-96's last blocks
    ((1, 96, 6, 6), 32, ("bias", "residual")),
    ((2, 5, 7, 7), 13, ("bias", "gelu")),  # two images, a ragged panel
    ((1, 64, 1, 1), 33, ("relu",)),  # one pixel
    ((1, 17, 7, 9), 100, ()),
    ((1, 512, 7, 7), 160, ("bias", "residual")),  # 320 KB of panels: prefetched (AVX-512)
])
def test_pixel_rows_path(x_shape, o, epilogue):
    """A dense 1x1 conv on a small image runs as ``linear_dense``'s GEMM over strided views
    of the NCHW tensors (``conv_pixel_rows``): the plan's rows pick it, at prepare time."""
    n, c, h, w = x_shape
    spec = SparseOpSpec("SparseConv", "dense", o, c, "conv_node", [], ["w"],
                        ConvAttrs((1, 1), (1, 1), (0,) * 4, (1, 1)), rows=n * h * w)
    arrays = kernel_for(spec).prepare(spec, {"w": np.ones((o, c), np.float32)}, HOST)
    assert list(arrays) == ["w_panels"]
    for guard in ("start", "end"):
        out, ref, _ = _run("dense", x_shape, o, density=1.0, epilogue=epilogue, guard=guard,
                           plan_rows=n * h * w)
        np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("mcpu,c,o,hw,prefetched", [
    ("x86-64-v4", 960, 320, 7, True),  # MobileNetV2-224's last projection: 1.2 MB, 4 row blocks
    ("x86-64-v4", 576, 160, 7, True),  # 360 KB
    ("x86-64-v4", 576, 96, 14, False),  # 14 row blocks would prefetch each panel 14 times
    ("x86-64-v4", 160, 64, 7, False),  # 40 KB: stays in cache
    ("x86-64-v3", 960, 320, 7, False),  # AVX2's 6-row tiles: 9 row blocks
])
def test_pixel_rows_prefetch_a_weight_from_memory(mcpu, c, o, hw, prefetched):
    """Built, not run: the TIR prefetches the panels only where the rule says."""
    import tvm

    from sparsec.codegen.tvm.kernels import conv_pixel_rows

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    spec = SparseOpSpec("SparseConv", "dense", o, c, "n", [], ["w"],
                        ConvAttrs((1, 1), (1, 1), (0,) * 4, (1, 1)), rows=hw * hw)
    arrays = conv_pixel_rows.prepare(spec, np.ones((o, c), np.float32), target)
    func = conv_pixel_rows.build(spec, (1, c, hw, hw), arrays, target)
    assert ("llvm.prefetch" in func.script()) is prefetched
    func = conv_pixel_rows.build(spec, (1, c, hw, hw), arrays, target, {"prefetch": 0})
    assert "llvm.prefetch" not in func.script()


def test_pixel_rows_only_for_plain_1x1_convs_on_small_images():
    from sparsec.codegen.tvm.kernels.conv_pixel_rows import MAX_PIXELS, pixel_rows

    def spec(rows, kernel=(1, 1), strides=(1, 1), pads=(0,) * 4, **kw):
        return SparseOpSpec("SparseConv", "dense", 8, 8, "n", [], ["w"],
                            ConvAttrs(kernel, strides, pads, (1, 1)), rows=rows, **kw)

    assert pixel_rows(spec(36)) and pixel_rows(spec(MAX_PIXELS))
    assert not pixel_rows(spec(MAX_PIXELS + 1))
    assert not pixel_rows(spec(0))  # rows unknown
    assert not pixel_rows(spec(36, kernel=(3, 3), pads=(1,) * 4))
    assert not pixel_rows(spec(36, strides=(2, 2)))
    assert not pixel_rows(spec(36, depthwise=ConvAttrs((3, 3), (1, 1), (1,) * 4, (1, 1))))
    # Planned for a big image, called on a small one: the conv kernel, still right.
    out, ref, _ = _run("dense", (1, 8, 5, 5), 8, density=1.0, plan_rows=MAX_PIXELS + 1)
    np.testing.assert_allclose(out, ref, **TOL)


def test_chw_spmm_rejects_non_1x1():
    for kernel, strides, pads in [((3, 3), (1, 1), (1,) * 4), ((1, 1), (2, 2), (0,) * 4),
                                  ((1, 1), (1, 1), (1, 0, 0, 0))]:
        with pytest.raises(CompileError, match="conv_node.*chw-spmm needs a 1x1"):
            _run("chw-spmm", (1, 4, 8, 8), 4, kernel, strides, pads)


def test_bad_specs_raise_compile_error():
    w = pack(np.eye(4, 8, dtype=np.float32), "csr")
    spec = SparseOpSpec("SparseConv", "csr", 4, 8, "conv_node", [], list(w.arrays),
                        ConvAttrs((1, 1), group=2))
    with pytest.raises(CompileError, match="conv_node.*group=2"):
        KERNELS[("SparseConv", "csr")].build(spec, (1, 8, 4, 4), w.arrays, HOST, {})
    spec.conv = ConvAttrs((1, 1))
    with pytest.raises(CompileError, match="conv_node.*in_features 8"):
        KERNELS[("SparseConv", "csr")].build(spec, (1, 6, 4, 4), w.arrays, HOST, {})
    spec.conv = ConvAttrs((5, 5))
    spec.in_features = 8 * 25
    with pytest.raises(CompileError, match="conv_node.*empty output"):
        KERNELS[("SparseConv", "csr")].build(spec, (1, 8, 2, 2), w.arrays, HOST, {})


def test_registry_and_primfunc_contract():
    for kind in ("dense", "csr", "bsr", "nm", "chw-spmm"):
        assert ("SparseConv", kind) in KERNELS
    rng = np.random.default_rng(1)
    packed = pack(_weight(rng, "bsr2x2", 6, 4 * 9, 0.5), "bsr2x2")
    spec = SparseOpSpec("SparseConv", "bsr2x2", 6, 36, "n", _steps(["bias", "residual"]),
                        list(packed.arrays), ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1)))
    kd = kernel_for(spec)
    arrays = kd.prepare(spec, packed.arrays, HOST)
    func = kd.build(spec, (2, 4, 9, 8), arrays, HOST, {})
    assert func.attrs["tirx.noalias"] and func.attrs["tirx.is_scheduled"]
    shapes = [tuple(int(d) for d in p.ty.shape) for p in func.params]
    assert shapes == [(2, 4, 9, 8), *[a.shape for a in arrays.values()], (6,), (2, 6, 5, 4),
                      (2, 6, 5, 4)]


def test_prepare_layouts():
    rng = np.random.default_rng(2)
    w = _weight(rng, "dense", 13, 20, 1.0)
    spec = SparseOpSpec("SparseConv", "dense", 13, 20, "n", [], ["w"], ConvAttrs((1, 1)))
    panel = KERNELS[("SparseConv", "dense")].prepare(spec, {"w": w}, HOST)["w"]
    rows = panel.shape[2]
    assert panel.shape == (-(-13 // rows), 20, rows)
    np.testing.assert_array_equal(panel.transpose(0, 2, 1).reshape(-1, 20)[:13], w)
    for layout, kind in [("nm1:4", "ell"), ("nm2:4", "dense")]:
        packed = pack(_weight(rng, layout, 6, 16, 1.0), layout)
        spec = SparseOpSpec("SparseConv", layout, 6, 16, "n", [], list(packed.arrays),
                            ConvAttrs((1, 1)))
        got = KERNELS[("SparseConv", "nm")].prepare(spec, packed.arrays, HOST)
        assert ("w" in got) == (kind == "dense")


def test_pow2_pieces():
    assert pow2_pieces(49) == [(0, 32), (32, 16), (48, 1)]
    assert pow2_pieces(64) == [(0, 64)]
    assert pow2_pieces(0) == []
    assert sum(w for _, w in pow2_pieces(99, 5)) == 99


def test_through_relax_call_tir():
    """Two chained kernels in one Relax module (no global symbols clash)."""
    rng = np.random.default_rng(3)
    w1, w2 = _weight(rng, "csr", 8, 4 * 9, 0.5), _weight(rng, "dense", 8, 8, 1.0)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            cur = xv
            layers = [("csr", w1, (3, 3), (1,) * 4), ("dense", w2, (1, 1), (0,) * 4)]
            for name, w, k, pads in layers:
                packed = pack(w, name)
                spec = SparseOpSpec("SparseConv", name, 8, w.shape[1], name, _steps(["relu"]),
                                    list(packed.arrays), ConvAttrs(k, (1, 1), pads))
                kd = kernel_for(spec)
                arrays = kd.prepare(spec, packed.arrays, HOST)
                gv = bb.add_func(kd.build(spec, (1, w.shape[1] // (k[0] * k[1]), 6, 6), arrays,
                                          HOST, {}), f"conv_{name}")
                cur = bb.emit(relax.call_tir(gv, [cur, *map(relax.const, arrays.values())],
                                             relax.TensorType((1, 8, 6, 6), "float32")))
            out = bb.emit_output(cur)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=HOST), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    conv2d = torch.nn.functional.conv2d
    ref = torch.relu(conv2d(torch.from_numpy(x), torch.from_numpy(w1.reshape(8, 4, 3, 3)),
                            padding=1))
    ref = torch.relu(conv2d(ref, torch.from_numpy(w2.reshape(8, 8, 1, 1)))).numpy()
    np.testing.assert_allclose(got, ref, **TOL)


def test_dense_stride2_conv_runs_on_aligned_rows():
    """A dense 3x3 stride-2 conv (a stem) takes the aligned Z: its rows are as wide as the
    output (32 for 32), where plain rows carry a junk column (33). A stride-1 conv whose
    aligned rows would be wider (32 for 28, plain 30) keeps plain rows. Both agree with
    torch."""
    from sparsec.codegen.tvm.kernels.conv import _geometry
    from sparsec.codegen.tvm.kernels.conv_inner import dense_inner

    vl = simd_lanes(HOST)
    rng = np.random.default_rng(0)
    for shape, strides, want in [((1, 3, 64, 64), (2, 2), True), ((1, 3, 28, 28), (1, 1), False)]:
        c, h = shape[1], shape[2]
        spec = SparseOpSpec("SparseConv", "dense", 8, c * 9, "stem", [], ["w"],
                            ConvAttrs((3, 3), strides, (1, 1, 1, 1), (1, 1)))
        arrays = kernel_for(spec).prepare(
            spec, {"w": rng.standard_normal((8, c * 9)).astype(np.float32)}, HOST)
        g = _geometry(spec, shape, dense_inner(arrays, 8, vl, {}), vl, None)
        assert g.aligned == want and (g.wq == g.ow if want else g.wq == h + 2)
        out, ref, _ = _run("dense", shape, 8, (3, 3), strides, (1, 1, 1, 1), density=1.0,
                           epilogue=("bias", "clip"))
        np.testing.assert_allclose(out, ref, **TOL)


def test_dense_block_rows():
    """A plain 1x1 conv to at most 32 channels that 8 divides and 6 does not takes blocks of 8
    on AVX-512 (6 pad 32 to 36); a 3x3 conv, a 24-channel one and AVX2 keep 6. The 8-row
    blocks agree with torch (a partial tile of pixels too)."""
    from sparsec.codegen.tvm.kernels.conv import block_rows

    def spec(o, kernel=(1, 1)):
        return SparseOpSpec("SparseConv", "dense", o, 16, "n", [], ["w"],
                            ConvAttrs(kernel, (1, 1), (0, 0, 0, 0), (1, 1)))

    v4 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4", "num-cores": 2})
    v3 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
    assert [block_rows(spec(o), o, v4) for o in (16, 32, 24, 40, 64)] == [8, 8, 6, 6, 6]
    assert block_rows(spec(32, (3, 3)), 32, v4) == 6 and block_rows(spec(32), 32, v3) == 6
    for o in (16, 32):
        out, ref, _ = _run("dense", (1, 24, 28, 28), o, density=1.0, epilogue=("bias", "clip"))
        np.testing.assert_allclose(out, ref, **TOL)
