"""Give every consumer of a shared slice its own copy, so that the slice fuses into it.

TVM's ONNX importer turns a ``Split`` into one ``strided_slice`` per output, and exporters
write ``tensor.unbind(0)`` as Split + Squeeze. A KV cache is read that way: GPT-2's
``past`` [layers, 2, ...] is split per layer, and each layer's slice is split again into
keys and values. The layer's slice then has two consumers, and ``FuseOps`` fuses a
producer only into a single consumer, so TVM copied each layer's 0.8 MB slice out of
``past`` before the concatenations read it back.

``DuplicateSharedViews`` runs before legalization. A binding whose value is an
index-only op (``VIEW_OPS``: slices, squeezes, reshapes) and whose every user is such an
op or a concatenation is emitted once per user instead, as a copy of the op on the same
arguments; the chain above it is copied the same way. Each copy then has one consumer and
``FuseOps`` folds it into that consumer's loop: the concatenation reads ``past`` in place.
The copies cost nothing at run time: they are index arithmetic in the fused loop.

``split_to_slices`` runs first: a ``split`` (one kernel with several outputs, which nothing
fuses into) becomes one ``strided_slice`` per output, and each slice fuses into its
consumer. BERT's ``qkv.chunk(3)`` was a kernel copying the 1.2 MB projection into three
tensors before the heads' transposes read them (1.3 ms of a 68 ms step at 90%); the
transposes now read the projection in place.
"""

from __future__ import annotations

import tvm
from tvm import relax

VIEW_OPS = {"relax.strided_slice", "relax.squeeze", "relax.reshape", "relax.expand_dims"}
CONSUMER_OPS = VIEW_OPS | {"relax.concat"}


def op_name(value) -> str | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return str(value.op.name)
    return None


def root(var, bound: dict):
    """The last variable of a chain of ``v = w`` bindings that starts at ``var``
    (``bound``: variable -> bound value)."""
    while isinstance(bound.get(var), relax.Var):
        var = bound[var]
    return var


def static_shape(expr) -> list[int] | None:
    """The dims of a tensor-typed ``expr`` when every one is a constant, else None."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return [int(d) for d in dims]


def _uses(expr, var_set) -> list:
    """The variables of ``var_set`` that ``expr`` reads (with repeats)."""
    found = []
    relax.analysis.post_order_visit(
        expr, lambda e: found.append(e) if isinstance(e, relax.Var) and e in var_set else None)
    return found


def duplicate_shared_views(func: relax.Function) -> tuple[relax.Function, int]:
    """``func`` with shared views copied per consumer (module docstring); (func, copies)."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return func, 0
    value_of, block_of = {}, {}
    for i, block in enumerate(body.blocks):
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                value_of[b.var], block_of[b.var] = b.value, i
    users: dict = {v: [] for v in value_of}
    outside = set(_uses(body.body, users))  # read by the function's result
    for i, block in enumerate(body.blocks):
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                for v in _uses(b.value, users):
                    users[v].append(op_name(b.value))
                    if block_of[v] != i:
                        outside.add(v)  # copies are emitted in the consumer's block

    def copyable(var) -> bool:
        """A view whose every user, all in its own block, is a view or a concatenation."""
        return (op_name(value_of.get(var)) in VIEW_OPS and var not in outside
                and all(u in CONSUMER_OPS for u in users[var]))

    # A view is copied when it is shared, or when it feeds a view that is copied.
    copied = {v for v in value_of if copyable(v) and len(users[v]) > 1}
    todo = list(copied)
    while todo:
        for arg in _uses(value_of[todo.pop()], users):
            if arg not in copied and copyable(arg):
                copied.add(arg)
                todo.append(arg)
    if not copied:
        return func, 0

    count = 0
    new_blocks = []
    normalize = relax.BlockBuilder().normalize
    for block in body.blocks:
        out = []

        def subst(expr):
            """``expr`` with every copied view it reads replaced by a fresh copy."""
            if isinstance(expr, relax.Var) and expr in copied:
                return fresh(expr)
            if isinstance(expr, relax.Tuple):
                return relax.Tuple([subst(f) for f in expr.fields])
            return expr

        def recall(call):
            """``call`` on its arguments with the copied views replaced (``subst``)."""
            return normalize(relax.Call(call.op, [subst(a) for a in call.args], call.attrs,
                                        call.ty_args))

        def fresh(var):
            """A new binding computing ``var`` (a copied view) for one consumer."""
            nonlocal count
            value = recall(value_of[var])
            kind = relax.DataflowVar if isinstance(var, relax.DataflowVar) else relax.Var
            new = kind(f"{var.name}_v{count}", var.ty)
            count += 1
            out.append(relax.VarBinding(new, value))
            return new

        for b in block.bindings:
            if isinstance(b, relax.VarBinding) and b.var in copied:
                continue  # emitted where each consumer needs it
            if isinstance(b, relax.VarBinding) and _uses(b.value, copied):
                # a user of a copied view is a view or a concatenation (``copyable``): a call
                b = relax.VarBinding(b.var, recall(b.value))
            out.append(b)
        cls = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        new_blocks.append(cls(out))
    new_body = relax.SeqExpr(new_blocks, body.body)
    return relax.Function(func.params, new_body, func.ret_ty, func.is_pure,
                          func.attrs), count


def split_to_slices(func: relax.Function) -> tuple[relax.Function, int]:
    """``func`` with every ``split`` of a static shape written as one ``strided_slice``
    per output; (func, splits rewritten).

    A ``split`` is one kernel with several outputs, and nothing fuses into it: BERT's
    ``qkv.chunk(3)`` copied the 1.2 MB projection into three tensors before each was
    transposed into heads. A slice of its own fuses into its consumer, so the transposes
    read the projection where it is. Cost when a slice does not fuse: the same copy as
    before, in three kernels instead of one."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return func, 0
    normalize = relax.BlockBuilder().normalize
    count = 0
    new_blocks = []
    for block in body.blocks:
        out = []
        for b in block.bindings:
            parts = _slices(b, normalize) if isinstance(b, relax.VarBinding) else None
            if parts is None:
                out.append(b)
                continue
            count += 1
            kind = relax.DataflowVar if isinstance(b.var, relax.DataflowVar) else relax.Var
            fields = []
            for i, value in enumerate(parts):
                var = kind(f"{b.var.name}_part{i}", value.ty)
                out.append(relax.VarBinding(var, value))
                fields.append(var)
            out.append(relax.VarBinding(b.var, normalize(relax.Tuple(fields))))
        cls = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        new_blocks.append(cls(out))
    if not count:
        return func, 0
    return relax.Function(func.params, relax.SeqExpr(new_blocks, body.body), func.ret_ty,
                          func.is_pure, func.attrs), count


def _slices(binding, normalize) -> list | None:
    """The ``strided_slice`` calls equal to a static ``split`` binding, else None."""
    value = binding.value
    if op_name(value) != "relax.split":
        return None
    x = value.args[0]
    dims = static_shape(x)
    if dims is None:
        return None
    axis = int(value.attrs.axis) % len(dims)
    size = dims[axis]
    ios = value.attrs.indices_or_sections
    if isinstance(ios, (int, tvm.tirx.IntImm)):
        n = int(ios)
        if n < 1 or size % n:
            return None
        bounds = [size // n * i for i in range(n + 1)]
    else:
        bounds = [0] + [int(i) for i in ios] + [size]
    return [normalize(relax.op.strided_slice(x, [axis], [lo], [max(lo, hi)]))
            for lo, hi in zip(bounds, bounds[1:])]


def _rewrite_functions(mod: tvm.IRModule, rewrite) -> tvm.IRModule:
    """``mod`` with ``rewrite(func) -> (func, changes)`` applied to every Relax function
    (the input module stays as it was), or ``mod`` itself when nothing changed."""
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            new, changes = rewrite(func)
            if changes:
                updates[gv] = new
    if not updates:
        return mod
    mod = mod.clone()
    for gv, func in updates.items():
        mod[gv] = func
    return mod


@tvm.transform.module_pass(opt_level=0, name="SparsecSplitToSlices")
def split_to_slices_pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    out = _rewrite_functions(mod, split_to_slices)
    if out is mod:
        return mod
    return relax.transform.Normalize()(relax.transform.CanonicalizeBindings()(out))


@tvm.transform.module_pass(opt_level=0, name="SparsecDuplicateSharedViews")
def duplicate_shared_views_pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    out = _rewrite_functions(mod, duplicate_shared_views)
    return mod if out is mod else relax.transform.Normalize()(out)
