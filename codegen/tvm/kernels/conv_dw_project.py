"""The 1x1 projection fused into ``conv_dw``'s kernel, walked a group of channels at a time.

``Y[n, o] = ep_pj(sum_c W_pj[o, c] * D[n, c])`` for the block's projection after its
depthwise output ``D``, computed where ``D`` is made: a task finishes a group of
``group_channels`` depthwise channels into ``dg`` [group, width], then

    for tile of at most PROJECT_LANES pixels:
      for o in output rows:
        acc = sum over o's nonzeros c in the group of W_pj[o, c] * dg[c, tile]  # registers
        part[o, tile] += acc
    Y[n, o] = ep_pj(the tasks' part[o] added up)                               # ``put``

so the partial sums are read and written once per group and row, not once per nonzero.
The weight is stored for that walk (``grouped_arrays``): by group, then output row.

Before, each channel's nonzeros were added into the sums one by one, a read-modify-write
of a whole row per nonzero, and the projection was most of the time of the small-image
blocks. Grouped, on MobileNetV2-224 at 90% (AVX2, Zen 3, kernels A/B in one process):
960->320 at 7x7 1.35x, 960->160 at 7x7 1.27x, 576->96 at 14x14 1.15x, 384->64 1.14x;
28x28 and larger within noise, where groups of 32 beat 64 by up to 1.2x (24->144->32 at
56x56 with stride 2). The same walk over a dense projection was 0.71-0.87x of the
separate dense kernel (one FMA per load against its six), so ``fuse_depthwise`` keeps a
dense projection out. Register-blocked like that kernel (6 output rows per load of a
channel's output, 2026-12-01, Zen 4, MobileNetV2-224 at 0%, per kernel in the model, A/B
in one process) it still did not pay: block 1 (96 -> 24 at 56x56, bands) 339 -> 324 us,
blocks 2-3, 5, 7-10 and 14-16 within 3%, block 0 153 -> 166 us and blocks 4, 6 and 11-13
10-25% slower (its groups split unevenly over the two cores: 9 groups as 5 + 4); the model
3.90 -> 3.93 ms. The depthwise output of a 14x14 block stays in L2 either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.tirx.script import builder as T

from sparsec.codegen.tvm.kernels import epilogue as epi
from sparsec.codegen.tvm.kernels.conv_geometry import F32, vloop
from sparsec.codegen.tvm.kernels.conv_inner import _i32, dense_rows, span
from sparsec.formats import Packed, index_dtype, unpack
from sparsec.ops import SparseOpSpec

PROJECT_GROUP = 64  # depthwise channels whose outputs the projection reads together
PROJECT_WIDE_PIXELS = 28 * 28  # ... half as many from output planes this large
PROJECT_LANES = 64  # pixels per projection tile (8 AVX2 registers of sums)


def group_channels(spec: SparseOpSpec, dense_expand: bool) -> int:
    """Depthwise channels per projection group: ``PROJECT_GROUP``, half that when the plan's
    rows say the depthwise output has ``PROJECT_WIDE_PIXELS`` or more (a group's output
    then stays in L2), rounded up to whole blocks of a dense expand conv's channels.
    ``prepare`` and ``build`` both call it on the node's spec."""
    s = spec.depthwise.strides[0] if spec.depthwise is not None else 1
    pixels = spec.rows if spec.dw_before else spec.rows // (s * s)  # 0: not known
    group = PROJECT_GROUP // 2 if pixels >= PROJECT_WIDE_PIXELS else PROJECT_GROUP
    rows = dense_rows(spec.out_features) if dense_expand else 1
    return rows * -(-group // rows)


def grouped_arrays(pj: SparseOpSpec, packed: dict[str, np.ndarray], group: int
                   ) -> dict[str, np.ndarray]:
    """A 1x1 projection's weight by groups of ``group`` input channels, row by row within a
    group: segment ``q * O + o`` of ``pj_gptr`` [groups * O + 1] holds output row o's
    nonzeros in group q, their channels within the group (``pj_cols``) and values
    (``pj_values``), the order ``Projection.add`` walks."""
    w = unpack(Packed(pj.layout, (pj.out_features, pj.in_features), packed))
    o, e = w.shape
    groups = -(-e // group)
    padded = np.zeros((o, groups * group), np.float32)
    padded[:, :e] = w
    blocks = padded.reshape(o, groups, group).transpose(1, 0, 2)  # [group, o, channel]
    q, r, c = np.nonzero(blocks)  # row-major: by group, then row, then channel
    gptr = np.zeros(groups * o + 1, np.int32)
    np.cumsum(np.bincount(q * o + r, minlength=groups * o), out=gptr[1:])
    return {"pj_values": np.ascontiguousarray(blocks[q, r, c] if q.size else
                                              np.zeros(1, np.float32)),
            "pj_cols": (c if c.size else np.zeros(1, np.int64)).astype(
                index_dtype(group - 1)),
            "pj_gptr": gptr}


@dataclass
class Projection:
    """The projection's buffers in one PrimFunc, and the TIR that adds and stores it."""

    spec: SparseOpSpec  # the 1x1 conv: out_features, epilogue
    bufs: dict  # pj_gptr, pj_cols, pj_values (``grouped_arrays``)
    channels: int  # depthwise channels (its in_features)
    group: int  # ``group_channels``
    vl: int
    yf: object  # Y, flat
    bias: object = None
    res: object = None  # the residual, flat

    @property
    def out(self) -> int:
        return self.spec.out_features

    @property
    def groups(self) -> int:
        return -(-self.channels // self.group)

    def add(self, part, base0, dg, q, width: int) -> None:
        """part[base0 + o * width:][:width] += sum over group q's channels c of
        W_pj[o, c] * dg[c]: per tile of at most ``PROJECT_LANES`` pixels and output row,
        the row's sums over the group stay in registers."""
        b = self.bufs
        gptr, cols, vals = b["pj_gptr"], b["pj_cols"], b["pj_values"]

        def tile(l0, m: int) -> None:
            acc = T.decl_buffer((m,), F32, scope="local")
            with T.serial(self.out) as o:
                seg = T.Bind(q * self.out + o)
                vloop(m, lambda l: T.buffer_store(acc, tirx.const(0.0, F32), [l]))
                with span(gptr[seg], gptr[seg + 1]) as j:
                    src = T.Bind(_i32(cols[j]) * width + l0)
                    wv = T.Bind(vals[j])
                    vloop(m, lambda l: T.buffer_store(acc, acc[l] + wv * dg[src + l], [l]))
                dst = T.Bind(base0 + o * width + l0)
                vloop(m, lambda l: T.buffer_store(part, part[dst + l] + acc[l], [dst + l]))

        full, rest = divmod(width, PROJECT_LANES)
        if full:
            with T.serial(full) as blk:
                tile(T.Bind(blk * PROJECT_LANES), PROJECT_LANES)
        if rest:
            tile(full * PROJECT_LANES, rest)

    def put(self, o, sums, yb, width: int) -> None:
        """Y[yb : yb + width] = pj_epilogue(sums(l)) of output channel ``o``."""

        def store(l):
            value = epi.emit(sums(l), self.spec.epilogue,
                             bias=self.bias[o] if self.bias is not None else None,
                             residual=self.res[yb + l] if self.res is not None else None)
            T.buffer_store(self.yf, value, [yb + l])

        vloop(width, store, chunk=4 * self.vl)

    def put_task_sums(self, part, tasks: int, o, n, px: int) -> None:
        """Y[n, o] from the ``tasks`` partial sums of output channel o in ``part``
        [tasks, O, px]."""

        def sums(l):
            acc = part[o * px + l]
            for t in range(1, tasks):
                acc = acc + part[t * (self.out * px) + o * px + l]
            return acc

        self.put(o, sums, T.Bind((n * self.out + o) * px), px)
