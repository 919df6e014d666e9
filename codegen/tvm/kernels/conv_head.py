"""A CNN's classifier head in one kernel: a dense 1x1 conv on a small image, its global
average pool and the linear layer after it.

``Y[n] = ep_ln(W_ln . mean_p(ep(sum_c W[o, c] * X[n, c, p])))`` for a SparseConv with a fused
head (``spec.head``, ``passes/fuse_head.py``): MobileNetV2's 320->1280 conv at 7x7, the
average pool and the 1280->1000 classifier. Unfused these are three kernels, and the
classifier, a GEMV over a 5 MB weight read once per image, waits on memory: on Zen 4 (2
cores, MobileNetV2-224 at 0%) it took 113 us in the model against 32 us timed alone, its
weight pushed out of the caches by the rest of the model. Fused, the weight streams in
while the conv computes:

    for n: for task in parallel(ranges of the conv's output panels):
      part[task] = 0                                     # the task's share of Y, in L1
      for panel in task's range:                         # NB output channels of the conv
        pooled = sum over row tiles of ep(GEMM tile)     # ``conv_pixel_rows``'s GEMM:
                                                         #   pixels as rows, registers
        f = pooled / P
        for chunk of the linear's outputs:               # the weight's rows for the panel's
          part[task, chunk] += f . W_ln^T[panel, chunk]  #   channels, read in order
      Y[n] = ep_ln(sum over tasks of part + bias)

The conv is the pixel-rows GEMM (``linear_dense``'s micro-kernel, rows = pixels) over the
same weight panels; the linear's weight is laid out by panel (``prepare``: ``ln_w``
[panels, chunks, NB, OC]), so each panel's slice is one contiguous run and each core
streams its own half. Padded channels of the last panel have zero rows in ``ln_w``.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.codegen.tvm.kernels import KernelDef, linear_dense
from sparsec.codegen.tvm.kernels import epilogue as epi
from sparsec.codegen.tvm.kernels.linear_common import (
    F32,
    ZERO,
    loop,
    prefetch,
    thread_count,
    vector_lanes,
    vector_registers,
)
from sparsec.errors import CompileError
from sparsec.formats import Packed, unpack
from sparsec.ops import SparseOpSpec

CHUNK_VECTORS = 8  # linear outputs summed in registers per pass over a panel's channels
LINE = 16  # floats per cache line
# The panel's ``ln_w`` slice is prefetched during its own GEMM, a few lines per k step:
# without, the stream did not overlap the compute (in the model, MobileNetV2-224 at 0%,
# A/B in one process: 406 us fused against 434 unfused). Prefetched: 258-331 us against
# 420; a panel ahead 0.90x, two 0.95x, into L1 0.88x, into L3 1.00x of that.
PREFETCH_LOCALITY = 2  # llvm.prefetch's: into L2 (prefetcht1)


def prepare(spec: SparseOpSpec, arrays: dict[str, np.ndarray], target) -> dict[str, np.ndarray]:
    """The conv's weight as ``linear_dense`` panels (``w_panels`` [P, C, NB]) and the
    linear's, transposed and cut by the same panels (``ln_w`` [P, chunks, NB, OC]: the
    linear outputs in chunks of ``CHUNK_VECTORS`` vectors, zero past its out_features and
    past the conv's channels)."""
    hd = spec.head
    conv = linear_dense.prepare(spec, {"w": np.asarray(arrays["w"], np.float32)}, target)
    npanel, _, nb = conv["w_panels"].shape
    w_ln = unpack(Packed(hd.layout, (hd.out_features, hd.in_features),
                         {k[3:]: v for k, v in arrays.items() if k.startswith("ln_")}))
    oc = CHUNK_VECTORS * vector_lanes(target)
    chunks = -(-hd.out_features // oc)
    wt = np.zeros((npanel * nb, chunks * oc), np.float32)
    wt[:hd.in_features, :hd.out_features] = w_ln.T
    ln = wt.reshape(npanel, nb, chunks, oc).transpose(0, 2, 1, 3)
    return {"w_panels": conv["w_panels"], "ln_w": np.ascontiguousarray(ln)}


def build(spec: SparseOpSpec, in_shape, arrays: dict[str, np.ndarray], target,
          knobs=None) -> tirx.PrimFunc:
    """PrimFunc ``(x, w_panels, ln_w, [bias], [residual], [ln_bias], y)``: X ``[N, C, H,
    W]``, Y ``[N, L]`` (the linear's outputs)."""
    knobs = dict(knobs or {})
    hd = spec.head
    n, c, h, w = (int(d) for d in in_shape)
    o, p = spec.out_features, h * w
    if c != spec.in_features or hd.in_features != o:
        raise CompileError(f"codegen/tvm: SparseConv {spec.entry}: input has {c} channels and "
                           f"the head reads {hd.in_features}; the conv has {spec.in_features} "
                           f"in and {o} out")
    npanel, k, nb = (int(d) for d in arrays["w_panels"].shape)
    _, chunks, _, oc = (int(d) for d in arrays["ln_w"].shape)
    lanes = vector_lanes(target, knobs)
    mr = linear_dense.tile_rows(p, nb, lanes, vector_registers(target), knobs.get("mr"))
    full, tail = divmod(p, mr)
    tasks = max(1, min(thread_count(target, knobs), npanel))
    ol = hd.out_features
    span = chunks * oc  # one task's partial sums
    slice_ = chunks * nb * oc  # a panel's ``ln_w``
    lines = -(-slice_ // (LINE * k * (full + (tail > 0))))  # prefetches per k step
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            x = T.arg("x", T.buffer((n, c, h, w), F32))
            wp = T.arg("w_panels", T.buffer((npanel, k, nb), F32))
            lw = T.arg("ln_w", T.buffer((npanel, chunks, nb, oc), F32))
            bias = T.arg("bias", T.buffer((o,), F32)) if spec.has_bias else None
            res = T.arg("residual", T.buffer((n, o, h, w), F32)) if spec.has_residual else None
            lbias = T.arg("ln_bias", T.buffer((ol,), F32)) if hd.has_bias else None
            y = T.arg("y", T.buffer((n, ol), F32))
            xf = T.decl_buffer((n * c * p,), F32, data=x.data)
            rf = None if res is None else T.decl_buffer((n * o * p,), F32, data=res.data)
            part = T.decl_buffer((tasks * span,), F32)

            def channel(pn, j):  # a conv channel of panel pn (padding: clamped to the last)
                ch = pn * nb + j
                return ch if npanel * nb == o else T.min(ch, o - 1)

            def pool_rows(i, pn, rb, m: int, pooled) -> None:
                """pooled += sum over row block rb's pixels of ep(conv), panel pn's
                channels; meanwhile the panel's ``ln_w`` slice is prefetched into L2."""
                r0 = rb * mr
                acc = T.decl_buffer((m, nb), F32, scope="local")
                with T.unroll(0, m) as ii:
                    with T.vectorized(0, nb) as j:
                        T.buffer_store(acc, ZERO, [ii, j])
                with loop(k) as kk:
                    for line in range(lines):
                        step = (rb * k + kk) * lines + line
                        at = pn * slice_ + step * LINE
                        prefetch(lw, T.min(at, npanel * slice_ - LINE), PREFETCH_LOCALITY)
                    with T.unroll(0, m) as ii:
                        xv = xf[(i * c + kk) * p + r0 + ii]
                        with T.vectorized(0, nb) as j:
                            T.buffer_store(acc, acc[ii, j] + xv * wp[pn, kk, j], [ii, j])
                with T.unroll(0, m) as ii:
                    with T.vectorized(0, nb) as j:
                        ch = channel(pn, j)
                        value = epi.emit(
                            acc[ii, j], spec.epilogue,
                            bias=bias[ch] if bias is not None else None,
                            residual=rf[(i * o + ch) * p + r0 + ii] if rf is not None else None)
                        T.buffer_store(pooled, pooled[j] + value, [j])

            with loop(n) as i:
                with loop(tasks, "parallel") as t:
                    p0 = T.Bind((t * npanel) // tasks)
                    p1 = T.Bind(((t + 1) * npanel) // tasks)
                    with loop(span // lanes) as v:
                        with T.vectorized(0, lanes) as l:
                            T.buffer_store(part, ZERO, [t * span + v * lanes + l])
                    with loop(p1 - p0) as pp:
                        pn = T.Bind(p0 + pp)
                        pooled = T.decl_buffer((nb,), F32, scope="local")
                        with T.vectorized(0, nb) as j:
                            T.buffer_store(pooled, ZERO, [j])
                        if full:
                            with loop(full) as rb:
                                pool_rows(i, pn, rb, mr, pooled)
                        if tail:
                            pool_rows(i, pn, full, tail, pooled)
                        with T.vectorized(0, nb) as j:
                            T.buffer_store(pooled, pooled[j] * tirx.const(1.0 / p, F32), [j])
                        with loop(chunks) as q:
                            base = T.Bind(t * span + q * oc)
                            acc = T.decl_buffer((oc,), F32, scope="local")
                            with T.vectorized(0, oc) as l:
                                T.buffer_store(acc, part[base + l], [l])
                            with T.unroll(0, nb) as cc:
                                fv = pooled[cc]
                                with T.vectorized(0, oc) as l:
                                    T.buffer_store(acc, acc[l] + fv * lw[pn, q, cc, l], [l])
                            with T.vectorized(0, oc) as l:
                                T.buffer_store(part, acc[l], [base + l])
                with loop(ol) as j:
                    total = part[j]
                    for tt in range(1, tasks):
                        total = total + part[tt * span + j]
                    value = epi.emit(total, hd.epilogue,
                                     bias=lbias[j] if lbias is not None else None)
                    T.buffer_store(y, value, [i, j])
    return ib.get()


KERNELS = {("SparseConv", "head:dense"): KernelDef(prepare, build)}
