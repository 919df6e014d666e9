"""What the SparseLinear kernel tests share (tests/codegen/kernels/test_linear_kernels.py,
test_linear_dense.py, test_linear_bitmap.py; importable through pytest's ``pythonpath``):
the host target, random weights that fit a layout, and one kernel built, compiled, run and
compared with numpy.

``run_kernel`` packs a weight with ``sparsec.formats.pack``, runs the kernel's ``prepare``
and ``build``, compiles the PrimFunc alone (``stack_locals.compile_kernel``) and calls it
with every buffer against an unreadable page; the reference is ``x @ unpack(packed).T`` in
float64, then ``sparsec.ops.apply_epilogue``. Tolerance: rtol = atol = 1e-4 (fp32 sums of
at most a few thousand terms of size ~1).
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from sparsec.codegen.tvm.kernels import kernel_for  # noqa: E402
from sparsec.codegen.tvm.stack_locals import compile_kernel  # noqa: E402
from sparsec.formats import pack, unpack  # noqa: E402
from sparsec.layouts import parse_layout  # noqa: E402
from sparsec.ops import SparseOpSpec, apply_epilogue  # noqa: E402
from sparsec.plan import EpilogueStep  # noqa: E402
from sparsec.targets.cpu import cpu_flags  # noqa: E402
from sparsec.testing import guarded_tensor  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-4}


def host_target(level: str | None = None):
    """A generic x86-64 level the OS really exposes (hypervisors may hide AVX-512)."""
    flags = cpu_flags()
    if level is None:
        level = "x86-64-v4" if "avx512f" in flags else "x86-64-v3" if "avx2" in flags else "x86-64"
    return tvm.target.Target({"kind": "llvm", "mcpu": level, "num-cores": 2})


HOST = host_target()


def kernel_weight(layout: str, out: int, inp: int, density: float, rng, zero_rows=(0,)):
    """A random weight that fits ``layout``: blocks for bsr, at most n of m for nm."""
    lay = parse_layout(layout)
    if lay.kind == "bsr":
        r, c = lay.params
        keep = rng.random((out // r, inp // c)) < density
        mask = np.kron(keep, np.ones((r, c), bool))
    else:
        mask = rng.random((out, inp)) < density
    w = rng.standard_normal((out, inp)).astype(np.float32) * mask
    if lay.kind == "nm":
        n, m = lay.params
        groups = w.reshape(out, inp // m, m)
        order = np.argsort(-np.abs(groups), axis=2, kind="stable")
        np.put_along_axis(groups, order[:, :, n:], 0.0, axis=2)
    for r in zero_rows:
        w[r % out] = 0.0  # an empty output row (a whole block row for bsr)
    return np.ascontiguousarray(w, np.float32)


def run_kernel(layout, w, rows, steps=(), target=HOST, knobs=None, seed=1, plan_rows=0,
               guard="end"):
    """Build, compile and run one kernel; returns (y, reference). ``plan_rows``: the rows
    the plan expected (``SparseOpSpec.rows``; 0 unknown). Every buffer lies against an
    unreadable page at its ``guard`` side (``sparsec.testing``): a stray access faults."""
    rng = np.random.default_rng(seed)
    out, inp = w.shape
    packed = pack(w, layout)
    spec = SparseOpSpec("SparseLinear", layout, out, inp, "fc", list(steps), list(packed.arrays),
                        rows=plan_rows)
    kdef = kernel_for(spec)
    arrays = kdef.prepare(spec, packed.arrays, target)
    func = kdef.build(spec, (rows, inp), arrays, target, knobs)
    assert func.attrs["tirx.is_scheduled"] and func.attrs["tirx.noalias"]
    ex = compile_kernel(func, target)

    x = rng.standard_normal((rows, inp)).astype(np.float32)
    bias = rng.standard_normal(out).astype(np.float32) if spec.has_bias else None
    residual = rng.standard_normal((rows, out)).astype(np.float32) if spec.has_residual else None
    args = [x, *arrays.values()] + [a for a in (bias, residual) if a is not None]
    y = guarded_tensor(np.full((rows, out), np.nan, np.float32), guard)
    ex["main"](*[guarded_tensor(a, guard) for a in args], y)

    acc = (x.astype(np.float64) @ unpack(packed).astype(np.float64).T).astype(np.float32)
    return y.numpy(), apply_epilogue(acc, spec.epilogue, bias, residual)


def check_kernel(layout, out, inp, rows, density, steps=(), seed=0, **kw):
    rng = np.random.default_rng(seed)
    w = kernel_weight(layout, out, inp, density, rng)
    y, ref = run_kernel(layout, w, rows, steps, seed=seed + 1, **kw)
    np.testing.assert_allclose(y, ref, **TOL)


S = EpilogueStep

EPILOGUES = [
    [S("bias"), S("relu")],
    [S("clip", -0.5, 0.7)],
    [S("clip", None, 1.0), S("residual")],
    [S("gelu")],
    [S("bias"), S("sigmoid")],
    [S("bias"), S("gelu"), S("residual")],
]
