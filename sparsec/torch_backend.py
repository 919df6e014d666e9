"""``torch.compile(model, backend="sparsec")``: Dynamo hands over an FX graph, sparsec compiles it.

Dynamo passes a module's parameters and buffers to the graph as inputs. ``sparsec_backend``
binds them back as constants of a small wrapper module, named after their module path
(``L['self']._modules['fc1']._parameters['weight'] -> fc1.weight``), and compiles the wrapper
with ``sparsec.compile(wrapper, example_inputs=<the real inputs>)`` (torch.export -> ONNX ->
passes -> TVM, verified against torch). The callable it returns feeds only the real inputs
and rebuilds Dynamo's output structure from the compiled outputs:

    gm(p_1, x, p_2, ...) -> compiled(x)   when p_i are the parameters seen at compile time

It is for inference: outputs carry no autograd graph. Options for ``sparsec.compile`` ride
in ``torch.compile(..., options={"target": "cpu", "layout": "csr"})``.

sparsec compiles static shapes. When Dynamo hands over a dynamic graph (it saw a second
batch size), each concrete shape is compiled at its first call and cached.

When anything fails (a graph torch.export or sparsec cannot take, a failed verification),
a ``SparsecWarning`` says why and the graph runs eagerly (``gm.forward``); so does a call
after a bound parameter was changed in place or replaced.
Registered as the ``sparsec`` backend through the ``torch_dynamo_backends`` entry point.
"""

from __future__ import annotations

import operator
import re
import warnings
from typing import Any

from sparsec.errors import SparsecWarning, UsageError


def sparsec_backend(gm, example_inputs, *, options: dict[str, Any] | None = None):
    """Dynamo backend: a callable running ``gm`` through sparsec, or ``gm.forward``."""
    try:
        return _compile(gm, list(example_inputs), dict(options or {}))
    except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly, and say why
        warnings.warn(f"torch.compile backend sparsec: {_reason(exc)}; running this graph "
                      "eagerly", SparsecWarning, stacklevel=2)
        return gm.forward


def _reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


# --- which inputs are constants, and their names ---------------------------------------------

_PATH_PART = re.compile(r"_(?:modules|parameters|buffers)\['([^']*)'\]")


def _source_name(node) -> str:
    arg = node.meta.get("grapharg")
    source = getattr(arg, "source", None)
    if source is None:
        return ""
    name = source.name
    return name() if callable(name) else str(name)


def _constant_name(node, tensor) -> str | None:
    """``fc1.weight`` for a parameter or buffer placeholder, None for a real input."""
    import torch

    src = _source_name(node)
    is_state = "._parameters[" in src or "._buffers[" in src
    if not is_state and not isinstance(tensor, torch.nn.Parameter):
        return None
    parts = _PATH_PART.findall(src)
    return ".".join(parts) if parts else node.name


class _Bound:
    """Placeholders split into constants (index, dotted name, tensor), real tensor inputs
    and size symbols (the ints of a graph Dynamo made dynamic)."""

    def __init__(self, gm, example_inputs: list) -> None:
        import torch

        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise UsageError(f"{len(placeholders)} graph inputs but {len(example_inputs)} examples")
        self.constants: list[tuple[int, str, Any]] = []
        self.inputs: list[int] = []
        self.symbols: list[int] = []
        self.dynamic = False
        taken: set[str] = set()
        for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(value, (int, torch.SymInt)):
                self.symbols.append(i)
                self.dynamic = True
                continue
            if not isinstance(value, torch.Tensor):
                raise UsageError(f"graph input {node.name} is a {type(value).__name__}")
            if value.device.type != "cpu":
                raise UsageError(f"graph input {node.name} is on {value.device}, not the CPU")
            name = _constant_name(node, value)
            if name is None:
                self.inputs.append(i)
                example = node.meta.get("example_value")
                if example is not None and any(isinstance(d, torch.SymInt) for d in example.shape):
                    self.dynamic = True
                continue
            while name in taken:
                name += "_"
            taken.add(name)
            self.constants.append((i, name, value))
        self.versions = [t._version for _, _, t in self.constants]

    def unchanged(self, args) -> bool:
        """The bound constants are still the very tensors, unmodified, that were compiled."""
        return all(args[i] is t and t._version == v
                   for (i, _, t), v in zip(self.constants, self.versions))

    def shape_key(self, args) -> tuple:
        return (tuple(tuple(args[i].shape) for i in self.inputs)
                + tuple(int(args[i]) for i in self.symbols))


def _wrapper(gm, bound: _Bound, symbols: dict[int, int]):
    """An nn.Module holding the constants under their names; ``forward(*real_inputs)``
    calls ``gm`` with every placeholder in its place (size symbols fixed to ``symbols``)."""
    import torch

    n_args = len(bound.inputs) + len(bound.constants) + len(bound.symbols)
    getters = []

    class Wrapper(torch.nn.Module):
        def forward(self, *xs):
            args: list[Any] = [None] * n_args
            for i, x in zip(bound.inputs, xs):
                args[i] = x
            for (i, _, _), get in zip(bound.constants, getters):
                args[i] = get(self)
            for i, v in symbols.items():
                args[i] = v
            return gm(*args)

    wrapper = Wrapper()
    for _, name, tensor in bound.constants:
        owner = wrapper
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        data = tensor.detach()
        if isinstance(tensor, torch.nn.Parameter):
            owner.register_parameter(leaf, torch.nn.Parameter(data, requires_grad=False))
        else:
            owner.register_buffer(leaf, data)
        getters.append(operator.attrgetter(name))
    return wrapper


def _output_spec(gm):
    import torch
    from torch.utils import _pytree as pytree

    output = next(n for n in gm.graph.nodes if n.op == "output")
    leaves, spec = pytree.tree_flatten(output.args[0])
    if not all(isinstance(leaf, torch.fx.Node) for leaf in leaves):
        raise UsageError("the graph returns non-tensor values")
    return len(leaves), spec


def _specialize(gm, bound: _Bound, args, options: dict[str, Any], n_out: int):
    """sparsec.compile of ``gm`` for the shapes of ``args`` (the graph's own arguments)."""
    import sparsec

    symbols = {i: int(args[i]) for i in bound.symbols}
    real = tuple(args[i] for i in bound.inputs)
    cm = sparsec.compile(_wrapper(gm, bound, symbols), example_inputs=real, **options)
    if len(cm.outputs) != n_out:
        raise UsageError(f"the compiled model has {len(cm.outputs)} outputs, the graph {n_out}")
    return cm


def _compile(gm, example_inputs: list, options: dict[str, Any]):
    """Static graph: compile now. Dynamic graph (Dynamo saw several shapes): compile once
    per concrete shape, at its first call; a shape that fails runs eagerly."""
    import torch
    from torch.utils import _pytree as pytree

    bound = _Bound(gm, example_inputs)
    n_out, spec = _output_spec(gm)
    cache: dict[tuple, Any] = {}
    if not bound.dynamic:
        cache[bound.shape_key(example_inputs)] = _specialize(gm, bound, example_inputs,
                                                             options, n_out)
    warned: set[str] = set()

    def warn_once(key: str, message: str) -> None:
        if key not in warned:
            warned.add(key)
            warnings.warn(f"torch.compile backend sparsec: {message}", SparsecWarning,
                          stacklevel=3)

    def run(*args):
        if not bound.unchanged(args):
            warn_once("changed", "a parameter changed since it was compiled; running this "
                      "graph eagerly (call torch._dynamo.reset() and compile again)")
            return gm(*args)
        key = bound.shape_key(args)
        if key not in cache:
            try:
                cache[key] = _specialize(gm, bound, args, options, n_out)
            except Exception as exc:  # noqa: BLE001 - as in sparsec_backend
                cache[key] = None
                warn_once(repr(key), f"{_reason(exc)}; running this graph eagerly for "
                          f"shapes {list(key)}")
        cm = cache[key]
        if cm is None:
            return gm(*args)
        outs = cm.run(*(args[i] for i in bound.inputs))
        return pytree.tree_unflatten([torch.from_numpy(o) for o in outs], spec)

    run.compiled_models = cache  # for inspection: {input shapes: CompiledModel or None}
    return run
