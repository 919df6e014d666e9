"""A torch export in the form DeepSparse 1.8 loads (``to_deepsparse``): its onnxruntime
reads IR version 9 and opset 17 at most, its compiler asserts on tensors above rank 4.
Every rewrite keeps the graph's values (tests/benchmarks/test_models_report.py runs both
through onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEEPSPARSE_MAX_IR = 9  # what the onnxruntime inside DeepSparse 1.8 reads; torch writes 10
DEEPSPARSE_OPSET = 17  # torch exports opset 20; DeepSparse 1.8 refuses anything past 19


def decompose_gelu(model) -> int:
    """Rewrite opset 20's ``Gelu`` nodes of ``model`` (an onnx ModelProto, in place) into the
    opset-13 ops they are defined by: ``0.5·x·(1 + erf(x/√2))``, or for ``approximate="tanh"``
    ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph, nodes, count = model.graph, [], 0
    for node in graph.node:
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        approx = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
        x, (y,), p = node.input[0], node.output, f"{node.name or 'gelu'}_{count}_"

        def const(name, value):
            graph.initializer.append(numpy_helper.from_array(
                np.array(value, np.float32), p + name))
            return p + name

        def op(kind, *inputs, out=None):
            nodes.append(helper.make_node(kind, list(inputs), [out or p + kind + str(len(nodes))]))
            return nodes[-1].output[0]

        if approx == "tanh":
            cube = op("Mul", x, op("Mul", x, x))
            inner = op("Add", x, op("Mul", cube, const("c", 0.044715)))
            t = op("Tanh", op("Mul", inner, const("s", float(np.sqrt(2 / np.pi)))))
        else:
            t = op("Erf", op("Mul", x, const("r", float(1 / np.sqrt(2)))))
        op("Mul", op("Mul", x, const("h", 0.5)), op("Add", t, const("one", 1.0)), out=y)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def split_to_slices(model) -> int:
    """Rewrite ``Split`` nodes of ``model`` (in place) into one ``Slice`` per output: onnx's
    version converter has no adapter taking opset 18's Split (``num_outputs``) down to 17.
    The split axis's length comes from shape inference; returns how many were rewritten.
    Raises ValueError when it is not static."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(n.op_type == "Split" for n in graph.node):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = dims.get(node.input[0])
        axis = int(attrs.get("axis", 0))
        length = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in consts:
                raise ValueError(f"Split {node.name!r} has computed split sizes")
            sizes = [int(v) for v in consts[node.input[1]]]
        elif length is None:
            raise ValueError(f"Split {node.name!r} splits an axis of unknown length")
        else:
            parts = int(attrs.get("num_outputs", len(node.output)))
            step = -(-length // parts)
            sizes = [min(step, length - i * step) for i in range(parts)]
        start = 0
        for i, (out, size) in enumerate(zip(node.output, sizes)):
            names = []
            for tag, value in (("starts", start), ("ends", start + size), ("axes", axis)):
                names.append(f"{node.name or 'split'}_{count}_{i}_{tag}")
                graph.initializer.append(numpy_helper.from_array(
                    np.array([value], np.int64), names[-1]))
            nodes.append(helper.make_node("Slice", [node.input[0], *names], [out]))
            start += size
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


DEEPSPARSE_MAX_RANK = 4  # GPT-2's stacked 6-D KV cache made DeepSparse's compiler assert


def unstack_io(model, feeds: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
    """Rewrite ``model`` (in place) so that no graph input or output has a rank above
    ``DEEPSPARSE_MAX_RANK``: an input read only as ``Squeeze(Slice(x, [i, i+1], axis 0))``
    or ``Gather(x, i)`` becomes one input per index (named as that node's output), an
    output built as ``Concat(Unsqueeze(a), Unsqueeze(b), ...)`` along axis 0 becomes the
    outputs a, b, ...
    (GPT-2's KV cache: [layers, 2, batch, heads, seq, dim]). Returns how many tensors were
    split and the feeds for the new inputs."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v for v in [*inferred.value_info, *inferred.output, *inferred.input]}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    made = {n.output[0]: n for n in graph.node if n.output}

    def const(name):
        return [int(v) for v in np.atleast_1d(consts[name])] if name in consts else None

    def index_of(slice_node):
        """(i, node giving x[i]) when the node reads index i of axis 0: a Gather of a scalar
        constant, or a Slice of [i, i+1) (step 1) read only by a Squeeze of axis 0; else
        None."""
        if slice_node.op_type == "Gather":
            axis = [onnx.helper.get_attribute_value(a) for a in slice_node.attribute
                    if a.name == "axis"] or [0]
            index = consts.get(slice_node.input[1])
            if axis == [0] and index is not None and index.ndim == 0:
                return int(index), slice_node
            return None
        ins = list(slice_node.input) + [""] * 5
        starts, ends, axes = const(ins[1]), const(ins[2]), const(ins[3]) if ins[3] else [0]
        steps = const(ins[4]) if ins[4] else [1]
        after = users.get(slice_node.output[0], [])
        if None in (starts, ends, axes, steps) or axes != [0] or steps != [1] \
                or len(starts) != 1 or ends[0] != starts[0] + 1 or len(after) != 1:
            return None
        sq = after[0]
        if sq.op_type != "Squeeze" or len(sq.input) < 2 or const(sq.input[1]) != [0]:
            return None
        return starts[0], sq

    split, new_feeds, drop, new_inputs = 0, {}, set(), []

    def peel(name, value, info):
        nonlocal split
        uses = [index_of(n) if n.op_type in ("Slice", "Gather") else None
                for n in users.get(name, [])]
        if value.ndim <= DEEPSPARSE_MAX_RANK or not uses or None in uses:
            new_inputs.append(onnx.helper.make_tensor_value_info(
                name, info.type.tensor_type.elem_type, list(value.shape)))
            new_feeds[name] = value
            return
        split += 1
        for (i, sq), sl in zip(uses, users[name]):
            drop.update({id(sl), id(sq)})
            peel(sq.output[0], np.ascontiguousarray(value[i]), info)

    for inp in list(graph.input):
        if inp.name in feeds:
            peel(inp.name, feeds[inp.name], inp)
    outputs = []

    def unstack(name):
        nonlocal split
        node = made.get(name)
        rank = len(types[name].type.tensor_type.shape.dim) if name in types else 0
        parts = [made.get(i) for i in node.input] if node is not None else []
        if (rank <= DEEPSPARSE_MAX_RANK or node.op_type != "Concat"
                or onnx.helper.get_attribute_value(node.attribute[0]) != 0
                or not all(p is not None and p.op_type == "Unsqueeze"
                           and const(p.input[1]) == [0] for p in parts)):
            outputs.append(types.get(name) or onnx.helper.make_empty_tensor_value_info(name))
            return
        split += 1
        for p in parts:
            unstack(p.input[0])

    for out in list(graph.output):
        unstack(out.name)
    if not split:
        return 0, feeds
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)
    del graph.input[:]
    graph.input.extend(new_inputs)
    del graph.output[:]
    graph.output.extend(outputs)
    _drop_dead_nodes(graph)
    return split, new_feeds


def _drop_dead_nodes(graph) -> None:
    """Remove the nodes no graph output depends on, and the initializers no node reads."""
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def to_deepsparse(model, feeds: dict[str, np.ndarray] | None = None):
    """(model, feeds) in a form DeepSparse 1.8 loads: IR version 9 and opset 17 (onnx's
    version converter). torch exports GELU as opset 20's ``Gelu``, which has no earlier
    version: it is decomposed into the ops that define it (``decompose_gelu``), and Split,
    which the converter cannot take below opset 18, becomes Slices (``split_to_slices``).
    With ``feeds``, inputs and outputs above rank 4 are unstacked too (``unstack_io``).
    ``model`` is rewritten in place where it can be; use the one returned. Raises
    ValueError when the graph has no opset-17 form."""
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > DEEPSPARSE_OPSET:
        decompose_gelu(model)
        split_to_slices(model)
        try:
            model = version_converter.convert_version(model, DEEPSPARSE_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ValueError(f"no opset-{DEEPSPARSE_OPSET} form of the model: "
                             f"{str(exc).splitlines()[-1]}") from None
        for node in model.graph.node:  # the converter keeps opset 18's default attribute
            if node.op_type.startswith("Reduce"):
                keep = [a for a in node.attribute
                        if not (a.name == "noop_with_empty_axes" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(keep)
    model.ir_version = min(model.ir_version, DEEPSPARSE_MAX_IR)
    if feeds is not None:
        feeds = unstack_io(model, feeds)[1]
    return model, feeds


def for_deepsparse(onnx_path: Path) -> Path:
    """``onnx_path``, or a copy beside it in the form ``to_deepsparse`` makes (without
    feeds: inputs and outputs as they are)."""
    import onnx

    model = onnx.load(str(onnx_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if model.ir_version <= DEEPSPARSE_MAX_IR and opset <= DEEPSPARSE_OPSET:
        return onnx_path
    out = onnx_path.with_name(onnx_path.stem + "-deepsparse.onnx")
    onnx.save(to_deepsparse(model)[0], str(out))
    return out
