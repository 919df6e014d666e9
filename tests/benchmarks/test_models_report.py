"""The end-to-end benchmark's report: goals are judged on the measured speed-up."""

from benchmarks.models import Row, goals, table


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
