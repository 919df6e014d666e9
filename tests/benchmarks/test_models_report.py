"""The end-to-end benchmark's report: goals are judged on the measured speed-up."""

import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks.models import Row, for_deepsparse, goals, table


def _row(model, level, sparsec_ms, ort_ms):
    return Row(model, level, layouts={"csr": 3}, ms={"sparsec": sparsec_ms, "onnxruntime": ort_ms})


def test_goal_met_and_missed():
    rows = [_row("bert_base", "0.9", 10.0, 35.0), _row("gpt2_decode", "0.7", 10.0, 15.0),
            _row("mlp", "0", 1.0, 0.95)]
    text = goals(rows)
    assert "| bert_base at 0.9: >= 3.0x onnxruntime | 3.50x | yes |" in text
    assert "| gpt2_decode at 0.7: >= 2.0x onnxruntime | 1.50x | no |" in text
    assert "| mlp at 0: >= 0.9x onnxruntime | 0.95x | yes |" in text
    assert "mobilenetv2_224 at 0.9: >= 2.0x onnxruntime | not run" in text


def test_table_has_a_row_per_run_and_missing_engines_dashed():
    text = table([_row("mlp", "0.9", 0.1, 0.3)])
    assert text.count("\n") == 2
    assert "| mlp | 0.9 | 3 csr | 0.100 | 0.300 | - | 3.00x | - |" in text


def test_per_round_ratios_decide_and_show_their_spread():
    """Ratios are taken round by round (drift cancels within a round); the goal uses their
    median, and the table shows the lowest and highest."""
    from benchmarks.models import round_ratios

    per = {"sparsec": [10.0, 20.0, 10.0], "onnxruntime": [30.0, 50.0, 20.0]}
    assert round_ratios(per, "onnxruntime") == [2.5, 2.0, 3.0]
    row = _row("bert_base", "0.9", 12.0, 40.0)  # whole-run medians say 3.33x ...
    row.ratios["onnxruntime"] = [2.9, 2.7, 3.1]  # ... the rounds say 2.9x
    assert "| bert_base at 0.9: >= 3.0x onnxruntime | 2.90x (2.70-3.10) | no |" in goals([row])
    assert "| 2.90x (2.70-3.10) |" in table([row])


def test_models_reach_deepsparse_at_ir9_and_opset17(tmp_path):
    """DeepSparse 1.8 refuses torch's IR 10 / opset 20 by number: a copy at opset 17 and IR 9
    (ReduceMean's opset-18 attribute dropped); a graph with opset 20's Gelu is refused
    clearly, not sent."""
    def save(nodes, name):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [1, 4, 2, 2])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        model.ir_version = 10
        path = tmp_path / name
        onnx.save(model, path)
        return path

    mean = helper.make_node("ReduceMean", ["x"], ["y"], keepdims=1, noop_with_empty_axes=0)
    out = onnx.load(for_deepsparse(save([mean], "mean.onnx")))
    assert out.ir_version == 9 and out.opset_import[0].version == 17
    assert [a.name for a in out.graph.node[0].attribute] == ["keepdims"]
    onnx.checker.check_model(out)
    with pytest.raises(ValueError, match="Gelu"):
        for_deepsparse(save([helper.make_node("Gelu", ["x"], ["y"])], "gelu.onnx"))
