"""TVM backend: rewritten ONNX (+ Plan) -> Relax -> scheduled TIR -> one compiled library.

Steps (``build``):
  1. prepare   — each SparseLinear/SparseConv node's format arrays are re-laid out into
                 what its TIR kernel reads (``kernels.KernelDef.prepare``);
  2. import    — TVM's own ONNX frontend imports the graph; our subclass converts the
                 ``ai.sparsec`` nodes into ``call_tir`` to the layout's kernel, with the
                 fused epilogue inside; float weights become function parameters so the
                 library holds code and ``weights.safetensors`` holds the numbers;
  3. compile   — ``relax.build`` with ``schedule.relax_pipeline`` (the VM program compiled
                 to native code, ``exec_mode="compiled"``): every PrimFunc TVM
                 lowers itself gets a CPU schedule, ours are already scheduled; then
                 every buffer parameter is declared aligned to its element size only, so
                 inputs need no 64-byte aligned copy (``unaligned``); TIR is lowered with
                 our pipeline, which keeps kernel-local buffers on the stack
                 (``stack_locals``).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
import tvm
from onnx import numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx

from sparsec import ops
from sparsec.errors import CompileError
from sparsec.formats import array_keys
from sparsec.ops import SparseOpSpec
from sparsec.plan import ConvAttrs
from sparsec.codegen.tvm.kernels import kernel_for
from sparsec.codegen.tvm import stack_locals
from sparsec.codegen.tvm.relax_views import root
from sparsec.codegen.tvm.support import check_supported
from sparsec.codegen.tvm.unaligned import unaligned_params_pass

# Float initializers at least this large become runtime parameters (weights.safetensors);
# smaller ones (scalars, clip bounds) stay constants so TVM can fold them.
PARAM_MIN_ELEMS = 64


@dataclass
class Built:
    executable: object  # tvm.relax.VMExecutable
    input_names: list[str]
    output_names: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict)  # in call order
    # Per output: the library returns a new buffer for it on every call, which the caller
    # may own without a copy (``fresh_outputs``).
    fresh_outputs: list[bool] = field(default_factory=list)
    # Bytes of alignment the library needs of each input (``unaligned``): its element size.
    input_align: list[int] = field(default_factory=list)


def fresh_outputs(main: relax.Function) -> list[bool]:
    """Which outputs of ``main`` (after memory planning) are new tensors on every call.

    An output is fresh when it is an unplanned ``R.builtin.alloc_tensor`` that a kernel
    wrote and no other output returns too. Anything else may share memory with an input, a
    weight, a constant of the library or another output (an Identity, a Reshape's view), so
    the runner copies it; a fresh output it can hand out as is."""
    alloc = tvm.ir.Op.get("relax.builtin.alloc_tensor")
    bound: dict = {}
    body = main.body
    for block in body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                bound[b.var] = b.value

    top = root(body.body, bound)
    result = bound.get(top, top)
    outs = list(result.fields) if isinstance(result, relax.Tuple) else [top]
    fresh, seen = [], set()
    for out in outs:
        var = root(out, bound)
        value = bound.get(var)
        ok = isinstance(value, relax.Call) and value.op.same_as(alloc) and var not in seen
        seen.add(var)
        fresh.append(bool(ok))
    return fresh


def read_spec(node: onnx.NodeProto) -> SparseOpSpec:
    """The node's attributes and the names of its format-array inputs (sparsec/ops.py)."""
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    dec = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731

    def steps(prefix: str):
        return ops.epilogue_from_attrs([dec(s) for s in a.get(f"{prefix}epilogue", [])],
                                       a.get(f"{prefix}clip_min"), a.get(f"{prefix}clip_max"))

    layout = dec(a["layout"])
    spec = SparseOpSpec(
        op_type=node.op_type,
        layout=layout,
        out_features=int(a["out_features"]),
        in_features=int(a["in_features"]),
        entry=dec(a.get("entry", node.name)),
        epilogue=steps(""),
        array_names=list(node.input[1:1 + len(array_keys(layout))]),
        rows=int(a.get("rows", 0)),
    )
    if node.op_type != ops.CONV:
        return spec
    spec.conv = ConvAttrs(tuple(a["kernel_shape"]), tuple(a.get("strides", (1, 1))),
                          tuple(a.get("pads", (0, 0, 0, 0))), tuple(a.get("dilations", (1, 1))))
    if "dw_kernel_shape" in a:
        spec.dw_before = bool(a.get("dw_before", 0))
        spec.depthwise = ConvAttrs(tuple(a["dw_kernel_shape"]), tuple(a["dw_strides"]),
                                   tuple(a["dw_pads"]), (1, 1),
                                   spec.in_features if spec.dw_before else spec.out_features)
        spec.dw_epilogue = steps("dw_")
    if "pj_layout" in a:
        pj_layout = dec(a["pj_layout"])
        at = 1 + len(spec.array_names) + spec.has_bias + spec.has_residual + 1 + spec.has_dw_bias
        spec.project = SparseOpSpec(
            ops.CONV, pj_layout, int(a["pj_out_features"]), spec.out_features,
            dec(a["pj_entry"]), steps("pj_"),
            list(node.input[at:at + len(array_keys(pj_layout))]), ConvAttrs((1, 1)))
    if "ln_layout" in a:  # a fused mean pool and linear (``passes/fuse_head.py``)
        ln_layout = dec(a["ln_layout"])
        at = 1 + len(spec.array_names) + spec.has_bias + spec.has_residual
        spec.head = SparseOpSpec(
            ops.LINEAR, ln_layout, int(a["ln_out_features"]), spec.out_features,
            dec(a["ln_entry"]), steps("ln_"), list(node.input[at:at + len(array_keys(ln_layout))]))
    return spec


def _normalize_constants(proto: onnx.ModelProto) -> None:
    """Constant(value_int/ints/float/floats) -> Constant(value=tensor): TVM's importer reads
    only the ``value`` form (torch.onnx.export without its optimizer emits the others)."""
    for node in proto.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in list(node.attribute):
            if attr.name == "value":
                continue
            val = onnx.helper.get_attribute_value(attr)
            dtype = {"value_int": np.int64, "value_ints": np.int64, "value_float": np.float32,
                     "value_floats": np.float32}.get(attr.name)
            if dtype is None:
                continue
            node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute(
                "value", numpy_helper.from_array(np.array(val, dtype=dtype))))


def _prepare(proto: onnx.ModelProto, target) -> dict[str, tuple[SparseOpSpec, dict]]:
    """Step 1: swap each sparse node's format arrays for its kernel's prepared arrays."""
    inits = {t.name: t for t in proto.graph.initializer}
    side: dict[str, tuple[SparseOpSpec, dict]] = {}
    drop: set[str] = set()
    added: list[onnx.TensorProto] = []
    for node in proto.graph.node:
        if node.domain != ops.DOMAIN:
            continue
        if not node.name or node.name in side:
            raise CompileError(f"codegen/tvm: sparse node needs a unique name, got '{node.name}'")
        spec = read_spec(node)
        arrays = {nm.rsplit(".", 1)[-1]: numpy_helper.to_array(inits[nm]) for nm in spec.array_names}
        fused_names = []  # a fused projection's or head's arrays, prepared with the node's
        for prefix, fused in (("pj_", spec.project), ("ln_", spec.head)):
            names = fused.array_names if fused else []
            arrays.update({prefix + nm.rsplit(".", 1)[-1]: numpy_helper.to_array(inits[nm])
                           for nm in names})
            fused_names += names
        try:
            prepared = kernel_for(spec).prepare(spec, arrays, target)
        except Exception as exc:
            if isinstance(exc, CompileError):
                raise
            raise CompileError(f"codegen/tvm prepare: node '{node.name}' ({spec.layout}): "
                               f"{exc}") from exc
        base = spec.array_names[0].rsplit(".", 1)[0] if spec.array_names else node.name
        new_names = []
        for key, arr in prepared.items():
            name = f"{base}.{key}"  # may reuse a packed array's name: the old one is dropped
            added.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
            new_names.append(name)
        drop.update(spec.array_names + fused_names)
        del node.attribute[:]  # read into `spec`; TVM's attr parser rejects empty lists
        x_name = node.input[0]
        rest = [n for n in node.input[1 + len(spec.array_names):] if n not in fused_names]
        del node.input[:]
        node.input.extend([x_name, *new_names, *rest])  # the projection's arrays are prepared
        spec.array_names = new_names
        side[node.name] = (spec, prepared)
    # Packed arrays are replaced by the prepared ones; a packed array another node still
    # reads would need both under one name, which never happens (each weight is packed for
    # exactly one node), so say so loudly rather than guess.
    replaced = {t.name for t in added}
    for t in proto.graph.initializer:
        if t.name in drop and t.name not in replaced and any(t.name in n.input for n in proto.graph.node):
            raise CompileError(f"codegen/tvm: packed array '{t.name}' is shared between nodes")
    keep = [t for t in proto.graph.initializer if t.name not in drop]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep + added)
    return side


class _Importer(tvm_onnx.ONNXGraphImporter):
    """TVM's importer, plus: ai.sparsec nodes become call_tir to our kernels, and float
    weights become parameters of ``main`` (named after their initializers)."""

    def __init__(self, side, target):
        super().__init__({}, "float32", keep_params_in_input=True, sanitize=True)
        self._side = side
        self._kernel_arrays = {n for spec, _ in side.values() for n in spec.array_names}
        self._target = target
        self._custom_kernels = 0

    def _parse_graph_initializers(self, graph):
        for init in graph.initializer:
            array = self._parse_array(init)
            big_float = (init.data_type == onnx.TensorProto.FLOAT
                         and int(np.prod(init.dims)) >= PARAM_MIN_ELEMS)
            if big_float or init.name in self._kernel_arrays:
                var = self._new_var(self._sanitize_name(init.name) if self._sanitize else init.name,
                                    shape=array.shape, dtype=array.dtype)
                self._nodes[init.name] = var
                self._params[init.name] = (var, array)
            else:
                self._nodes[init.name] = relax.const(array)

    def _check_for_unsupported_ops(self, graph):
        check_supported(onnx.ModelProto(graph=graph))

    def _convert_operator(self, op_name, inputs, attrs, opset):
        if op_name not in ops.OP_TYPES:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        node_name = attrs["tvm_custom"]["name"]
        spec, prepared = self._side[node_name]
        return self._emit_sparse(spec, prepared, inputs)

    def _emit_sparse(self, spec: SparseOpSpec, prepared: dict, inputs):
        bb = self.bb
        x = inputs[0]
        n = len(prepared)
        arrays = list(inputs[1:1 + n])
        extra = list(inputs[1 + n:])
        bias = extra.pop(0) if spec.has_bias else None
        residual = extra.pop(0) if spec.has_residual else None
        fused = extra  # dw_weight, dw_bias, the projection's bias and residual (when fused)
        in_shape = [int(d) for d in x.ty.shape]
        if spec.op_type == ops.LINEAR:
            rows = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
            out_shape = [*in_shape[:-1], spec.out_features]
            kernel_in = (rows, spec.in_features)
            kernel_out = [rows, spec.out_features]
            x2 = bb.emit(relax.op.reshape(x, kernel_in)) if list(kernel_in) != in_shape else x
        else:
            out_shape = _conv_out_shape(spec, in_shape)
            kernel_in, kernel_out, x2 = tuple(in_shape), out_shape, x
        args = [x2, *arrays]
        if bias is not None:
            args.append(bias)
        if residual is not None:
            args.append(bb.emit(relax.op.reshape(residual, kernel_out))
                        if list(kernel_out) != out_shape else residual)
        args += fused
        try:
            func = kernel_for(spec).build(spec, kernel_in, prepared, self._target, None)
        except Exception as exc:
            if isinstance(exc, CompileError):
                raise
            raise CompileError(f"codegen/tvm kernel: node '{spec.entry}' ({spec.layout}): "
                               f"{exc}") from exc
        if "global_symbol" in (func.attrs or {}):
            func = func.without_attr("global_symbol")  # named by the module, uniquely
        gv = bb.add_func(func, f"sparsec_{_ident(spec.entry)}_{spec.layout.replace(':', '_')}")
        self._custom_kernels += 1
        y = bb.emit(relax.call_tir(gv, args, relax.TensorType(kernel_out, "float32")))
        if list(kernel_out) != out_shape:
            y = bb.emit(relax.op.reshape(y, out_shape))
        return y


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:48]


def _conv_out_shape(spec: SparseOpSpec, in_shape: list[int]) -> list[int]:
    n, _, h, w = in_shape
    if spec.head is not None:
        return [n, spec.head.out_features]
    out = spec.project.out_features if spec.project else spec.out_features
    for conv in (spec.conv, spec.depthwise):
        if conv is None:
            continue
        (kh, kw), (sh, sw) = conv.kernel_shape, conv.strides
        (pt, pl, pb, pr), (dh, dw) = conv.pads, conv.dilations
        h = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        w = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return [n, out, h, w]


def build(model: ir.Model, target, pipeline, extra_outputs: tuple[str, ...] = ()) -> Built:
    """Compile ``model`` (already rewritten by the passes) for a TVM ``target``."""
    proto = ir.to_proto(model)
    if extra_outputs:
        have = {o.name for o in proto.graph.output}
        infos = {v.name: v for v in proto.graph.value_info}
        for name in extra_outputs:
            if name not in have:
                proto.graph.output.append(infos.get(name) or onnx.helper.make_empty_tensor_value_info(name))
    _normalize_constants(proto)
    side = _prepare(proto, target)
    importer = _Importer(side, target)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        mod = importer.from_onnx(proto.graph, opset)
    mod = relax.transform.FoldConstant()(mod)
    func = mod["main"]
    n_in = int(func.attrs["num_input"])
    params = {name: arr.numpy() for name, (var, arr) in importer._params.items()}
    param_order = [str(p.name) for p in func.params[n_in:]]
    by_var = {str(var.name): name for name, (var, _) in importer._params.items()}
    ordered = {by_var[v]: params[by_var[v]] for v in param_order}
    mod["main"] = func.without_attr("params")
    planned: list = []
    with tvm.transform.PassContext(opt_level=3):
        steps = tvm.transform.Sequential([pipeline(target, planned.append), unaligned_params_pass])
        # The VM's instructions compiled to native code rather than interpreted:
        # GPT-2's decode step (~650 VM calls) 1.03x, MobileNetV2-96 1.02x.
        ex = relax.build(mod, target, relax_pipeline=steps, exec_mode="compiled",
                         tir_pipeline=stack_locals.PIPELINE)
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    outputs = [o.name for o in proto.graph.output]
    fresh = fresh_outputs(planned[-1]) if planned else []
    if len(fresh) != len(outputs):
        fresh = [False] * len(outputs)
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    align = [onnx.helper.tensor_dtype_to_np_dtype(types[n]).itemsize for n in inputs]
    return Built(ex, inputs, outputs, ordered, fresh, align)
