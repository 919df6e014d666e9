"""A dense kxk conv and the 3x3 depthwise conv after it, row by row in cache: MobileNetV2's
stem and its first block's depthwise conv.

``D[n, c] = ep_d(dwconv3x3(ep(conv(X, W))[n, c], Wd[c]))`` for a SparseConv with a fused
depthwise conv (``spec.depthwise``) whose own conv is not 1x1 (``passes/fuse_depthwise.py``).
Unfused, the stem writes ``O x OH x OW`` floats (MobileNetV2-224: 32 x 112 x 112, 1.6 MB)
that the depthwise conv reads back, both memory-bound on a loaded host. Here each core
takes a band of output rows and walks it top to bottom with a ring of three stem rows:

    Z = X padded and split into stride phases (``conv_geometry``, once per image)
    for task in parallel(bands of OH rows):
      for u in the band's rows and one above and below:
        S[u % 3] = ep(conv row u)                      # all O channels; zero outside X
        if u > first: D[row u - 1] = ep_d(taps over S)  # the depthwise row above

The conv row is register-blocked: ``CB`` channels by a segment of the row (up to ``SEG``
vectors) accumulate over the kh*kw*C taps, each a contiguous run of Z. The ring's rows are
zero-bordered left and right, so the depthwise taps are contiguous runs too. Depthwise:
3x3, stride 1, padding 1 (the block's), checked here and by the pass.

With a fused dense 1x1 projection (``spec.project``, MobileNetV2's first block at 0-50%:
32 -> 16 channels at 112x112) the depthwise row goes into a row buffer of the task's own
instead of Y, and the projection's row is computed from it right away, register-blocked
as the conv row (``CB`` output channels by a segment), through its epilogue into Y:

        D[all channels] = ep_d(taps over S)             # a row buffer, in L1
        Y[n, :, row u - 1] = ep_p(Wp @ D)

so neither the stem's output nor the depthwise conv's (32 x 112 x 112 floats each) is
written out.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.codegen.tvm.kernels import epilogue as epi
from sparsec.codegen.tvm.kernels.conv import _cores, dense_blocks, simd_lanes
from sparsec.codegen.tvm.kernels.conv_dw_schedule import zero
from sparsec.codegen.tvm.kernels.conv_geometry import (
    F32,
    conv_geometry,
    emit_z_fill,
    vloop,
    z_slack,
)
from sparsec.codegen.tvm.kernels.linear_common import ZERO, loop, vector_registers
from sparsec.errors import CompileError
from sparsec.layouts import parse_layout
from sparsec.ops import SparseOpSpec

SEG = 7  # vectors of a conv row per register tile (a 112-pixel row on AVX-512)


def _blocking(registers: int) -> tuple[int, int]:
    """(channels per block, vectors per row segment): 2 x 7 on AVX-512, 2 x 4 on AVX2.
    Measured on Zen 4, the stem rows alone (MobileNetV2-224, with the Z fill) against
    ``conv``'s stem kernel at 142-150 us: 4 x 7 (28 accumulators, spilled) 223 us, 3 x 7
    156-176 us, 2 x 7 146-153 us."""
    return 2, min(SEG, max(1, registers // 4))


def _blocks(w: np.ndarray, target) -> np.ndarray:
    """[O, K] -> [blocks, K, CB] (``conv.dense_blocks``)."""
    return dense_blocks(w, min(len(w), _blocking(vector_registers(target))[0]))


def _block_rows(b, cb: int, total: int, put) -> None:
    """``put(channel, r)`` for the ``cb`` channels of block ``b``, the last block's padding
    channels (``total`` onwards) skipped."""
    for r in range(cb):
        ch = b * cb + r
        if total % cb:
            with T.If(ch < total):
                with T.Then():
                    put(ch, r)
        else:
            put(ch, r)


def prepare(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target):
    """w [O, K] -> [blocks, K, CB]; a fused dense projection's pj_w [P, O] -> the same
    blocking of its P channels."""
    out = {"w": _blocks(arrays["w"], target)}
    if spec.project is not None:
        if parse_layout(spec.project.layout).kind != "dense" or "pj_w" not in arrays:
            raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: a projection fused "
                               f"after a kxk conv must be dense, got {spec.project.layout}")
        out["pj_w"] = _blocks(arrays["pj_w"], target)
    return out


def build(spec: SparseOpSpec, in_shape, arrays: dict[str, np.ndarray], target,
          knobs=None) -> tirx.PrimFunc:
    """PrimFunc ``(x, w, [pj_w], [bias], dw_weight, [dw_bias], [pj_bias], [pj_residual],
    y)``; Y has the projection's channels when one is fused."""
    knobs = dict(knobs or {})
    vl = simd_lanes(target, knobs)
    d, pj = spec.depthwise, spec.project
    if (tuple(d.kernel_shape) != (3, 3) or tuple(d.strides) != (1, 1)
            or tuple(d.pads) != (1, 1, 1, 1) or spec.has_residual):
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: a depthwise conv after a "
                           f"{tuple(spec.conv.kernel_shape)} conv must be 3x3, stride 1, "
                           f"padding 1, with no residual")
    g = conv_geometry(spec.conv, in_shape, spec.out_features, spec.in_features, spec.entry,
                      vl, None)
    o, oh, ow, n = g.o, g.oh, g.ow, g.n
    p_out = pj.out_features if pj else o
    blocks, k, cb = (int(v) for v in arrays["w"].shape)
    seg = _blocking(vector_registers(target))[1]
    segs = [(s0, min(seg * vl, ow - s0)) for s0 in range(0, ow, seg * vl)]
    row = ow + 2  # a ring row: one zero column each side
    slot = blocks * cb * row  # one stem row of every channel
    cores = max(1, min(_cores(target, knobs), oh))
    nph, plane = len(g.planes), g.hq * g.wq
    offs = []  # tap k's run in Z, relative to an output row's start
    for c in range(g.c):
        for i in range(g.kh):
            for j in range(g.kw):
                p, di, dj = g.taps[i * g.kw + j]
                offs.append((c * nph + p) * plane + di * g.wq + dj)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            x = T.arg("x", T.buffer((n, g.c, g.h, g.w), F32))
            wb = T.arg("w", T.buffer((blocks, k, cb), F32))
            pw = None if pj is None else T.arg("pj_w", T.buffer(arrays["pj_w"].shape, F32))
            bias = T.arg("bias", T.buffer((o,), F32)) if spec.has_bias else None
            wd = T.arg("dw_weight", T.buffer((o, 1, 3, 3), F32))
            dbias = T.arg("dw_bias", T.buffer((o,), F32)) if spec.has_dw_bias else None
            pbias = res = pres = None
            if pj is not None:
                if pj.has_bias:
                    pbias = T.arg("pj_bias", T.buffer((p_out,), F32))
                if pj.has_residual:
                    res = T.arg("pj_residual", T.buffer((n, p_out, oh, ow), F32))
            y = T.arg("y", T.buffer((n, p_out, oh, ow), F32))
            if res is not None:
                pres = T.decl_buffer((n * p_out * oh * ow,), F32, data=res.data)
            xf = T.decl_buffer((n * g.c * g.h * g.w,), F32, data=x.data)
            yf = T.decl_buffer((n * p_out * oh * ow,), F32, data=y.data)
            z = T.decl_buffer((g.z_image + z_slack(seg * vl, vl),), F32)

            def stem_row(ring, at, u) -> None:
                """ring[at + channel * row + 1 ...] = ep(conv row u), every channel."""
                with loop(blocks) as b:
                    for s0, width in segs:
                        acc = T.decl_buffer((cb, width), F32, scope="local")
                        for r in range(cb):
                            vloop(width, lambda l, r=r: T.buffer_store(acc, ZERO, [r, l]))
                        base = T.Bind(u * g.wq + s0)
                        for kk, off in enumerate(offs):
                            for r in range(cb):
                                wv = T.Bind(wb[b, kk, r])
                                vloop(width, lambda l, r=r, wv=wv, off=off: T.buffer_store(
                                    acc, acc[r, l] + wv * z[base + off + l], [r, l]))
                        def put(ch, r, acc=acc, s0=s0, width=width) -> None:
                            dst = T.Bind(at + ch * row + 1 + s0)
                            b_ = bias[ch] if bias is not None else None
                            vloop(width, lambda l: T.buffer_store(
                                ring, epi.emit(acc[r, l], spec.epilogue, bias=b_), [dst + l]))

                        _block_rows(b, cb, o, put)

            def dw_row(ring, slots, v, i, out) -> None:
                """D[i, :, v] from the ring slots holding stem rows v-1, v, v+1, into Y, or
                with a projection into ``out`` (channel c's row at c * ow)."""
                with loop(o) as c:
                    for s0, width in segs:
                        acc = T.decl_buffer((width,), F32, scope="local")
                        vloop(width, lambda l: T.buffer_store(acc, ZERO, [l]))
                        for di in range(3):
                            src = T.Bind(slots[di] + c * row + s0)
                            for dj in range(3):
                                wv = T.Bind(wd[c, 0, di, dj])
                                vloop(width, lambda l, wv=wv, src=src, dj=dj: T.buffer_store(
                                    acc, acc[l] + wv * ring[src + dj + l], [l]))
                        if out is None:
                            dst, buf = T.Bind(((i * o + c) * oh + v) * ow + s0), yf
                        else:
                            dst, buf = T.Bind(c * ow + s0), out
                        b_ = dbias[c] if dbias is not None else None
                        vloop(width, lambda l, dst=dst, buf=buf, b_=b_: T.buffer_store(
                            buf, epi.emit(acc[l], spec.dw_epilogue, bias=b_), [dst + l]))

            def project_row(drow, v, i) -> None:
                """Y[i, :, v] = ep_p(Wp @ the depthwise row), CB output channels by a
                segment at a time."""
                pblocks, _, pcb = (int(e) for e in arrays["pj_w"].shape)
                with loop(pblocks) as b:
                    for s0, width in segs:
                        acc = T.decl_buffer((pcb, width), F32, scope="local")
                        for r in range(pcb):
                            vloop(width, lambda l, r=r: T.buffer_store(acc, ZERO, [r, l]))
                        with loop(o) as c:
                            src = T.Bind(c * ow + s0)
                            for r in range(pcb):
                                wv = T.Bind(pw[b, c, r])
                                vloop(width, lambda l, r=r, wv=wv, src=src: T.buffer_store(
                                    acc, acc[r, l] + wv * drow[src + l], [r, l]))
                        def put(ch, r, acc=acc, s0=s0, width=width) -> None:
                            dst = T.Bind(((i * p_out + ch) * oh + v) * ow + s0)
                            b_ = pbias[ch] if pbias is not None else None
                            vloop(width, lambda l: T.buffer_store(yf, epi.emit(
                                acc[r, l], pj.epilogue, bias=b_,
                                residual=pres[dst + l] if pres is not None else None),
                                [dst + l]))

                        _block_rows(b, pcb, p_out, put)

            with loop(n) as i:
                emit_z_fill(g, xf, z, i, vl)
                with loop(cores, "parallel") as t:
                    lo = T.Bind(t * oh // cores)
                    hi = T.Bind((t + 1) * oh // cores)
                    ring = T.decl_buffer((3 * slot,), F32)
                    zero(ring, 3 * slot, vl)  # the border columns stay zero
                    drow = None if pj is None else T.decl_buffer((o * ow,), F32)
                    with loop(hi - lo + 2) as uu:
                        u = T.Bind(lo - 1 + uu)
                        at = T.Bind(uu % 3 * slot)
                        with T.If(tirx.all(u >= 0, u < oh)):
                            with T.Then():
                                stem_row(ring, at, u)
                            with T.Else():  # a padding row
                                zero(ring, slot, vl, at)
                        with T.If(uu >= 2):
                            with T.Then():
                                slots = [T.Bind((uu - 2 + d_) % 3 * slot) for d_ in range(3)]
                                dw_row(ring, slots, u - 1, i, drow)
                                if pj is not None:
                                    project_row(drow, u - 1, i)
    return ib.get()


KERNELS = {("SparseConv", "dwconv:dense"): KernelDef(prepare, build)}
