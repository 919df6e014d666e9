"""Capture: every front door ends in one validated ``onnx_ir.Model`` with concrete shapes.

``load(source, input_shapes, example_inputs)`` dispatches on what it is given:
ONNX path / bytes / ``onnx.ModelProto`` / ``onnx_ir.Model`` (``onnx_loader``), or a torch
``nn.Module`` / ``ExportedProgram`` / ``.pt2`` path (``torch_capture``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir


@dataclass
class Captured:
    model: ir.Model
    name: str  # for reports: file name or module class name
    reference: Any  # what verification compares against: an onnx.ModelProto or a torch callable
    kind: str  # "onnx" | "torch"
    onnx_proto: Any = None  # the captured graph before any pass (onnxruntime can run it)


def is_torch_source(source: Any) -> bool:
    if isinstance(source, (str, Path)):
        return str(source).endswith(".pt2")
    torch = sys.modules.get("torch")  # a torch object implies torch is already imported
    if torch is None:
        return False
    return isinstance(source, (torch.nn.Module, torch.export.ExportedProgram))


def load(
    source: Any,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    example_inputs: tuple | None = None,
) -> Captured:
    if is_torch_source(source):
        from sparsec.frontend.torch_capture import capture

        return capture(source, example_inputs, input_shapes or {})
    from sparsec.frontend.onnx_loader import load_onnx

    return load_onnx(source, input_shapes or {})
