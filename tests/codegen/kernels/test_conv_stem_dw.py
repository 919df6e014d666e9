"""A dense kxk conv and the 3x3 depthwise conv after it, row by row in cache
(codegen/tvm/kernels/conv_stem_dw.py), against torch at rtol = atol = 1e-4: a stem at
stride 2 and other kernels and strides, odd sizes, asymmetric pads, channel counts that
leave the last block part padding, several images, more cores than rows split evenly,
AVX2 and AVX-512 code. Every output is written (NaN to start) and nothing strays past
either end of a buffer (guarded tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsec.codegen.tvm.kernels import conv_stem_dw, kernel_for
from sparsec.codegen.tvm.stack_locals import compile_kernel
from sparsec.errors import CompileError
from sparsec.ops import SparseOpSpec, apply_epilogue
from sparsec.plan import ConvAttrs, EpilogueStep
from sparsec.targets.cpu import detect_host, tvm_target
from sparsec.testing import guarded_tensor

from isa_targets import ISAS, isa_target

TOL = dict(rtol=1e-4, atol=1e-4)
HOST = tvm_target(detect_host())
RELU6 = EpilogueStep("clip", 0.0, 6.0)
BIAS = EpilogueStep("bias")


def _spec(o, c, kernel, strides, pads, steps, dw_steps, dw=((3, 3), (1, 1), (1, 1, 1, 1))):
    return SparseOpSpec("SparseConv", "dense", o, c * kernel[0] * kernel[1], "stem",
                        list(steps), ["w"], ConvAttrs(kernel, strides, pads),
                        ConvAttrs(dw[0], dw[1], dw[2], (1, 1), o), list(dw_steps))


def _run(x_shape, o, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), steps=(BIAS, RELU6),
         dw_steps=(BIAS, RELU6), target=HOST, knobs=None, guard="end", project=None):
    """``project``: (out channels, epilogue steps) of a fused dense 1x1 projection."""
    rng = np.random.default_rng(4)
    n, c, h, w = x_shape
    spec = _spec(o, c, kernel, strides, pads, steps, dw_steps)
    if project:
        spec.project = SparseOpSpec("SparseConv", "dense", project[0], o, "project",
                                    list(project[1]), ["w"], ConvAttrs((1, 1)))
    kd = kernel_for(spec)
    assert kd.build is conv_stem_dw.build
    wc = rng.standard_normal((o, c, *kernel)).astype(np.float32)
    given = {"w": wc.reshape(o, -1)}
    if project:
        wp = rng.standard_normal((project[0], o)).astype(np.float32)
        given["pj_w"] = wp
    arrays = kd.prepare(spec, given, target)
    lib = compile_kernel(kd.build(spec, x_shape, arrays, target, knobs or {}), target)

    x = rng.standard_normal(x_shape).astype(np.float32)
    bias, dw_bias = (rng.standard_normal(o).astype(np.float32) for _ in range(2))
    wd = rng.standard_normal((o, 1, 3, 3)).astype(np.float32)
    pt, pl, pb, pr = pads
    xp = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
    mid = torch.nn.functional.conv2d(xp, torch.from_numpy(wc), stride=strides).numpy()
    mid = apply_epilogue(mid, spec.epilogue, bias, channel_axis=1)
    ref = torch.nn.functional.conv2d(torch.from_numpy(mid), torch.from_numpy(wd), padding=1,
                                     groups=o).numpy()
    ref = apply_epilogue(ref, spec.dw_epilogue, dw_bias, channel_axis=1)
    args = [x, *arrays.values()] + ([bias] if spec.has_bias else []) + [wd]
    args += [dw_bias] if spec.has_dw_bias else []
    if project:
        pj = spec.project
        ref = np.einsum("po,nohw->nphw", wp.astype(np.float64), ref.astype(np.float64))
        pj_bias = rng.standard_normal(project[0]).astype(np.float32)
        res = rng.standard_normal(ref.shape).astype(np.float32)
        ref = apply_epilogue(ref, pj.epilogue, pj_bias, res, channel_axis=1)
        args += ([pj_bias] if pj.has_bias else []) + ([res] if pj.has_residual else [])
    args.append(np.full(ref.shape, np.nan, np.float32))
    tensors = [guarded_tensor(a, guard) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy(), ref


@pytest.mark.parametrize("x_shape,o,kernel,strides,pads,steps,dw_steps,knobs", [
    ((1, 3, 30, 30), 32, (3, 3), (2, 2), (1, 1, 1, 1), (BIAS, RELU6), (BIAS, RELU6), {}),
    ((2, 3, 29, 31), 7, (3, 3), (2, 2), (1, 0, 2, 1), (BIAS,), (), {}),  # odd, 7 of 8 rows
    ((1, 4, 12, 40), 5, (3, 3), (1, 1), (1, 1, 1, 1), (), (BIAS, RELU6), {"threads": 5}),
    ((1, 2, 9, 9), 6, (5, 5), (2, 2), (2, 2, 2, 2), (RELU6,), (RELU6,), {"threads": 8}),
], ids=str)
def test_matches_torch(x_shape, o, kernel, strides, pads, steps, dw_steps, knobs):
    for guard in ("start", "end"):
        out, ref = _run(x_shape, o, kernel, strides, pads, steps, dw_steps, knobs=knobs,
                        guard=guard)
        np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("mcpu,flag", ISAS)
def test_vector_widths(mcpu, flag):
    target = isa_target(mcpu, flag)
    out, ref = _run((1, 3, 34, 34), 12, target=target)
    np.testing.assert_allclose(out, ref, **TOL)
    out, ref = _run((1, 3, 34, 34), 12, target=target, project=(5, (BIAS,)))
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("x_shape,o,strides,pads,project,knobs", [
    ((1, 3, 30, 30), 32, (2, 2), (1, 1, 1, 1), (16, ()), {}),  # MobileNetV2's first block
    ((2, 3, 29, 31), 7, (2, 2), (1, 0, 2, 1), (5, (BIAS, RELU6)), {}),  # 5 of 6 channels
    ((1, 4, 12, 40), 6, (1, 1), (1, 1, 1, 1), (6, (BIAS, EpilogueStep("residual"))),
     {"threads": 5}),
    ((1, 2, 9, 9), 3, (1, 1), (1, 1, 1, 1), (1, (EpilogueStep("residual"), RELU6)),
     {"threads": 8}),
], ids=str)
def test_fused_projection(x_shape, o, strides, pads, project, knobs):
    """A dense 1x1 projection computed from each depthwise row (bias, activation, residual):
    Y has its channels, and the stem's and depthwise conv's rows stay inside."""
    for guard in ("start", "end"):
        out, ref = _run(x_shape, o, (3, 3), strides, pads, knobs=knobs, guard=guard,
                        project=project)
        np.testing.assert_allclose(out, ref, **TOL)


def test_sparse_projection_is_refused():
    spec = _spec(8, 3, (3, 3), (2, 2), (1, 1, 1, 1), (), ())
    spec.project = SparseOpSpec("SparseConv", "csr", 4, 8, "project", [], ["values"],
                                ConvAttrs((1, 1)))
    with pytest.raises(CompileError, match="projection fused after a kxk conv must be dense"):
        conv_stem_dw.prepare(spec, {"w": np.ones((8, 27), np.float32),
                                    "pj_values": np.ones(4, np.float32)}, HOST)


def test_other_depthwise_convs_are_refused():
    spec = _spec(8, 3, (3, 3), (2, 2), (1, 1, 1, 1), (), (),
                 dw=((3, 3), (2, 2), (1, 1, 1, 1)))
    arrays = conv_stem_dw.prepare(spec, {"w": np.ones((8, 27), np.float32)}, HOST)
    with pytest.raises(CompileError, match="must be 3x3, stride 1, padding 1"):
        conv_stem_dw.build(spec, (1, 3, 16, 16), arrays, HOST)
