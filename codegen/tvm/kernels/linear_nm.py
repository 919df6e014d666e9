"""N:M SparseLinear:
``Y[r, o] = epilogue(sum_p values[o, p] * X[r, (p // n) * m + indices[o, p]])``.

Every output row holds ``G * n`` entries (G = in / m groups, n kept of every m; padding
entries are zeros). That is CSR with an implicit row pointer (``o * G * n``) and a column
computed from the group and the int8 position, so the kernel reuses the two schedules of
``linear_csr`` (rows path: X transposed, vectorized over rows; nonzero path for one row:
vectorized over the entries with a gather). Work per row is equal, so the parallel tasks
are an even split of the output rows and ``prepare`` adds nothing.

Knobs: as ``linear_csr``.
"""

from __future__ import annotations

import numpy as np

from sparsec.codegen.tvm.kernels import KernelDef
from sparsec.codegen.tvm.kernels.linear_common import (
    hardware_gather,
    i32,
    linear_func,
    thread_count,
    vector_lanes,
)
from sparsec.codegen.tvm.kernels.linear_csr import emit_nnz_path, emit_rows_path, use_rows_path
from sparsec.layouts import parse_layout


def prepare(spec, arrays, target):
    """The canonical arrays, contiguous: values f32 [O, G*n], indices int8 [O, G*n]."""
    return {
        "values": np.ascontiguousarray(arrays["values"], np.float32),
        "indices": np.ascontiguousarray(arrays["indices"], np.int8),
    }


def build(spec, in_shape, arrays, target, knobs=None):
    knobs = knobs or {}
    n, m = parse_layout(spec.layout).params
    lanes = vector_lanes(target, knobs)
    per_row = int(arrays["values"].shape[1])
    with linear_func(spec, in_shape, arrays, "sparse_linear_nm") as f:
        values, indices = f.arrays["values"], f.arrays["indices"]
        out = f.o
        ntasks = max(1, min(out, 4 * thread_count(target, knobs)))

        def task_rows(t):
            first = (t * out) // ntasks
            return first, ((t + 1) * out) // ntasks - first

        def entries(o):
            return 0, per_row

        def term(o, p):
            return values[o, p], (p // n) * m + i32(indices[o, p])

        if use_rows_path(f.rows, lanes, knobs):
            emit_rows_path(f, lanes, ntasks, task_rows, entries, term, knobs,
                           longest=per_row)
        else:
            emit_nnz_path(f, lanes, ntasks, task_rows, entries, term,
                          hardware_gather(target, lanes), knobs)
    return f.func


KERNELS = {("SparseLinear", "nm"): KernelDef(prepare=prepare, build=build)}
