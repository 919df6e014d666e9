"""The fused classifier head (codegen/tvm/kernels/conv_head.py) against numpy:
``ep_ln(mean_hw(ep(conv1x1(X, W))) . W_ln^T)`` at rtol = atol = 1e-4, over image sizes whose
pixels are whole, partial and single micro-tiles, channel counts that leave the last weight
panel part padding, linear widths that are not whole chunks, several images, a residual
in the conv's epilogue, thread counts that split the panels unevenly, and AVX2 and
AVX-512 code. Every output is written (the buffer starts as NaN) and no access strays
(guarded tensors)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.codegen.tvm.kernels import conv_head, kernel_for
from sparsec.codegen.tvm.stack_locals import compile_kernel
from sparsec.formats import pack
from sparsec.ops import SparseOpSpec, apply_epilogue
from sparsec.plan import ConvAttrs, EpilogueStep
from sparsec.targets.cpu import detect_host, tvm_target
from sparsec.testing import guarded_tensor

from isa_targets import ISAS, isa_target

TOL = dict(rtol=1e-4, atol=1e-4)
HOST = tvm_target(detect_host())
RELU6 = EpilogueStep("clip", 0.0, 6.0)


def _run(x_shape, o, classes, steps=("bias", "clip"), ln_steps=("bias",), target=HOST,
         knobs=None):
    rng = np.random.default_rng(5)
    n, c, h, w = x_shape
    conv_steps = [RELU6 if s == "clip" else EpilogueStep(s) for s in steps]
    wc = rng.standard_normal((o, c)).astype(np.float32)
    wl = rng.standard_normal((classes, o)).astype(np.float32)
    spec = SparseOpSpec("SparseConv", "dense", o, c, "head", conv_steps, ["w"],
                        ConvAttrs((1, 1)), rows=n * h * w)
    spec.head = SparseOpSpec("SparseLinear", "dense", classes, o, "fc",
                             [EpilogueStep(s) for s in ln_steps], ["w"])
    kd = kernel_for(spec)
    assert kd.build is conv_head.build
    arrays = kd.prepare(spec, {"w": pack(wc, "dense").arrays["w"], "ln_w": wl}, target)
    lib = compile_kernel(kd.build(spec, x_shape, arrays, target, knobs or {}), target)

    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    res = rng.standard_normal((n, o, h, w)).astype(np.float32)
    ln_bias = rng.standard_normal(classes).astype(np.float32)
    y = np.einsum("oc,nchw->nohw", wc.astype(np.float64), x.astype(np.float64))
    y = apply_epilogue(y, spec.epilogue, bias, res, channel_axis=1)
    ref = y.mean(axis=(2, 3)) @ wl.T.astype(np.float64)
    ref = apply_epilogue(ref, spec.head.epilogue, ln_bias, channel_axis=-1)
    args = [x, *arrays.values()]
    args += [bias] if spec.has_bias else []
    args += [res] if spec.has_residual else []
    args += [ln_bias] if spec.head.has_bias else []
    args.append(np.full(ref.shape, np.nan, np.float32))
    tensors = [guarded_tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy(), ref


@pytest.mark.parametrize("x_shape,o,classes,steps,ln_steps,knobs", [
    ((1, 32, 7, 7), 128, 100, ("bias", "clip"), ("bias",), {}),  # 49 pixels: 3 x 14 + 7
    ((1, 24, 3, 3), 40, 10, ("bias", "clip"), ("bias",), {}),  # one panel part padding
    ((2, 16, 4, 5), 72, 130, ("bias", "residual", "relu"), ("bias", "relu"), {}),
    ((1, 16, 1, 1), 96, 33, (), (), {"threads": 3}),  # one pixel, 3 tasks over 3 panels
    ((3, 20, 6, 6), 200, 257, ("bias", "clip"), ("bias",), {"threads": 3, "mr": 5}),
], ids=str)
def test_matches_numpy(x_shape, o, classes, steps, ln_steps, knobs):
    out, ref = _run(x_shape, o, classes, steps, ln_steps, knobs=knobs)
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize("mcpu,flag", ISAS)
def test_vector_widths(mcpu, flag):
    target = isa_target(mcpu, flag)
    out, ref = _run((1, 32, 7, 7), 72, 100, target=target)
    np.testing.assert_allclose(out, ref, **TOL)


def test_weight_layout():
    """ln_w [panels, chunks, NB, OC] holds W_ln^T cut by the conv's panels: zero past the
    linear's outputs and past the conv's channels."""
    rng = np.random.default_rng(2)
    wl = rng.standard_normal((10, 40)).astype(np.float32)
    spec = SparseOpSpec("SparseConv", "dense", 40, 8, "head", [], ["w"], ConvAttrs((1, 1)),
                        rows=9)
    spec.head = SparseOpSpec("SparseLinear", "dense", 10, 40, "fc", [], ["w"])
    got = conv_head.prepare(spec, {"w": np.ones((40, 8), np.float32), "ln_w": wl}, HOST)
    panels, k, nb = got["w_panels"].shape
    ln = got["ln_w"]
    assert ln.shape[0] == panels and ln.shape[2] == nb and ln.shape[3] % 8 == 0
    flat = ln.transpose(0, 2, 1, 3).reshape(panels * nb, -1)  # [conv channel, linear out]
    np.testing.assert_array_equal(flat[:40, :10], wl.T)
    assert not flat[40:].any() and not flat[:, 10:].any()
