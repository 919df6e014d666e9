"""torch front door: nn.Module / ExportedProgram / .pt2 -> torch.export -> ONNX -> onnx_ir.

``torch.onnx.export(exported_program, dynamo=True)`` keeps PyTorch parameter names on the
initializers (``fc1.weight``), so reports read like the user's code. Verification later
compares against the exported program's module (torch), not against onnxruntime.
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
        try:
            return torch.export.export(source.eval(), example_inputs), type(source).__name__
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds
            raise CaptureError(
                f"torch.export could not capture {type(source).__name__}: {_first_line(exc)}"
            ) from None
    raise UsageError(f"cannot compile a {type(source).__name__} from torch")


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
    proto = ir.to_proto(program.model)
    loaded = load_onnx(proto, input_shapes)
    reference = ep.module()
    return Captured(model=loaded.model, name=name, reference=reference, kind="torch",
                    onnx_proto=loaded.onnx_proto)
