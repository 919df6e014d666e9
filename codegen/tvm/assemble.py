"""Outputs stacked from kernel results are written in place, not copied together at the end.

GPT-2's ``present`` [layers, 2, b, heads, P+1, d] is ``torch.stack`` of every layer's keys
and values, each a kernel's output (the concatenation of ``past`` and the new token). TVM
computed each layer's keys into a buffer of their own, and one kernel at the end copied all
24 into ``present``: 1.1-1.3 ms of an 11 ms decode step at 70% (19 MB read and written).

Here each of those kernels writes straight into its slice of ``present``, and attention
reads it there. Two passes:

- ``mark_assembled_pass`` (before legalization): an output of ``main`` computed by
  ``concat`` along a leading axis (every dimension before the axis is 1), through
  ``expand_dims``/``reshape``/``squeeze``, is a plain concatenation of its leaves' bytes.
  Its definition becomes ``call_pure_packed("sparsec.assemble", *leaves)``. Nothing fuses
  into that call, so every leaf stays a tensor of its own.
- ``assemble_in_place_pass`` (after ``CallTIRRewrite``, before memory planning): the
  output is allocated first, and each leaf that a kernel writes into a buffer allocated for
  it (``R.builtin.alloc_tensor``) gets ``R.memory.view`` of its slice instead. A leaf that
  is anything else (an input, a leaf that appears twice) is copied into its slice by a small
  kernel. The marker call is gone.

A view starts ``byte_offset`` bytes into the output, and TVM's kernels take a buffer at
offset 0 only, so every PrimFunc parameter that receives a view (the kernel writing it, and
attention reading it, through reshapes too) is declared with a symbolic ``elem_offset``.
Only those parameters: making it every kernel's was measured at 0.88x, the address
arithmetic slowed the csr kernels by 10-20%.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T
from tvm.tirx.buffer import is_buffer_var
from tvm.tirx.transform.common import BufferReplacer

from .relax_views import op_name, root, static_shape
from .unaligned import redeclare

MARKER = "sparsec.assemble"
_SAME_BYTES = {"relax.expand_dims", "relax.reshape", "relax.squeeze", "relax.flatten"}


# ---------------------------------------------------------------- before legalization


def _leaves(var, bound: dict) -> list:
    """The tensors whose bytes, one after another, make up ``var``: ``[var]`` itself when
    it is not such a concatenation."""
    value = bound.get(var)
    name = op_name(value)
    if name in _SAME_BYTES and isinstance(value.args[0], relax.Var):
        return _leaves(value.args[0], bound)
    if name != "relax.concat" or not isinstance(value.args[0], relax.Tuple):
        return [var]
    shape = static_shape(var)
    axis = int(value.attrs.axis) if value.attrs.axis is not None else 0
    if shape is None or math.prod(shape[:axis % len(shape)]) != 1:
        return [var]
    out = []
    for field in value.args[0].fields:
        if not isinstance(field, relax.Var) or static_shape(field) is None:
            return [var]
        out += _leaves(field, bound)
    return out


def mark_assembled(func: relax.Function) -> tuple[relax.Function, int]:
    """``func`` with each stacked output defined by the marker call; and how many."""
    body = func.body
    bound = {b.var: b.value for block in body.blocks for b in block.bindings
             if isinstance(b, relax.VarBinding)}
    result = body.body
    while isinstance(bound.get(result), (relax.Var, relax.Tuple)):
        result = bound[result]
    outs = list(result.fields) if isinstance(result, relax.Tuple) else [result]
    outs = [root(o, bound) for o in outs]
    marked = {}
    for out in outs:
        if not isinstance(out, relax.Var) or out in marked:
            continue
        leaves = _leaves(out, bound)
        if len(leaves) > 1:
            marked[out] = relax.call_pure_packed(MARKER, *leaves, ty_args=out.ty)
    if not marked:
        return func, 0
    blocks = []
    for block in body.blocks:
        bindings = [relax.VarBinding(b.var, marked[b.var]) if b.var in marked else b
                    for b in block.bindings]
        blocks.append(type(block)(bindings))
    new = relax.Function(func.params, relax.SeqExpr(blocks, body.body), func.ret_ty,
                         func.is_pure, func.attrs)
    return relax.analysis.remove_all_unused(new), len(marked)


@tvm.transform.module_pass(opt_level=0, name="SparsecMarkAssembled")
def mark_assembled_pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    func, n = mark_assembled(mod["main"])
    if not n:
        return mod
    out = mod.clone()
    out["main"] = func
    return out


# ---------------------------------------------------------------- after CallTIRRewrite


def _marker_args(value) -> list | None:
    """The leaves of a marker call in any of its forms, else None."""
    if not isinstance(value, relax.Call):
        return None
    op, args = value.op, list(value.args)
    if isinstance(op, tvm.ir.Op) and str(op.name) in ("relax.call_pure_packed",
                                                      "relax.call_packed"):
        op, args = args[0], args[1:]
    if isinstance(op, relax.ExternFunc) and str(op.global_symbol) == MARKER:
        return args
    return None


def _copy_func(shape: list[int], dtype: str) -> tirx.PrimFunc:
    """``dst[...] = src[...]``, both at any element offset."""
    n = math.prod(shape)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("sparsec_copy_into")
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            buffers = [T.arg(name, T.buffer(tuple(shape), dtype, offset_factor=1,
                                            elem_offset=tirx.Var(f"{name}_offset", "int64")))
                       for name in ("src", "dst")]
            flat_s, flat_d = (T.decl_buffer((n,), dtype, data=b.data, elem_offset=b.elem_offset)
                              for b in buffers)
            with T.parallel(0, n) as i:
                T.buffer_store(flat_d, flat_s[i], [i])
    return ib.get()


def _with_offsets(func: tirx.PrimFunc, indices: set[int]) -> tirx.PrimFunc:
    """``func`` with the buffer parameters at ``indices`` taking any element offset."""
    repl = {}
    for i in sorted(indices):
        buf = func.params[i]
        if not is_buffer_var(buf):
            continue
        if not isinstance(buf.ty.elem_offset, tirx.IntImm):
            continue
        repl[buf] = redeclare(buf, elem_offset=tirx.Var(f"{buf.name}_elem_offset", "int64"),
                              offset_factor=1)
    return BufferReplacer(repl)(func) if repl else func


def assemble_in_place(mod: tvm.IRModule) -> tvm.IRModule:
    func = mod["main"]
    body = func.body
    alloc = tvm.ir.Op.get("relax.builtin.alloc_tensor")
    bindings = [b for block in body.blocks for b in block.bindings]
    bound = {b.var: b.value for b in bindings if isinstance(b, relax.VarBinding)}
    markers = [b for b in bindings if isinstance(b, relax.VarBinding)
               and _marker_args(b.value) is not None]
    if not markers:
        return mod

    builder = relax.BlockBuilder(mod.clone())
    replace: dict = {}  # binding var -> new value
    extra_after: dict = {}  # marker var -> bindings that take its place
    hoisted = []
    viewed: set = set()
    copies: dict = {}
    for m in markers:
        target = m.var
        sinfo = target.ty
        shape = static_shape(target)
        new_out = relax.Var(target.name + "_out", sinfo)
        hoisted.append(relax.VarBinding(new_out, relax.op.builtin.alloc_tensor(
            relax.ShapeExpr(shape), str(sinfo.dtype), 0)))
        offset, tail = 0, []
        for leaf in _marker_args(m.value):
            lshape = static_shape(leaf)
            nbytes = math.prod(lshape) * tvm.runtime.DataType(leaf.ty.dtype).bits // 8
            view = relax.op.memory.view(new_out, relax.ShapeExpr(lshape),
                                        relative_byte_offset=relax.prim_value(offset))
            src = root(leaf, bound)
            value = bound.get(src)
            if (isinstance(value, relax.Call) and value.op.same_as(alloc) and src not in viewed
                    and static_shape(src) == lshape):
                viewed.add(src)
                replace[src] = view
            else:  # copy it into its slice
                key = (tuple(lshape), str(leaf.ty.dtype))
                if key not in copies:
                    copies[key] = builder.add_func(_copy_func(*key), "sparsec_copy_into")
                slot = relax.Var(f"{target.name}_slot", relax.TensorType(
                    lshape, leaf.ty.dtype))
                tail.append(relax.VarBinding(slot, view))
                tail.append(relax.VarBinding(relax.Var("_", relax.ObjectType()),
                                             relax.Call(copies[key], [leaf, slot])))
            offset += nbytes
        extra_after[target] = tail + [relax.VarBinding(target, new_out)]
    out = builder.get()

    # Every variable that is (a reshape of) a view: the kernels taking it need offsets.
    # Bindings come in order, so one pass sees each view before what is derived from it.
    views = set(replace)
    for b in bindings:
        if b.var in views or not isinstance(b, relax.VarBinding):
            continue
        v = b.value
        packed = bound.get(v.tuple_value) if isinstance(v, relax.TupleGetItem) else None
        if (isinstance(v, relax.Var) and v in views) or (
                op_name(v) in ("relax.reshape", "relax.memory.view")
                and isinstance(v.args[0], relax.Var) and v.args[0] in views) or (
                isinstance(packed, relax.Tuple) and packed.fields[v.index] in views):
            views.add(b.var)
    for extra in extra_after.values():
        for b in extra:
            if isinstance(b.value, relax.Call) and op_name(b.value) == "relax.memory.view":
                views.add(b.var)
    needs: dict = {}
    for b in bindings + [b for extra in extra_after.values() for b in extra]:
        v = b.value
        if isinstance(v, relax.Call) and isinstance(v.op, relax.GlobalVar):
            for i, a in enumerate(v.args):
                if isinstance(a, relax.Var) and a in views:
                    needs.setdefault(v.op, set()).add(i)
    for gv, idx in needs.items():
        f = out[gv]
        if isinstance(f, tirx.PrimFunc):
            out.update_func(gv, _with_offsets(f, idx))

    blocks = []
    for k, block in enumerate(body.blocks):
        new = list(hoisted) if k == 0 else []
        for b in block.bindings:
            if b.var in extra_after:
                new += extra_after[b.var]
            elif b.var in replace:
                new.append(relax.VarBinding(b.var, replace[b.var]))
            else:
                new.append(b)
        blocks.append(relax.BindingBlock(new))
    out["main"] = relax.Function(func.params, relax.SeqExpr(blocks, body.body),
                                 func.ret_ty, func.is_pure, func.attrs)
    return out


@tvm.transform.module_pass(opt_level=0, name="SparsecAssembleInPlace")
def assemble_in_place_pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    out = assemble_in_place(mod)
    return mod if out is mod else relax.transform.Normalize()(out)
