"""torch front door: nn.Module / ExportedProgram / .pt2 -> torch.export -> ONNX -> onnx_ir.

``torch.onnx.export(exported_program, dynamo=True)`` keeps PyTorch parameter names on the
initializers (``fc1.weight``), so reports read like the user's code. Verification later
compares against the exported program's module (torch), not against onnxruntime.

A module whose weights are computed (``torch.nn.utils.prune`` masks: ``weight = weight_orig *
weight_mask`` in a pre-hook; ``torch.nn.utils.parametrize`` parametrizations such as the
``FakeSparsity`` of ``torch.ao.pruning``) is captured from a copy in which those weights are
plain parameters again (``materialize``), so they are constants with their own names.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from sparsec.errors import CaptureError, ModelError, UsageError


@contextlib.contextmanager
def _quiet():
    """torch.export / torch.onnx print progress and warnings we don't want on the user's
    terminal; errors still propagate."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _exported_program(source: Any, example_inputs: tuple | None):
    import torch

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ModelError(f"program file '{path}' does not exist")
        try:
            return torch.export.load(str(path)), path.name
        except Exception as exc:  # noqa: BLE001 - any failure here means a bad file
            raise ModelError(f"'{path.name}' is not a loadable torch.export .pt2 file: "
                             f"{_first_line(exc)}") from None
    if isinstance(source, torch.export.ExportedProgram):
        return source, "exported_program"
    if isinstance(source, torch.nn.Module):
        if example_inputs is None:
            raise UsageError(
                f"compiling a torch module ({type(source).__name__}) needs example_inputs=(...) "
                "with tensors of the shapes to compile for"
            )
        if not isinstance(example_inputs, tuple):
            example_inputs = (example_inputs,)
        name = type(source).__name__
        if has_computed_weights(source):
            source = materialize(source)
        try:
            return torch.export.export(source.eval(), example_inputs), name
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds
            raise CaptureError(
                f"torch.export could not capture {type(source).__name__}: {_first_line(exc)}"
            ) from None
    raise UsageError(f"cannot compile a {type(source).__name__} from torch")


def has_computed_weights(module) -> bool:
    """True when some submodule carries a ``torch.nn.utils.prune`` mask hook or a
    ``torch.nn.utils.parametrize`` parametrization."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.prune import BasePruningMethod

    return any(
        parametrize.is_parametrized(m)
        or any(isinstance(h, BasePruningMethod) for h in m._forward_pre_hooks.values())
        for m in module.modules()
    )


def materialize(module):
    """A deep copy of ``module`` whose computed weights are plain parameters again:

    - ``torch.nn.utils.prune``: ``weight_orig * weight_mask -> weight`` (``prune.remove``);
    - ``torch.nn.utils.parametrize`` (``torch.ao.pruning``'s ``FakeSparsity``, weight norm...):
      ``parametrizations.weight.original -> weight`` with the parametrized value kept.

    Parameter names come back to ``<module>.weight``. ``module`` itself is not touched."""
    import copy

    import torch
    from torch.nn.utils import parametrize
    from torch.nn.utils import prune as torch_prune

    # A prune hook leaves its last result as a plain, non-leaf attribute (``m.weight``), which
    # deepcopy refuses; the copy gets a detached clone (prune.remove replaces it anyway).
    memo: dict[int, object] = {}
    for m in module.modules():
        for h in m._forward_pre_hooks.values():
            if not isinstance(h, torch_prune.BasePruningMethod):
                continue
            t = getattr(m, h._tensor_name, None)
            if isinstance(t, torch.Tensor) and not t.is_leaf:
                memo[id(t)] = t.detach().clone()
    out = copy.deepcopy(module, memo)
    with torch.no_grad():
        for m in out.modules():
            hooks = [h for h in m._forward_pre_hooks.values()
                     if isinstance(h, torch_prune.BasePruningMethod)]
            for hook in hooks:
                torch_prune.remove(m, hook._tensor_name)
            if parametrize.is_parametrized(m):
                # deepcopy shares the injected Parametrized<Class> with the original, and
                # removal deletes its property from that class: give the copy its own class.
                cls = type(m)
                own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
                m.__class__ = type(cls.__name__, cls.__bases__, own)
                for name in list(m.parametrizations.keys()):
                    parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return out


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def capture(source: Any, example_inputs: tuple | None, input_shapes: dict):
    import onnx_ir as ir
    import torch

    from sparsec.frontend import Captured
    from sparsec.frontend.onnx_loader import load_onnx

    with _quiet():
        ep, name = _exported_program(source, example_inputs)
        try:
            program = torch.onnx.export(ep, dynamo=True, verbose=False, optimize=True)
        except Exception as exc:  # noqa: BLE001
            raise CaptureError(f"torch.onnx.export could not convert {name}: "
                               f"{_first_line(exc)}") from None
    _restore_parameter_names(program.model, ep)
    proto = ir.to_proto(program.model)
    loaded = load_onnx(proto, input_shapes)
    reference = ep.module()
    return Captured(model=loaded.model, name=name, reference=reference, kind="torch",
                    onnx_proto=loaded.onnx_proto)


def _restore_parameter_names(model, ep) -> int:
    """Give folded weights their PyTorch names back.

    The exporter's optimizer folds ``Transpose(fc1.weight)`` into a new constant named
    ``val_N``; reports should say ``fc1.weight``. An initializer whose name is not a
    parameter is matched, by shape and value, with a parameter stored as is or transposed
    (2-D), and renamed ``<param>`` (as is) or ``<param>.T`` (transposed)."""
    import numpy as np

    params = {k: v.detach().cpu().numpy() for k, v in ep.state_dict.items()}
    by_shape: dict[tuple, list[str]] = {}
    for name, arr in params.items():
        by_shape.setdefault(arr.shape, []).append(name)
    taken = set(model.graph.initializers)
    renamed = 0
    for init in list(model.graph.initializers.values()):
        if init.name in params or init.const_value is None:
            continue
        arr = init.const_value.numpy()
        found = None
        for name in by_shape.get(arr.shape, []):
            if np.array_equal(params[name], arr):
                found = name
                break
        if found is None and arr.ndim == 2:
            for name in by_shape.get(arr.shape[::-1], []):
                if np.array_equal(params[name].T, arr):
                    found = f"{name}.T"
                    break
        if found is not None and found not in taken:
            taken.add(found)
            init.name = found
            renamed += 1
    _name_weight_nodes(model, params)
    return renamed


def _name_weight_nodes(model, params) -> None:
    """``node_MatMul_31`` -> ``attn.out``: a MatMul/Gemm/Conv reading a parameter is named
    after the module that owns it, so reports and ``--layout attn.out=csr`` read well."""
    used = {n.name for n in model.graph}
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if w is None or w.name is None:
            continue
        base = w.name.removesuffix(".T")
        if base not in params:
            continue
        owner = base.removesuffix(".weight")
        if owner and owner not in used:
            used.discard(node.name)
            node.name = owner
            used.add(owner)
