"""A small builder of ONNX graphs for the examples (opset 17, IR version 8).

Weights become initializers under their torch names; every other constant (shapes,
scalars, Clip bounds) is a ``Constant`` node, so importers that turn initializers into
parameters (TVM's ``keep_params_in_input``) still see them as constants. A node's single
output is named after the node, so reports and value names read alike.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


class GraphBuilder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: set[str] = set()

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def input(self, name: str, shape: tuple[int, ...]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        self._used.add(name)
        return name

    def output(self, value: str, shape: tuple[int, ...]) -> None:
        self.outputs.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, list(shape)))

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self._used.add(name)
        return name

    def const(self, value, dtype=np.float32, name: str = "const") -> str:
        """A ``Constant`` node holding ``value`` (scalar or list) as ``dtype``."""
        out = self._fresh(name)
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, **attrs):
        """Add a node; returns its output name (or a list of ``outputs`` names)."""
        node_name = self._fresh(name)
        outs = [node_name] if outputs == 1 else [f"{node_name}_{i}" for i in range(outputs)]
        self._used.update(outs)
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        return outs[0] if outputs == 1 else outs

    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="sparsec.models",
            doc_string=doc,
        )
        return model
