"""Kernel-local buffers on the stack, not in TVM's workspace pool: the TIR pipeline we build
with (``PIPELINE``).

TVM lowers every ``scope="local"`` allocation on the CPU to a ``TVMBackendAllocWorkspace``
call and a matching free, whatever its size (only ``global`` ones under 1 KiB become stack
arrays). Our kernels declare their accumulator tiles, staging rows and gathered vectors
``local``, most of them 8-1536 bytes and inside loops, so MobileNetV2-96 made 2355 pool
calls per inference (counted with an LD_PRELOAD wrapper of the runtime's function), and the
accumulators, living behind an opaque pointer, could not become registers. Marked
``disable_lower_builtin``, such a buffer stays an ``alloca``, which LLVM turns into
registers: 167 pool calls per inference are left (the per-task Z and scratch buffers,
``global``), and, A/B in one process against onnxruntime on Zen 4, MobileNetV2-96 at 0%
went 0.947 -> 0.838 ms (0.89x -> 1.00x onnxruntime), MobileNetV2-224 at 0% 5.25 -> 4.25 ms
(0.82x -> 1.01x), at 90% 1.89 -> 1.82 ms; BERT-base at 90% and GPT-2's decode step at 70%
unchanged (28.7 ms, 5.7 ms), the MLP at 90% within its noise.

Only constant-size buffers up to ``MAX_BYTES`` are marked (the largest in the zoo's kernels
is 8 KiB), so a task's stack use stays far below a thread's. TVM's ``StorageRewrite`` drops
allocation annotations, so the marking runs after it, first among the host finalization
passes, ahead of ``LowerTVMBuiltin``.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import tirx
from tvm.tirx import compilation_pipeline

PIPELINE = "sparsec"  # the name relax.build / tvm.compile take as ``tir_pipeline``
MAX_BYTES = 32 << 10
_KEY = "disable_lower_builtin"  # LowerTVMBuiltin leaves such an allocation as it is


def _nbytes(buf) -> int | None:
    dims = list(buf.ty.shape)
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    return math.prod(int(d) for d in dims) * tvm.DataType(buf.ty.dtype).bits // 8


def _mark(stmt: tirx.AllocBuffer) -> tirx.AllocBuffer:
    buf = stmt.buffer
    size = _nbytes(buf)
    if buf.scope() != "local" or size is None or size > MAX_BYTES:
        return stmt
    annotations = dict(stmt.annotations or {})
    if _KEY in annotations:
        return stmt
    annotations[_KEY] = tirx.IntImm("bool", 1)
    return tirx.AllocBuffer(buf, annotations)


@tirx.transform.prim_func_pass(opt_level=0, name="SparsecStackLocals")
def stack_locals_pass(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:
    """Mark the function's small constant-size ``local`` buffers to stay on the stack."""
    return tvm_ffi.structural_map(func, [(tirx.AllocBuffer, _mark)], order="post")


def _factory():
    """TVM's default CPU pipeline (``s_tir``) with the marking added."""
    main, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("default")

    def host():
        return tvm.ir.transform.Sequential([stack_locals_pass, finalize_host()])

    return main, host, finalize_device


compilation_pipeline.register_tir_pipeline(PIPELINE, _factory)


def compile_kernel(func: tirx.PrimFunc, target):
    """One PrimFunc built as ``main`` with the pipeline models are built with (tests,
    benchmarks)."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target, tir_pipeline=PIPELINE)
