"""TIR kernels for SparseLinear / SparseConv, one module per (op, layout) family.

Each kernel module exports ``KERNELS``: a dict from ``(op_type, layout_kind)`` to a
``KernelDef``. The registry below is the only place that knows the modules.

``KernelDef.prepare(spec, arrays, target) -> arrays``: relayout the canonical format arrays
(``sparsec.formats``) into the arrays the kernel reads (panels, padding, splits). Pure numpy.

``KernelDef.build(spec, in_shape, arrays, target, knobs) -> tvm.tirx.PrimFunc``: the
scheduled kernel. Params, in order: X (``in_shape``), the prepared arrays (dict order),
bias ``[out]`` if the epilogue has "bias", residual (Y's shape) if it has "residual",
then Y. SparseLinear: X ``[rows, in]`` and Y ``[rows, out]`` (the lowering flattens leading
dims); SparseConv: X ``[N, C, H, W]`` and Y ``[N, O, OH, OW]``. The PrimFunc carries
``tirx.is_scheduled`` so no later schedule rule touches it. A SparseConv with a fused
depthwise conv (``spec.depthwise``, before or after the 1x1 conv) is keyed ``dw:<kind>``
and takes ``dw_weight`` and ``dw_bias`` after bias and residual (``conv_dw``); after a kxk
conv, ``dwconv:<kind>`` (``conv_stem_dw``). One with a fused mean pool and linear
(``spec.head``) is keyed ``head:<kind>`` and takes the linear's arrays and bias last
(``conv_head``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsec.errors import CompileError
from sparsec.layouts import parse_layout
from sparsec.ops import SparseOpSpec

_MODULES = ("linear_dense", "linear_csr", "linear_bsr", "linear_nm", "linear_bitmap", "conv",
            "conv_dw", "conv_head", "conv_stem_dw")


@dataclass(frozen=True)
class KernelDef:
    prepare: Callable[[SparseOpSpec, dict[str, np.ndarray], Any], dict[str, np.ndarray]]
    build: Callable[..., Any]


def _registry() -> dict[tuple[str, str], KernelDef]:
    table: dict[tuple[str, str], KernelDef] = {}
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # a family not written yet
            raise
        table.update(mod.KERNELS)
    return table


def kernel_for(spec: SparseOpSpec) -> KernelDef:
    kind = parse_layout(spec.layout).kind
    if spec.depthwise is not None and not spec.conv.pointwise:
        kind = f"dwconv:{kind}"  # a kxk conv and the depthwise conv after it (conv_stem_dw)
    elif spec.depthwise is not None:
        kind = f"dw:{kind}"  # the conv and the depthwise conv after it (conv_dw)
    elif spec.head is not None:
        kind = f"head:{kind}"  # the conv, a global average pool and a linear (conv_head)
    table = _registry()
    try:
        return table[(spec.op_type, kind)]
    except KeyError:
        have = sorted(k for (op, k) in table if op == spec.op_type)
        raise CompileError(
            f"codegen/tvm: no {spec.op_type} kernel for layout {spec.layout} "
            f"(node {spec.entry}); available: {', '.join(have) or 'none'}"
        ) from None
