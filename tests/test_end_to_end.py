"""The vertical slice: the five example situations compile for the host CPU, run from a
reloaded artifact and match onnxruntime within 1e-4; inspect reports the planted patterns."""

import json

import numpy as np
import pytest

import sparsec
from sparsec import verify
from sparsec.models import examples

NAMES = sorted(examples.ALL)


@pytest.fixture(scope="module", params=NAMES)
def example(request):
    return examples.ALL[request.param]()


def _reference(ex):
    return verify.onnxruntime_outputs(ex.onnx_model, ex.inputs)


def test_compile_save_load_run_matches_onnxruntime(example, tmp_path):
    cm = sparsec.compile(example.onnx_model, target="cpu")
    assert cm.verification["ok"]
    art = cm.save(tmp_path / f"{example.name}.sparsec")
    cm2 = sparsec.load(art)
    got = cm2.run(**example.inputs)
    ref = _reference(example)
    for spec, y in zip(cm2.outputs, got):
        np.testing.assert_allclose(y, ref[spec["name"]], rtol=1e-4, atol=1e-4)
    # the report lists every weight-bearing op with the planted weight names
    weights = {r["weight"] for r in cm2.report}
    assert set(example.planted) - weights <= {w for w in example.planted if ".dw." in w}


def test_every_layout_forced_dense(example):
    cm = sparsec.compile(example.onnx_model, target="cpu", layout="dense")
    assert all(r["layout"] == "dense" for r in cm.report)
    got = cm.run(**example.inputs)
    ref = _reference(example)
    for spec, y in zip(cm.outputs, got):
        np.testing.assert_allclose(y, ref[spec["name"]], rtol=1e-4, atol=1e-4)


def test_inspect_reports_planted_patterns(example):
    name, plan = sparsec.inspect(example.onnx_model)
    rows = {r["weight"]: r for r in (e.report_row() for e in plan.entries)}
    json.dumps({"model": name, "layers": list(rows.values())})  # serializable
    for weight, want in example.planted.items():
        if weight not in rows:
            assert ".dw." in weight  # depthwise convs are not planned (TVM schedules them)
            continue
        got = rows[weight]
        assert got["density"] == pytest.approx(want["density"], abs=0.01), weight
        if want["nm"] is not None:
            assert got["nm"] == want["nm"], weight
        elif got["nm"] is not None:  # a loose N:M that random zeros happen to satisfy
            assert got["nm"][0] / got["nm"][1] > want["density"] + 0.05, weight
        if want["block"] is not None:
            assert got["block"] == want["block"], weight
        assert got["zero_rows"] == want["zero_rows"], weight


def test_symbolic_batch_needs_and_takes_a_concrete_shape(tmp_path):
    import subprocess
    import sys

    import onnx

    from sparsec.errors import ModelError

    ex = examples.lm_head()
    m = onnx.ModelProto.FromString(ex.onnx_model.SerializeToString())
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(ModelError, match="--input-shape x=batchx256|--input-shape x=Nx256"):
        sparsec.compile(m)
    cm = sparsec.compile(m, input_shapes={"x": (3, 256)})
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    want = verify.onnxruntime_outputs(m, {"x": x})
    np.testing.assert_allclose(cm(x), next(iter(want.values())), rtol=1e-4, atol=1e-4)
    path = tmp_path / "dyn.onnx"
    path.write_bytes(m.SerializeToString())
    r = subprocess.run([sys.executable, "-m", "sparsec.cli", "compile", str(path), "--input-shape",
                        "x=3x256", "-o", str(tmp_path / "dyn.sparsec")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sparsec.load(tmp_path / "dyn.sparsec").inputs[0]["shape"] == [3, 256]
