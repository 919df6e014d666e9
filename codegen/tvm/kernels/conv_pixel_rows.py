"""A dense 1x1 conv on a small image as a GEMM with the pixels as rows, vectorized over the
output channels.

``conv`` vectorizes over pixels: ``Y[o, p]`` for a run of an image's H*W pixels per vector.
An image of 3x3 or 6x6 pixels fills its vectors badly (9 pixels on AVX-512 are a vector
of 8 and a scalar, 36 are 32 + 4), and the register tile it can afford is 6 channels by
one short run. Here the same conv is ``Y^T[p, o] = sum_c X^T[p, c] * W[o, c]``, exactly
``linear_dense``'s GEMM with rows = pixels: its micro-kernel broadcasts ``X[c, p]`` (a run of
pixels of channel c, contiguous in NCHW) and multiplies whole vectors of output channels
of the packed weight panels, up to 14 pixels x 2 vectors of accumulators on AVX-512. X, Y
and the residual are the same memory as the NCHW tensors, seen through strided buffers
(``[P, C]`` with strides ``(1, P)``), so nothing is copied; the stores of a tile go to
Y's channel planes (a strided vector store per pixel, once per tile).

``pixel_rows`` decides where this applies: a dense 1x1 conv, stride 1, no padding, group 1,
no fused depthwise conv, on images of at most ``MAX_PIXELS`` pixels. Both ``prepare`` (which
packs the weight as ``linear_dense`` panels) and ``build`` take the same decision; ``build``
follows the arrays it is given.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from sparsec.codegen.tvm.kernels import linear_dense
from sparsec.codegen.tvm.kernels.conv_geometry import F32
from sparsec.codegen.tvm.kernels.linear_common import (
    LinearFunc,
    thread_count,
    vector_lanes,
    vector_registers,
)
from sparsec.errors import CompileError
from sparsec.ops import SparseOpSpec

# Pixels of one image up to which the pixel-rows GEMM runs instead of ``conv``'s
# pixel-vectorized one. Measured on AVX-512 (AMD EPYC Zen 4, 2 threads), MobileNetV2 at 0%,
# each block compiled both ways and timed against onnxruntime in one process: the blocks
# whose projection runs alone gained 1.12-1.45x at 6x6 and 3x3 pixels (the head conv
# 320->1280 at 3x3 0.059 -> 0.043 ms), 1.07-1.12x at 7x7 and 1.00-1.12x at 12x12 and
# 14x14; at 24x24-56x56 (up to 4096) within noise, 0.9-1.05x. Whole models: MobileNetV2-96
# 0.75x -> 0.89x onnxruntime, MobileNetV2-224 within noise (0.89-0.91x). AVX2 code on the
# same machine (SPARSEC_CPU_MCPU=znver3): MobileNetV2-96 1.09x, -224 1.03x faster.
MAX_PIXELS = 256
# A weight of this many bytes or more comes from L3 or memory in a model (the activations
# and the other layers' weights share L2): its panels are prefetched ``linear_dense.PREFETCH``
# k steps ahead, where the GEMM reads each panel at most ``PREFETCH_MAX_ROW_BLOCKS`` times
# (every row block prefetches it again). MobileNetV2-224 at 0% on AVX-512 (Zen 4, 2 threads),
# per kernel in the model, A/B in one process, three runs (8, 16 and 32 k steps ahead): the
# 7x7 projections (4 row blocks; weights 0.35-1.2 MB) 1.05-1.12x, the 14x14 ones (14 row
# blocks; 0.1-0.2 MB) 0.67-0.96x.
PREFETCH_MIN_BYTES = 256 << 10
PREFETCH_MAX_ROW_BLOCKS = 4


def pixel_rows(spec: SparseOpSpec) -> bool:
    """Does this SparseConv run as the pixel-rows GEMM? (By the plan's rows, N*OH*OW.)"""
    c = spec.conv
    if c is None or spec.depthwise is not None or spec.project is not None:
        return False
    return c.pointwise and tuple(c.dilations) == (1, 1) and 0 < spec.rows <= MAX_PIXELS


def prepare(spec: SparseOpSpec, w: np.ndarray, target) -> dict[str, np.ndarray]:
    """The dense weight ``w [O, C]`` as ``linear_dense`` panels (``w_panels``)."""
    return linear_dense.prepare(spec, {"w": w}, target)


def build(spec: SparseOpSpec, in_shape, arrays: dict[str, np.ndarray], target,
          knobs=None) -> tirx.PrimFunc:
    """PrimFunc ``(x, w_panels, [bias], [residual], y)`` over NCHW tensors: per image, the
    GEMM ``Y^T = X^T W^T`` of ``linear_dense`` on strided views."""
    knobs = dict(knobs or {})
    n, c, h, w = (int(d) for d in in_shape)
    o, p = spec.out_features, h * w
    if c != spec.in_features:
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: input has {c} channels, "
                           f"the weight in_features {spec.in_features}")
    panels = arrays["w_panels"]
    lanes, registers = vector_lanes(target, knobs), vector_registers(target)
    mr = linear_dense.tile_rows(p, int(panels.shape[2]), lanes, registers, knobs.get("mr"))
    if (panels.nbytes >= PREFETCH_MIN_BYTES and -(-p // mr) <= PREFETCH_MAX_ROW_BLOCKS
            and "prefetch" not in knobs):
        knobs["prefetch"] = linear_dense.PREFETCH
    shape = (n, o, h, w)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            x = T.arg("x", T.buffer((n, c, h, w), F32))
            bufs = {name: T.arg(name, T.buffer(a.shape, str(a.dtype)))
                    for name, a in arrays.items()}
            bias = T.arg("bias", T.buffer((o,), F32)) if spec.has_bias else None
            res = T.arg("residual", T.buffer(shape, F32)) if spec.has_residual else None
            y = T.arg("y", T.buffer(shape, F32))

            def view(buf, cols, image):
                """Image ``image`` of an NCHW buffer as [P, cols], strides (1, P)."""
                return T.decl_buffer((p, cols), F32, data=buf.data, strides=(1, p),
                                     elem_offset=image * (cols * p))

            with T.serial(n) as i:
                f = LinearFunc(spec, p, c, o)
                f.X, f.Y = view(x, c, i), view(y, o, i)
                f.arrays, f.bias = bufs, bias
                f.residual = None if res is None else view(res, o, i)
                linear_dense._body(f, panels.shape, lanes, registers,
                                   thread_count(target, knobs), knobs)
    return ib.get()
