"""`sparsec prune`: every constant MatMul/Gemm/Conv weight pruned to the pattern, in
[out, in] orientation, written atomically; the rest of the model is unchanged."""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

import sparsec
from sparsec import prune_onnx
from sparsec.cli import main
from sparsec.errors import ModelError, UsageError
from sparsec.models import patterns


def _dense_model() -> onnx.ModelProto:
    """x[N,4,8,8] -> conv 3x3 -> relu -> depthwise -> flatten -> Gemm(transB) -> relu -> MatMul."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return nh.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        h.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv", pads=[1] * 4),
        h.make_node("Relu", ["c"], ["cr"]),
        h.make_node("Conv", ["cr", "dw.weight"], ["d"], name="dw", group=16, pads=[1] * 4),
        h.make_node("Flatten", ["d"], ["f"], axis=1),
        h.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["g"], name="fc1", transB=1,
                    alpha=0.5),
        h.make_node("Relu", ["g"], ["gr"]),
        h.make_node("MatMul", ["gr", "fc2.weight"], ["y"], name="fc2"),
    ]
    inits = [init("conv.weight", (16, 4, 3, 3)), init("conv.bias", (16,)),
             init("dw.weight", (16, 1, 3, 3)), init("fc1.weight", (64, 1024)),
             init("fc1.bias", (64,)), init("fc2.weight", (64, 32))]
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])
    graph = h.make_graph(nodes, "dense", [x], [y], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("prune") / "dense.onnx"
    onnx.save(_dense_model(), path)
    return path


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for t in onnx.load(path).graph.initializer}


def _w2d(name, w):  # [out, in] as sparsec sees it
    return {"conv.weight": w.reshape(16, -1), "fc1.weight": w, "fc2.weight": w.T}.get(name, w)


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("pattern,check", [
    ("2:4", lambda w: patterns.nm_holds(w, 2, 4)),
    ("3:4", lambda w: patterns.nm_holds(w, 3, 4) and patterns.density(w) == 0.75),
    ("unstructured:0.9", lambda w: abs(patterns.density(w) - 0.1) < 0.01),
    ("block:4x4:0.75", lambda w: patterns.block_density(w, 4, 4) == 0.25),
    ("rows:0.25", lambda w: patterns.zero_row_count(w) == w.shape[0] // 4),
])
def test_every_weight_op_takes_the_pattern(dense, tmp_path, capsys, pattern, check):
    out = tmp_path / "out.onnx"
    assert main(["prune", str(dense), "--pattern", pattern, "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["conv", "fc1", "fc2"]  # one line per layer
    assert lines[-1].startswith(f"wrote {out}: 3 layer(s) pruned")
    before, after = _weights(dense), _weights(out)
    assert list(before) == list(after)  # same initializers, same names, same order
    for name in ("conv.weight", "fc1.weight", "fc2.weight"):
        w, p = before[name], after[name]
        assert p.shape == w.shape and p.dtype == np.float32
        assert np.all((p == 0) | (p == w)), name  # only zeros were introduced
        assert check(_w2d(name, p)), (name, pattern)
    for name in ("conv.bias", "fc1.bias", "dw.weight"):  # biases and depthwise untouched
        np.testing.assert_array_equal(before[name], after[name])
    # the model is the same function of the pruned weights, batch still symbolic
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    masked = _dense_model()
    for t in masked.graph.initializer:
        t.CopyFrom(nh.from_array(after[t.name], t.name))
    x = np.random.default_rng(1).standard_normal((3, 4, 8, 8)).astype(np.float32)
    ref_path = tmp_path / "ref.onnx"
    onnx.save(masked, ref_path)
    np.testing.assert_allclose(_run(out, x), _run(ref_path, x), rtol=1e-5, atol=1e-5)


def test_largest_magnitudes_survive_in_out_in_orientation(dense, tmp_path):
    out = tmp_path / "out.onnx"
    prune_onnx.prune_file(dense, out, "2:4")
    w = _w2d("fc2.weight", _weights(dense)["fc2.weight"])  # MatMul: groups run along in = rows
    p = _w2d("fc2.weight", _weights(out)["fc2.weight"])
    groups_w, groups_p = np.abs(w).reshape(32, -1, 4), p.reshape(32, -1, 4)
    kept = groups_p != 0
    smallest_kept = np.where(kept, groups_w, np.inf).min(2)
    largest_dropped = np.where(kept, -np.inf, groups_w).max(2)
    assert (smallest_kept >= largest_dropped).all()


def test_layers_glob_and_global_scope(dense, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["prune", str(dense), "--pattern", "unstructured:0.8", "--layers", "fc*",
                 "--global", "-o", str(out)]) == 0
    before, after = _weights(dense), _weights(out)
    np.testing.assert_array_equal(before["conv.weight"], after["conv.weight"])
    kept = np.count_nonzero(after["fc1.weight"]) + np.count_nonzero(after["fc2.weight"])
    assert kept == round(0.2 * (64 * 1024 + 64 * 32))
    # one threshold on the effective weights (fc1's Gemm has alpha 0.5): every kept
    # magnitude beats every dropped one, across both layers
    w = np.concatenate([0.5 * before["fc1.weight"].ravel(), before["fc2.weight"].ravel()])
    p = np.concatenate([after["fc1.weight"].ravel(), after["fc2.weight"].ravel()])
    assert np.abs(w[p != 0]).min() >= np.abs(w[p == 0]).max()


def test_layer_that_does_not_fit_is_skipped_and_said(dense, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["prune", str(dense), "--pattern", "3:8", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conv" in text and "skipped: in (36) is not divisible by M=8" in text
    np.testing.assert_array_equal(_weights(dense)["conv.weight"], _weights(out)["conv.weight"])
    assert patterns.nm_holds(_weights(out)["fc1.weight"], 3, 8)


def test_pruned_model_compiles_to_sparse_layouts(dense, tmp_path):
    out = tmp_path / "out.onnx"
    prune_onnx.prune_file(dense, out, "unstructured:0.9")
    # 32 rows: at 2 this model's weights (270 KB) sit in the cache and fc1 takes ~3 us dense
    # or sparse, so the cost model may rightly keep it dense (``weights_resident``).
    _, plan = sparsec.inspect(str(out), input_shapes={"x": (32, 4, 8, 8)})
    by_name = {e.node: e for e in plan.entries}
    assert by_name["fc1"].stats.density == pytest.approx(0.1, abs=1e-3)
    assert by_name["fc1"].layout != "dense"


@pytest.mark.parametrize("args,exc,match", [
    (["--pattern", "2:4", "--global"], UsageError, "--global needs an unstructured or block"),
    (["--pattern", "2:5"], UsageError, "no layer can take --pattern 2:5"),
    (["--pattern", "5:4"], UsageError, "N:M needs 1 <= N <= M"),
    (["--pattern", "unstructured:1.5"], UsageError, "not in"),
    (["--pattern", "block:4:0.5"], UsageError, "unknown --pattern"),
    (["--pattern", "2:4", "--layers", "nope*"], UsageError, "matches no MatMul/Gemm/Conv"),
])
def test_bad_arguments(dense, tmp_path, args, exc, match):
    out = tmp_path / "out.onnx"
    pattern = args[1]
    layers = [args[args.index("--layers") + 1]] if "--layers" in args else None
    scope = "global" if "--global" in args else "layer"
    with pytest.raises(exc, match=match):
        prune_onnx.prune_file(dense, out, pattern, layers=layers, scope=scope)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_model_without_weights_is_a_model_error(tmp_path):
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    with pytest.raises(ModelError, match="no MatMul/Gemm/Conv"):
        prune_onnx.prune_file(path, tmp_path / "out.onnx", "2:4")


def test_cli_errors_are_one_line_with_exit_codes(dense, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "sparsec.cli", "prune", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=120)

    out = tmp_path / "out.onnx"
    r = run(dense, "--pattern", "2:4", "--global", "-o", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("sparsec: error: --global needs")
    r = run(tmp_path / "missing.onnx", "--pattern", "2:4", "-o", out)
    assert r.returncode == 3 and "does not exist" in r.stderr
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file at all")
    r = run(tmp_path / "junk.onnx", "--pattern", "2:4", "-o", out)
    assert r.returncode == 3 and "not a valid ONNX model" in r.stderr
    assert not out.exists()
    r = run(dense, "--pattern", "block:4x4:0.5", "-o", out)
    assert r.returncode == 0 and "wrote" in r.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
