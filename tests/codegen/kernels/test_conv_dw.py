"""The fused sparse 1x1 + depthwise conv kernel (codegen/tvm/kernels/conv_dw.py) against torch:
``dw_epilogue(conv2d(epilogue(conv2d(X, We)), Wd, groups=E))`` at rtol = atol = 1e-4, over
both strides, every tile mode (whole rows per tile, several rows, row segments), odd sizes,
asymmetric pads, AVX2 and AVX-512 code, several images, and empty channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from sparsec.codegen.tvm.kernels import conv_dw, conv_dw_rows, conv_dw_schedule, kernel_for
from sparsec.codegen.tvm.stack_locals import compile_kernel
from sparsec.errors import CompileError
from sparsec.formats import pack
from sparsec.ops import SparseOpSpec, apply_epilogue
from sparsec.plan import ConvAttrs, EpilogueStep
from sparsec.targets.cpu import cpu_flags, detect_host, tvm_target
from sparsec.testing import guarded_tensor

TOL = dict(rtol=1e-4, atol=1e-4)
HOST = tvm_target(detect_host())
RELU6 = EpilogueStep("clip", 0.0, 6.0)


def _run(x_shape, e, stride=1, pads=(1, 1, 1, 1), kernel=(3, 3), layout="chw-spmm",
         density=0.3, steps=(EpilogueStep("bias"), RELU6),
         dw_steps=(EpilogueStep("bias"), RELU6), target=HOST, knobs=None, zero_rows=(),
         project=None, guard="end"):
    """``project``: (out channels, layout, density, epilogue step names) of a fused
    projection, or None."""
    rng = np.random.default_rng(1)
    n, c, h, w = x_shape
    we = (rng.standard_normal((e, c)) * (rng.random((e, c)) < density)).astype(np.float32)
    we[list(zero_rows)] = 0
    packed = pack(we, layout)
    spec = SparseOpSpec("SparseConv", layout, e, c, "expand", list(steps), list(packed.arrays),
                        ConvAttrs((1, 1)), ConvAttrs(kernel, (stride, stride), pads, (1, 1), e),
                        list(dw_steps))
    given = dict(packed.arrays)
    if project:
        o, pj_layout, pj_density, pj_steps = project
        w_pj = (rng.standard_normal((o, e)) * (rng.random((o, e)) < pj_density)).astype(
            np.float32)
        pj_packed = pack(w_pj, pj_layout)
        spec.project = SparseOpSpec("SparseConv", pj_layout, o, e, "project",
                                    [EpilogueStep(s) for s in pj_steps],
                                    list(pj_packed.arrays), ConvAttrs((1, 1)))
        given.update({f"pj_{k}": v for k, v in pj_packed.arrays.items()})
    kd = kernel_for(spec)
    arrays = kd.prepare(spec, given, target)
    func = kd.build(spec, x_shape, arrays, target, knobs or {})
    lib = compile_kernel(func, target)

    x = rng.standard_normal(x_shape).astype(np.float32) * 2
    bias, dw_bias = (rng.standard_normal(e).astype(np.float32) for _ in range(2))
    wd = rng.standard_normal((e, 1, *kernel)).astype(np.float32)
    t = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(we)[:, :, None, None])
    mid = apply_epilogue(t.numpy(), spec.epilogue, bias, channel_axis=1)
    pt, pl, pb, pr = pads
    mid = torch.nn.functional.pad(torch.from_numpy(mid), (pl, pr, pt, pb))
    ref = torch.nn.functional.conv2d(mid, torch.from_numpy(wd), stride=stride, groups=e).numpy()
    ref = apply_epilogue(ref, spec.dw_epilogue, dw_bias, channel_axis=1)
    args = [x, *arrays.values()] + ([bias] if spec.has_bias else []) + [wd]
    args += [dw_bias] if spec.has_dw_bias else []
    if project:
        ref = np.einsum("oc,nchw->nohw", w_pj.astype(np.float64), ref.astype(np.float64))
        pj_bias = rng.standard_normal(ref.shape[1]).astype(np.float32)
        pj_res = rng.standard_normal(ref.shape).astype(np.float32)
        ref = apply_epilogue(ref, spec.project.epilogue, pj_bias, pj_res, channel_axis=1)
        args += [pj_bias] if spec.project.has_bias else []
        args += [pj_res] if spec.project.has_residual else []
    args.append(np.full(ref.shape, np.nan, np.float32))  # every output must be written
    tensors = [guarded_tensor(a, guard) for a in args]  # a stray access faults
    lib["main"](*tensors)
    return tensors[-1].numpy(), ref


CASES = [  # x shape, E, stride, pads, kernel, knobs
    ((1, 16, 112, 112), 24, 2, (1, 1, 1, 1), (3, 3), {}),  # row segments (W > tile)
    ((1, 24, 56, 56), 32, 1, (1, 1, 1, 1), (3, 3), {}),  # one row per tile
    ((1, 8, 14, 14), 40, 1, (1, 1, 1, 1), (3, 3), {}),  # several rows per tile
    ((1, 8, 14, 14), 40, 2, (1, 1, 1, 1), (3, 3), {}),
    ((2, 12, 7, 7), 20, 1, (1, 1, 1, 1), (3, 3), {}),  # two images, odd width
    ((1, 6, 9, 13), 9, 1, (0, 2, 1, 0), (3, 3), {}),  # asymmetric pads
    ((1, 6, 10, 12), 9, 2, (2, 2, 2, 2), (5, 5), {}),  # 5x5, stride 2
    ((1, 6, 11, 10), 9, 2, (0, 0, 1, 1), (3, 3), {}),  # odd height, stride 2
    ((1, 8, 20, 30), 16, 2, (1, 1, 1, 1), (3, 3), {"tile_lanes": 12}),  # segments + tails
    ((1, 8, 20, 30), 16, 1, (1, 1, 1, 1), (3, 3), {"tile_lanes": 7, "threads": 3}),
    ((1, 4, 1, 2), 3, 2, (1, 1, 1, 1), (3, 3), {}),  # tiny
    # Z rows of whole vectors (``z_rows``), as AVX-512 picks them, on any host
    ((1, 8, 28, 28), 24, 1, (1, 1, 1, 1), (3, 3), {"z_pitch": True, "dw_lanes": 128}),
    ((1, 8, 28, 28), 24, 2, (1, 1, 1, 1), (3, 3), {"z_pitch": True}),
    ((1, 6, 10, 12), 9, 2, (2, 2, 2, 2), (5, 5), {"z_pitch": True, "dw_lanes": 40}),
    ((1, 8, 20, 30), 16, 1, (1, 1, 1, 1), (3, 3), {"z_pitch": True, "dw_lanes": 12}),
    ((1, 24, 56, 56), 32, 1, (1, 1, 1, 1), (3, 3), {"z_pitch": False}),
]
DENSE_CASES = [  # x shape, E, stride, knobs: rows of X padded to whole vectors or not
    ((1, 8, 14, 14), 20, 1, {}),  # padded (a row of 14 would take 18 accumulators)
    ((2, 12, 7, 7), 20, 1, {}),  # padded, two images: the copy is per image
    ((1, 8, 14, 14), 20, 2, {}),  # padded, stride 2
    ((1, 8, 14, 14), 20, 1, {"pad_rows": False}),
    ((1, 8, 28, 28), 12, 1, {"pad_rows": True}),  # padded row segments
    ((1, 8, 14, 14), 20, 1, {"expand_lanes": 8}),  # row segments, not padded
    ((1, 8, 7, 7), 20, 1, {"expand_lanes": 32}),
    ((1, 8, 20, 30), 12, 2, {"expand_lanes": 8}),
    ((1, 16, 6, 6), 30, 1, {}),  # padded: 8 + 4 lanes would spill (``pad_rows_default``)
    ((2, 16, 12, 12), 30, 2, {}),  # padded, stride 2, two images
    ((1, 16, 3, 3), 30, 1, {}),  # not padded: 8 columns for 3 is too much waste
    ((1, 8, 48, 48), 12, 2, {}),  # stride 2, deinterleaved (DEINTERLEAVE_MIN_PIXELS)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-E{c[1]}-s{c[2]}-{c[3]}-{c[4]}")
def test_matches_torch(case):
    shape, e, stride, pads, kernel, knobs = case
    out, ref = _run(shape, e, stride, pads, kernel, knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: f"{c[0]}-E{c[1]}-s{c[2]}-{c[3]}")
def test_dense_expand_tiles(case):
    shape, e, stride, knobs = case
    out, ref = _run(shape, e, stride, layout="dense", density=1.0, knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)


def _geometry(h, w, stride=1, e=96):
    dw = ConvAttrs((3, 3), (stride, stride), (1, 1, 1, 1), (1, 1), e)
    return conv_dw.dw_geometry(dw, (1, 16, h, w), e, "t")


@pytest.mark.parametrize("h, w, rows, before, padded", [
    (6, 6, 6, False, True),  # dense: a tile of two rows is 8 + 4 lanes
    (12, 12, 6, False, True),
    (14, 14, 6, False, True),  # 18 accumulators: spills
    (3, 3, 6, False, False),  # 8 columns for 3: 2.7x the work
    (28, 28, 6, False, False),  # segments of a row: only the last ragged
    (16, 16, 6, False, False),  # whole vectors already
    (6, 6, 1, False, False),  # csr: one channel's accumulators fit
    (6, 6, 6, True, False),  # depthwise first: nothing to expand
])
def test_pad_rows_default(h, w, rows, before, padded):
    assert conv_dw_rows.pad_rows_default(_geometry(h, w), rows, 16, 8, before) is padded


def test_padded_rows_sparse():
    """The csr expand reads the padded copy of X as well (knob ``pad_rows``)."""
    out, ref = _run((2, 8, 14, 14), 20, 1, layout="csr", knobs={"pad_rows": True})
    np.testing.assert_allclose(out, ref, **TOL)


def test_layouts_epilogues_and_empty_channels():
    for layout, steps, dw_steps in [
            ("csr", [EpilogueStep("relu")], [EpilogueStep("bias")]),
            ("chw-spmm", [], []),
            ("csr", [EpilogueStep("bias")], [RELU6, EpilogueStep("relu")]),
            ("dense", [EpilogueStep("bias")], [])]:
        out, ref = _run((1, 8, 9, 10), 12, 2, layout=layout, steps=steps, dw_steps=dw_steps,
                        zero_rows=(0, 5))
        np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("case", [((1, 16, 112, 112), 24, 2, {}),  # 6-channel blocks
                                  ((2, 12, 14, 14), 20, 1, {}),  # a partial last block
                                  ((1, 5, 9, 12), 7, 2, {"tile_lanes": 8, "threads": 3}),
                                  ((1, 3, 7, 7), 4, 1, {})],  # fewer channels than a block
                         ids=str)
def test_dense_expand_blocks(case):
    shape, e, stride, knobs = case
    out, ref = _run(shape, e, stride, layout="dense", density=1.0, knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)


def test_half_block_lanes():
    """A dense expand block runs in two passes of 3 channels over whole vectors of whole
    rows where its rows are not whole vectors (AVX-512 only; not over rows deinterleaved
    for stride 2)."""
    def lanes(hw, stride=1, vl=16, rows=6):
        g = conv_dw.dw_geometry(ConvAttrs((3, 3), (stride, stride), (1, 1, 1, 1), (1, 1), 8),
                                (1, 8, hw, hw), 8, "e")
        return conv_dw_rows.half_block_lanes(g, rows, vl)

    assert [lanes(hw) for hw in (14, 28, 56, 24, 12)] == [112, 112, 112, 96, 96]
    assert lanes(28, stride=2) == 112 and lanes(56, stride=2) == 0  # deinterleaved rows
    assert lanes(112) == lanes(48) == lanes(7) == 0  # whole vectors already, or never
    assert lanes(14, vl=8) == 0 and lanes(14, rows=3) == 0


@pytest.mark.parametrize("stride", [1, 2])
def test_expand_rows_knob(stride):
    """Half blocks (``expand_rows`` 3, the default here on AVX-512) and whole ones give the
    same numbers; a count that does not divide the block is refused."""
    outs = [_run((1, 8, 28, 28), 20, stride, layout="dense", density=1.0,
                 knobs={"expand_rows": r}) for r in (6, 3)]
    for out, ref in outs:
        np.testing.assert_allclose(out, ref, **TOL)
    with pytest.raises(CompileError, match="expand_rows 4 does not divide"):
        _run((1, 8, 28, 28), 20, stride, layout="dense", density=1.0,
             knobs={"expand_rows": 4})


@pytest.mark.parametrize("mcpu,flag", [("x86-64-v3", "avx2"), ("x86-64-v4", "avx512f")])
def test_vector_widths(mcpu, flag):
    if flag not in cpu_flags():
        pytest.skip(f"host lacks {flag}")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    for stride, layout in ((1, "chw-spmm"), (2, "chw-spmm"), (2, "dense")):
        out, ref = _run((1, 8, 28, 28), 26, stride, layout=layout, target=target)
        np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("case", [
    ((1, 8, 28, 28), 24, 1, "chw-spmm", (8, "csr", 0.3, ("bias", "residual")), {}),
    ((2, 8, 14, 14), 26, 2, "dense", (16, "chw-spmm", 0.2, ("bias",)), {}),
    ((1, 4, 9, 10), 12, 2, "csr", (5, "csr", 1.0, ("residual", "relu")), {"threads": 3}),
    ((1, 4, 7, 7), 12, 1, "csr", (6, "csr", 0.0, ()), {}),  # an empty projection
    ((1, 8, 14, 14), 150, 1, "csr", (16, "csr", 0.2, ("bias",)), {}),  # groups 64, 64, 22
    ((1, 8, 14, 14), 140, 2, "dense", (12, "csr", 0.2, ()), {"threads": 3}),  # 66, 66, 8
], ids=str)
def test_fused_projection(case):
    """The block's 1x1 projection accumulated per task and summed across tasks, a group
    of channels at a time."""
    shape, e, stride, layout, project, knobs = case
    out, ref = _run(shape, e, stride, layout=layout, project=project, knobs=knobs,
                    zero_rows=(1,))
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("case", [
    ((1, 6, 11, 10), 9, (0, 0, 1, 1), (3, 3), "chw-spmm", {}),  # odd height, no left pad
    ((1, 6, 10, 12), 9, (2, 2, 2, 2), (5, 5), "csr", {}),  # 5x5: an even left pad
    ((1, 8, 20, 30), 16, (1, 1, 1, 1), (3, 3), "csr", {"tile_lanes": 12}),  # segments
    ((2, 8, 14, 14), 20, (1, 1, 1, 1), (3, 3), "dense", {"pad_rows": True}),  # padded too
    ((1, 4, 1, 2), 3, (1, 1, 1, 1), (3, 3), "csr", {}),  # one pixel per half
], ids=str)
def test_deinterleaved_rows(case):
    """Stride 2 with X's rows copied even columns first, then odd ones (knob
    ``deinterleave``): each half goes to its column phase's plane as one run."""
    shape, e, pads, kernel, layout, knobs = case
    out, ref = _run(shape, e, 2, pads, kernel, layout=layout, density=0.5,
                    knobs={"deinterleave": True, **knobs})
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("case", [
    ((1, 8, 28, 28), 24, 1, "chw-spmm", {"band_rows": 4}),  # 7 bands over 2 tasks
    ((2, 6, 20, 24), 12, 2, "csr", {"band_rows": 2, "threads": 3}),  # 5 bands, 2 images
    ((1, 8, 16, 16), 20, 1, "dense", {"band_rows": 8}),  # blocks of 6 channels
    ((1, 8, 16, 16), 20, 2, "dense", {"band_rows": 1}),
    ((1, 16, 112, 112), 24, 2, "chw-spmm", {}),  # bands by default, rows deinterleaved
    ((1, 8, 12, 12), 100, 1, "csr", {"band_rows": 3}),  # two projection groups per band
    ((1, 8, 28, 28), 24, 1, "dense", {"band_rows": 7, "z_pitch": True}),
    ((1, 8, 28, 28), 24, 2, "csr", {"band_rows": 2, "z_pitch": True}),
], ids=str)
def test_bands(case):
    """Tasks over bands of output rows: each band computes its expand rows and halo into
    Z and adds every channel into its own projection sums."""
    shape, e, stride, layout, knobs = case
    out, ref = _run(shape, e, stride, layout=layout, density=0.5 if layout != "dense" else 1,
                    knobs=knobs, project=(8, "csr", 0.3, ("bias", "residual")), zero_rows=(1,))
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("case", [
    ((1, 16, 112, 112), 12, 2, "dense", {}),  # X outgrows half of L2: bands by default
    ((1, 8, 28, 28), 20, 1, "dense", {"band_rows": 4}),
    ((2, 6, 20, 24), 12, 2, "csr", {"band_rows": 2, "threads": 3}),
    ((1, 8, 28, 28), 24, 1, "chw-spmm", {"band_rows": 7, "z_pitch": True}),
], ids=str)
def test_bands_without_projection(case):
    """Bands store the depthwise conv's rows of each channel straight into Y."""
    shape, e, stride, layout, knobs = case
    out, ref = _run(shape, e, stride, layout=layout, density=0.5 if layout != "dense" else 1,
                    knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)


def test_band_choice():
    """Bands only where a task's sums of the whole projection outgrow L2; of two rows or
    more, dividing OH, every core the same number of bands where one divides."""
    g = conv_dw.dw_geometry(ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32),
                            (1, 32, 112, 112), 32, "e")
    assert conv_dw_schedule.band_rows(g, 16, 2, {}) == 14  # 8 bands of 16 x 14 x 112 floats
    assert conv_dw_schedule.band_rows(g, 4, 2, {}) == 0  # 4 x 112 x 112 floats fit
    assert conv_dw_schedule.band_rows(g, 16, 2, {"band_rows": 7}) == 7
    # no projection: bands where X (here 32 x 112 x 112 floats) outgrows half of L2, of at
    # most BAND_PART_BYTES of X's rows (9 rows of 32 x 112 for 7 output rows)
    assert conv_dw_schedule.band_rows(g, None, 2, {}) == 7
    s2 = conv_dw.dw_geometry(ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 96),
                             (1, 16, 112, 112), 96, "e")
    assert conv_dw_schedule.band_rows(s2, None, 2, {}) == 7  # 15 rows of 16 x 112: 8 bands
    small = conv_dw.dw_geometry(ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 144),
                                (1, 24, 56, 56), 144, "e")
    assert conv_dw_schedule.band_rows(small, None, 2, {}) == 0  # 0.3 MB of X: channel tasks
    with pytest.raises(CompileError, match="band_rows 5 does not divide 112"):
        conv_dw_schedule.band_rows(g, 16, 2, {"band_rows": 5})


def _run_before(x_shape, o, stride=1, pads=(1, 1, 1, 1), kernel=(3, 3), layout="chw-spmm",
                density=0.3, steps=(EpilogueStep("bias"), EpilogueStep("residual")),
                dw_steps=(EpilogueStep("bias"), RELU6), knobs=None, guard="end"):
    """A depthwise conv before the node's own 1x1 conv (``dw_before``): the projection."""
    rng = np.random.default_rng(2)
    n, c, h, w = x_shape
    wp = (rng.standard_normal((o, c)) * (rng.random((o, c)) < density)).astype(np.float32)
    packed = pack(wp, layout)
    spec = SparseOpSpec("SparseConv", layout, o, c, "project", list(steps), list(packed.arrays),
                        ConvAttrs((1, 1)), ConvAttrs(kernel, (stride, stride), pads, (1, 1), c),
                        list(dw_steps), dw_before=True)
    kd = kernel_for(spec)
    arrays = kd.prepare(spec, dict(packed.arrays), HOST)
    func = kd.build(spec, x_shape, arrays, HOST, knobs or {})
    lib = compile_kernel(func, HOST)
    x = rng.standard_normal(x_shape).astype(np.float32)
    wd = rng.standard_normal((c, 1, *kernel)).astype(np.float32)
    dw_bias, bias = rng.standard_normal(c).astype(np.float32), rng.standard_normal(o).astype(
        np.float32)
    pt, pl, pb, pr = pads
    xp = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
    mid = torch.nn.functional.conv2d(xp, torch.from_numpy(wd), stride=stride, groups=c).numpy()
    mid = apply_epilogue(mid, spec.dw_epilogue, dw_bias, channel_axis=1)
    ref = np.einsum("oc,nchw->nohw", wp.astype(np.float64), mid.astype(np.float64))
    res = rng.standard_normal(ref.shape).astype(np.float32)
    ref = apply_epilogue(ref, spec.epilogue, bias, res, channel_axis=1)
    args = [x, *arrays.values()] + ([bias] if spec.has_bias else [])
    args += ([res] if spec.has_residual else []) + [wd] + ([dw_bias] if spec.has_dw_bias else [])
    args.append(np.full(ref.shape, np.nan, np.float32))
    tensors = [guarded_tensor(a, guard) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy(), ref


@pytest.mark.parametrize("case", [
    ((1, 32, 112, 112), 16, 1, "chw-spmm", {}),  # MobileNetV2's first block: bands
    ((1, 32, 48, 48), 16, 1, "csr", {}),  # channel tasks
    ((2, 6, 20, 24), 5, 2, "csr", {"band_rows": 2, "threads": 3}),
    ((1, 6, 20, 24), 5, 2, "chw-spmm", {"band_rows": 0, "deinterleave": True}),
    ((1, 6, 9, 14), 7, 1, "csr", {"pad_rows": True}),
    ((1, 6, 28, 28), 7, 1, "csr", {"z_pitch": True, "dw_lanes": 128}),
], ids=str)
def test_depthwise_before(case):
    """No expand conv: Z takes X's channels as they are, and the 1x1 conv is the node's."""
    shape, o, stride, layout, knobs = case
    out, ref = _run_before(shape, o, stride, layout=layout, knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)
    out, ref = _run_before(shape, o, stride, layout=layout, knobs=knobs, steps=(),
                           dw_steps=(), density=0.0)  # nothing to add, nothing fused
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("h, stride, vl, pitch, lanes", [
    (56, 1, 16, 64, 128),  # 58 columns as 64: 10% more; twice the lanes at stride 1
    (28, 1, 16, 32, 128),
    (28, 2, 16, 16, 64),  # planes of 15 columns as 16; stride 2 keeps the lanes
    (7, 1, 16, 9, 64),  # 9 as 16: too much waste
    (14, 1, 16, 16, 64),  # whole vectors already: tiles as before
    (28, 1, 8, 30, 32),  # AVX2 keeps its rows
])
def test_z_rows(h, stride, vl, pitch, lanes):
    g = _geometry(h, h, stride)
    assert conv_dw_rows.z_rows(g, vl, 4 * vl, {}) == (pitch, lanes)
    assert conv_dw_rows.z_rows(g, vl, 4 * vl, {"z_pitch": False, "dw_lanes": 24}) == (
        g.wq, 24)


@pytest.mark.parametrize("h,knobs,prefetched", [
    (7, {}, True), (6, {}, True), (3, {}, False), (3, {"prefetch_next": True}, True),
    (14, {"prefetch_next": False}, False)])
def test_next_block_weight_prefetched(h, knobs, prefetched):
    """A dense expand prefetches the next block's weight on images of 36 pixels and more;
    the prefetch never reads past the weight (the last block's clamps to its end)."""
    spec = SparseOpSpec("SparseConv", "dense", 30, 16, "expand", [RELU6], ["w"],
                        ConvAttrs((1, 1)), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 30),
                        [RELU6])
    arrays = kernel_for(spec).prepare(spec, {"w": np.ones((30, 16), np.float32)}, HOST)
    func = conv_dw.build(spec, (1, 16, h, h), arrays, HOST, knobs)
    assert ("llvm.prefetch" in func.script()) is prefetched
    out, ref = _run((1, 16, h, h), 30, 1, layout="dense", density=1.0, knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("guard", ["start", "end"])
def test_no_stray_access(guard):
    """Every buffer against an unreadable page (``sparsec.testing``): the deinterleaving
    copy once read one float past X's last row."""
    for run in (lambda: _run((1, 8, 20, 24), 12, 2, project=(6, "csr", 0.3, ("bias",)),
                             knobs={"deinterleave": True, "band_rows": 2}, guard=guard),
                lambda: _run((2, 8, 14, 14), 20, 1, layout="dense", density=1.0,
                             knobs={"pad_rows": True}, guard=guard),
                lambda: _run((1, 8, 28, 30), 12, 1, layout="dense", density=1.0,
                             knobs={"z_pitch": True, "dw_lanes": 128}, guard=guard),
                lambda: _run_before((1, 6, 20, 24), 5, 2, knobs={"deinterleave": True},
                                    guard=guard)):
        out, ref = run()
        np.testing.assert_allclose(out, ref, **TOL)


def test_bad_specs_raise_compile_error():
    with pytest.raises(CompileError, match="expand.*stride 1 or 2"):
        _run((1, 4, 8, 8), 4, stride=3)
    with pytest.raises(CompileError, match="expand.*even width"):
        _run((1, 4, 8, 9), 4, stride=2)
    with pytest.raises(CompileError, match="expand.*empty output"):
        _run((1, 4, 1, 1), 4, pads=(0, 0, 0, 0))
