"""Let the compiled library take its inputs where numpy put them: no 64-byte alignment.

TVM declares every PrimFunc buffer parameter 64-byte aligned, and LLVM then emits aligned
vector loads (``vmovaps``) on them: a tensor that is not 64-byte aligned crashes the kernel.
numpy only promises 16 bytes (large arrays sit 16 or 32 bytes past a 64-byte boundary), so
the runner used to copy every such input first. For GPT-2's decode step that is its 9.4 MB
``past``: about 1.1 ms of a 12.3 ms call (12.3 -> 11.2 ms with the copy gone, A/B in one
process).

``unaligned_params_pass`` declares every buffer parameter of every PrimFunc aligned to its
element size only. On x86 with AVX, aarch64 and Wasm an unaligned vector load of aligned
data costs the same as an aligned one, so the kernels lose nothing (the loads become
``vmovups``; memory operands of VEX instructions never needed alignment). Buffers the VM
allocates are still 64-byte aligned; only what the code may assume changes.

The manifest records the alignment the library needs per input (``align``, in bytes), so
an artifact built before this pass, without the field, still gets 64-byte aligned inputs.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.tirx.buffer import is_buffer_var
from tvm.tirx.transform.common import BufferReplacer


def redeclare(buf, *, elem_offset=None, data_alignment=None, offset_factor=None):
    """A buffer parameter declared again, with the given fields changed."""
    ty = buf.ty
    return tirx.decl_buffer(
        ty.shape, ty.dtype, buf.name, None, ty.strides,
        ty.elem_offset if elem_offset is None else elem_offset, buf.scope(),
        ty.data_alignment if data_alignment is None else data_alignment,
        ty.offset_factor if offset_factor is None else offset_factor, layout=ty.layout)


def element_aligned(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each buffer parameter's alignment lowered to its element size."""
    repl = {}
    for buf in func.params:
        if not is_buffer_var(buf):
            continue
        elem = max(1, tvm.runtime.DataType(buf.ty.dtype).bits // 8)
        if buf.ty.data_alignment > elem:
            repl[buf] = redeclare(buf, data_alignment=elem)
    return BufferReplacer(repl)(func) if repl else func


@tvm.transform.module_pass(opt_level=0, name="SparsecUnalignedParams")
def unaligned_params_pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    out = mod.clone()
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            out.update_func(gv, element_aligned(func))
    return out
