"""Export a zoo model to ONNX exactly as sparsec's torch front door does, for onnxruntime
baselines and for ``sparsec compile model.onnx``.

``to_onnx(module, example_inputs)`` is ``sparsec.frontend.load``'s torch path:
``torch.export`` -> ``torch.onnx.export(dynamo=True)`` (the exporter's default opset, 20 with
torch 2.13) -> initializers renamed to their PyTorch parameter names (the exporter's
optimizer folds ``Transpose(fc1.weight)`` into an anonymous constant; it gets the name
``fc1.weight.T`` back) and weight-bearing MatMul/Gemm/Conv nodes named after their
modules (``layers.0.attn.qkv``) -> sparsec's ONNX checks (checker, opset range, float32
inputs, concrete shapes). So the ONNX file and ``sparsec.compile(module)`` see the same
graph, and a model this returns is one sparsec's frontend accepts.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def to_onnx(module, example_inputs: tuple, path: str | Path | None = None) -> onnx.ModelProto:
    """The ONNX model of ``module`` at the shapes of ``example_inputs`` (all dims concrete),
    also written to ``path`` when given, with every weight inline."""
    import torch

    from sparsec import frontend

    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    with torch.no_grad():
        captured = frontend.load(module.eval(), None, example_inputs)
    proto = onnx.ModelProto.FromString(captured.onnx_proto.SerializeToString())
    proto.graph.name = type(module).__name__
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(path), save_as_external_data=False)
    return proto
