"""Helpers shared by the pass tests, handed out through the ``tools`` fixture.

- ``model(nodes, inputs, outputs, inits, opset)``: an onnx_ir model built with onnx.helper;
- ``ort(model, feeds)``: onnxruntime outputs of a standard-ONNX model (by output name);
- ``evaluate(model, feeds)``: every value of a model that may hold ai.sparsec nodes: those
  are computed by a numpy reference (weights recovered with ``sparsec.formats.unpack``,
  epilogue by ``sparsec.ops.apply_epilogue``), every other node by onnxruntime alone;
- ``verify_each``: an ``on_step`` callback running the IR/Plan verifier after every pass.

(``--import-mode=importlib`` keeps test directories off sys.path, hence a fixture.)
"""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort_
import pytest
from onnx import TensorProto, helper

from sparsec import ops
from sparsec.formats import Packed, pack, unpack
from sparsec.layouts import parse_layout
from sparsec.passes.invariants import verify
from sparsec.plan import Plan

RTOL = ATOL = 1e-4
OPSET = 17


def model(nodes, inputs: dict[str, tuple[int, ...]], outputs: list[str],
          inits: dict[str, np.ndarray], opset: int = OPSET) -> ir.Model:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(s)) for k, s in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outputs],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def _session(proto: onnx.ModelProto) -> ort_.InferenceSession:
    so = ort_.SessionOptions()
    so.graph_optimization_level = ort_.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort_.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort(m: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    proto = ir.serde.serialize_model(m)
    sess = _session(proto)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _array_keys(layout: str) -> list[str]:
    lay = parse_layout(layout)
    r, c = lay.params if lay.kind == "bsr" else (1, lay.params[1] if lay.kind == "nm" else 1)
    return list(pack(np.zeros((r, c), np.float32), lay).arrays)


def sparse_weight(node: ir.Node, values: dict[str, np.ndarray]) -> np.ndarray:
    """The dense [out, in] weight of an ai.sparsec node, unpacked from its format arrays."""
    layout = node.attributes.get_string("layout")
    keys = _array_keys(layout)
    arrays = {k: values[v.name] for k, v in zip(keys, node.inputs[1:1 + len(keys)])}
    shape = (node.attributes.get_int("out_features"), node.attributes.get_int("in_features"))
    return unpack(Packed(layout, shape, arrays))


def _conv2d(x: np.ndarray, w2d: np.ndarray, node: ir.Node) -> np.ndarray:
    kh, kw = node.attributes.get_ints("kernel_shape")
    sh, sw = node.attributes.get_ints("strides")
    dh, dw = node.attributes.get_ints("dilations")
    pt, pl, pb, pr = node.attributes.get_ints("pads")
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((n, c, kh, kw, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw]
    out = np.einsum("ok,nkp->nop", w2d.astype(np.float64), cols.reshape(n, c * kh * kw, -1))
    return out.reshape(n, -1, oh, ow)


def sparse_reference(node: ir.Node, values: dict[str, np.ndarray]) -> np.ndarray:
    w = sparse_weight(node, values)
    steps = ops.epilogue_from_attrs(
        list(node.attributes.get_strings("epilogue")),
        node.attributes.get_float("clip_min", None), node.attributes.get_float("clip_max", None))
    rest = [values[v.name] for v in node.inputs[1 + len(_array_keys(
        node.attributes.get_string("layout"))):]]
    bias = rest.pop(0) if any(s.op == "bias" for s in steps) else None
    residual = rest.pop(0) if any(s.op == "residual" for s in steps) else None
    x = values[node.inputs[0].name]
    if node.op_type == ops.LINEAR:
        acc = x.astype(np.float64) @ w.T.astype(np.float64)
        return ops.apply_epilogue(acc, steps, bias, residual, channel_axis=-1)
    if node.attributes.get_ints("dw_kernel_shape", None) is None:
        y = ops.apply_epilogue(_conv2d(x, w, node), steps, bias, residual, channel_axis=1)
        return y if node.attributes.get_string("pool", None) is None else _head(node, y, rest)
    dw_steps = ops.epilogue_from_attrs(
        list(node.attributes.get_strings("dw_epilogue")),
        node.attributes.get_float("dw_clip_min", None),
        node.attributes.get_float("dw_clip_max", None))
    dw_w = rest.pop(0)
    dw_bias = rest.pop(0) if any(s.op == "bias" for s in dw_steps) else None
    if node.attributes.get_int("dw_before", 0):
        x = ops.apply_epilogue(_depthwise(x, dw_w, node), dw_steps, dw_bias, channel_axis=1)
        return ops.apply_epilogue(_conv2d(x, w, node), steps, bias, residual, channel_axis=1)
    y = ops.apply_epilogue(_conv2d(x, w, node), steps, bias, residual, channel_axis=1)
    y = ops.apply_epilogue(_depthwise(y, dw_w, node), dw_steps, dw_bias, channel_axis=1)
    pj_layout = node.attributes.get_string("pj_layout", None)
    if pj_layout is None:
        return y
    a = node.attributes
    keys = _array_keys(pj_layout)
    packed = {k: rest.pop(0) for k in keys}
    w_pj = unpack(Packed(pj_layout, (a.get_int("pj_out_features"), y.shape[1]), packed))
    pj_steps = ops.epilogue_from_attrs(list(a.get_strings("pj_epilogue")),
                                       a.get_float("pj_clip_min", None),
                                       a.get_float("pj_clip_max", None))
    pj_bias = rest.pop(0) if any(s.op == "bias" for s in pj_steps) else None
    pj_res = rest.pop(0) if any(s.op == "residual" for s in pj_steps) else None
    acc = np.einsum("oc,nchw->nohw", w_pj.astype(np.float64), y.astype(np.float64))
    return ops.apply_epilogue(acc, pj_steps, pj_bias, pj_res, channel_axis=1)


def _head(node: ir.Node, y: np.ndarray, rest: list[np.ndarray]) -> np.ndarray:
    """A fused head (``passes/fuse_head.py``): the mean over H and W, then the linear."""
    a = node.attributes
    layout = a.get_string("ln_layout")
    packed = {k: rest.pop(0) for k in _array_keys(layout)}
    w = unpack(Packed(layout, (a.get_int("ln_out_features"), y.shape[1]), packed))
    steps = ops.epilogue_from_attrs(list(a.get_strings("ln_epilogue")),
                                    a.get_float("ln_clip_min", None),
                                    a.get_float("ln_clip_max", None))
    bias = rest.pop(0) if any(s.op == "bias" for s in steps) else None
    acc = y.astype(np.float64).mean(axis=(2, 3)) @ w.T.astype(np.float64)
    return ops.apply_epilogue(acc, steps, bias, channel_axis=-1)


def _depthwise(x: np.ndarray, w: np.ndarray, node: ir.Node) -> np.ndarray:
    """conv2d with group = channels, per the node's dw_* attributes."""
    kh, kw = node.attributes.get_ints("dw_kernel_shape")
    sh, sw = node.attributes.get_ints("dw_strides")
    pt, pl, pb, pr = node.attributes.get_ints("dw_pads")
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh, ow = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] * w[None, :, 0, i, j, None, None]
    return out


def _single_node(node: ir.Node, values: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    ins = [v for v in node.inputs if v is not None]
    proto_node = ir.serde.serialize_node(node)
    graph = helper.make_graph(
        [proto_node], "one",
        [helper.make_tensor_value_info(v.name, helper.np_dtype_to_tensor_dtype(
            values[v.name].dtype), values[v.name].shape) for v in dict.fromkeys(ins)],
        [onnx.ValueInfoProto(name=o.name)
         for o in node.outputs if o.name])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    sess = _session(proto)
    return sess.run(None, {v.name: values[v.name] for v in dict.fromkeys(ins)})


def evaluate(m: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every named value of ``m`` (sparsec nodes by the numpy reference, others by ORT)."""
    values = {k: np.asarray(v) for k, v in feeds.items()}
    values.update({k: v.const_value.numpy() for k, v in m.graph.initializers.items()})
    opset = m.opset_imports.get("", OPSET)
    for node in m.graph:
        if node.domain == ops.DOMAIN:
            outs = [sparse_reference(node, values)]
        else:
            outs = _single_node(node, values, opset)
        for o, a in zip(node.outputs, outs):
            values[o.name] = a
    return values


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def verify_each(name: str, m: ir.Model, plan: Plan) -> None:
    verify(m, plan)


def sparse_nodes(m: ir.Model) -> list[ir.Node]:
    return [n for n in m.graph if n.domain == ops.DOMAIN]


def op_types(m: ir.Model) -> list[str]:
    return [n.op_type for n in m.graph]


@pytest.fixture
def tools() -> ModuleType:
    return sys.modules[__name__]
