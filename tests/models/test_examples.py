"""The example models: valid ONNX that onnxruntime and TVM's importer accept, planted
patterns that hold exactly, and torch twins that compute the same function and export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sparsec.models import examples, patterns, torch_examples
from sparsec.models.prune import as_2d

NAMES = sorted(examples.ALL)
TORCH_NAMES = sorted(torch_examples.ALL)
RTOL = ATOL = 1e-4


@pytest.fixture(scope="module")
def built():
    return {name: fn() for name, fn in examples.ALL.items()}


@pytest.fixture(scope="module")
def torch_built():
    return {name: fn() for name, fn in torch_examples.ALL.items()}


def _ort(example):
    sess = ort.InferenceSession(
        example.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, example.inputs)


def test_the_five_examples():
    assert NAMES == ["half_zero_rows", "lm_head", "mlp_2to4", "mobilenet_like", "transformer_block"]
    assert TORCH_NAMES == ["mlp_2to4", "mobilenet_like", "transformer_block"]


@pytest.mark.parametrize("name", NAMES)
def test_valid_onnx_with_concrete_shapes(built, name):
    ex = built[name]
    model = ex.onnx_model
    onnx.checker.check_model(model, full_check=True)
    assert ex.name == name
    assert model.ir_version in (8, 9)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    for vi in (*model.graph.input, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        assert dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), vi.name
    assert [i.name for i in model.graph.input] == list(ex.inputs)
    for i in model.graph.input:
        shape = tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
        assert ex.inputs[i.name].shape == shape and ex.inputs[i.name].dtype == np.float32
    assert ex.outputs == [o.name for o in model.graph.output]


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_runs_it(built, name):
    ex = built[name]
    outs = _ort(ex)
    for out, vi in zip(outs, ex.onnx_model.graph.output, strict=True):
        assert out.shape == tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        assert np.isfinite(out).all()
        assert 0.05 < float(out.std()) < 20.0  # activations neither vanish nor explode


@pytest.mark.parametrize("name", NAMES)
def test_planted_patterns_hold(built, name):
    ex = built[name]
    assert patterns.planted_problems(ex.onnx_model, ex.planted) == []
    # every weight-bearing initializer has a promise, and nothing else does
    assert set(ex.planted) == set(patterns.oriented_weights(ex.onnx_model))
    for want in ex.planted.values():
        assert set(want) == {"density", "nm", "block", "zero_rows"}


@pytest.mark.parametrize("name", NAMES)
def test_seeded_and_deterministic(built, name):
    again = examples.ALL[name]()
    assert again.onnx_model.SerializeToString() == built[name].onnx_model.SerializeToString()
    for key, value in built[name].inputs.items():
        np.testing.assert_array_equal(again.inputs[key], value)


def test_mlp_2to4_is_exactly_two_of_four(built):
    w = patterns.oriented_weights(built["mlp_2to4"].onnx_model)
    for name in ("fc1.weight", "fc2.weight"):
        groups = w[name].reshape(w[name].shape[0], -1, 4)
        assert (np.count_nonzero(groups, axis=2) == 2).all()
    assert built["mlp_2to4"].planted["fc3.weight"]["density"] == 1.0
    assert patterns.density(w["fc3.weight"]) == 1.0


def test_transformer_blocks_are_planted_in_out_in_orientation(built):
    ex = built["transformer_block"]
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in ex.onnx_model.graph.initializer}
    assert stored["attn.qkv.weight"].shape == (128, 384)  # MatMul weights are [in, out]
    assert stored["ffn.fc2.weight"].shape == (512, 128)
    for name in ("attn.out.weight", "ffn.fc2.weight"):
        assert ex.planted[name]["block"] == [16, 1]
        assert patterns.block_density(stored[name].T, 16, 1) == 0.25
        assert patterns.block_density(stored[name], 16, 1) > 0.9  # not in [in, out]
    for name in ("attn.qkv.weight", "ffn.fc1.weight"):
        assert patterns.block_density(stored[name].T, 4, 4) == 0.25
        assert patterns.block_density(stored[name].T, 8, 4) > 0.4  # 4x4 is the largest
    ops = [n.op_type for n in ex.onnx_model.graph.node]
    assert "Erf" in ops and ops.count("LayerNormalization") == 2 and ops.count("MatMul") == 6


def test_mobilenet_like_structure(built):
    ex = built["mobilenet_like"]
    graph = ex.onnx_model.graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    assert groups == [1, 16, 1, 64, 1, 128, 1]
    assert sum(n.op_type == "BatchNormalization" for n in graph.node) == 5
    assert not np.allclose(init["blocks.0.pw_bn.running_var"], 1.0)
    assert not np.allclose(init["blocks.0.pw_bn.running_mean"], 0.0)
    consts = {n.output[0] for n in graph.node if n.op_type == "Constant"}
    clips = [n for n in graph.node if n.op_type == "Clip"]
    assert len(clips) == 7 and all(set(c.input[1:]) <= consts for c in clips)
    assert {k: v["density"] for k, v in ex.planted.items() if v["density"] < 1} == {
        "blocks.0.pw.weight": 0.12,
        "blocks.1.pw.weight": 0.10,
        "blocks.2.pw.weight": 0.15,
    }


def test_half_zero_rows_channels_are_exactly_zero_after_relu(built):
    ex = built["half_zero_rows"]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in ex.onnx_model.graph.initializer}
    w, b = init["fc1.weight"], init["fc1.bias"]
    dead = ~np.any(w != 0, axis=1)
    assert dead.sum() == 256 and not b[dead].any()
    assert 0 < dead[:256].sum() < 256  # zero rows are spread out, not one contiguous slab
    hidden = np.maximum(ex.inputs["x"] @ w.T + b, 0)
    assert not hidden[:, dead].any()
    live = hidden[:, ~dead]
    expected = live @ init["fc2.weight"][:, ~dead].T + init["fc2.bias"]
    np.testing.assert_allclose(_ort(ex)[0], expected, rtol=RTOL, atol=ATOL)


def test_lm_head_is_one_sparse_matmul(built):
    ex = built["lm_head"]
    assert [n.op_type for n in ex.onnx_model.graph.node] == ["MatMul"]
    w = patterns.oriented_weights(ex.onnx_model)["lm_head.weight"]
    assert w.shape == (4096, 256) and patterns.density(w) == pytest.approx(0.05, abs=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_tvm_importer_accepts_it(built, name):
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(built[name].onnx_model, keep_params_in_input=True)
    params = {p.name for p in mod["main"].params}
    assert set(built[name].planted) <= params


def test_save_writes_model_and_inputs(built, tmp_path):
    ex = built["mlp_2to4"]
    path = examples.save(ex, tmp_path / "sub" / "mlp.onnx", inputs_path=tmp_path / "x.npz")
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == ex.onnx_model.SerializeToString()
    with np.load(tmp_path / "x.npz") as npz:
        np.testing.assert_array_equal(npz["x"], ex.inputs["x"])


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_twin_matches_onnx(built, torch_built, name):
    m, ex = torch_built[name], built[name]
    assert not m.training
    (x,) = m.example_inputs()
    np.testing.assert_array_equal(x.numpy(), ex.inputs["x"])
    with torch.no_grad():
        got = m(*m.example_inputs()).numpy()
    np.testing.assert_allclose(got, _ort(ex)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_twin_planted_patterns_and_names(built, torch_built, name):
    m = torch_built[name]
    state = dict(m.named_parameters())
    onnx_inits = {t.name for t in built[name].onnx_model.graph.initializer}
    assert set(state) <= onnx_inits  # the same readable names on both sides
    for weight, want in built[name].planted.items():
        w = as_2d(state[weight].detach().numpy())
        assert patterns.density(w) == pytest.approx(want["density"], abs=0.01), weight
        assert patterns.zero_row_count(w) == want["zero_rows"], weight
        if want["nm"]:
            assert patterns.nm_holds(w, *want["nm"]), weight
        if want["block"]:
            assert patterns.block_density(w, *want["block"]) == pytest.approx(
                patterns.density(w), abs=0.01
            ), weight


def test_torch_batchnorm_has_running_stats(torch_built):
    modules = torch_built["mobilenet_like"].modules()
    bns = [mod for mod in modules if isinstance(mod, torch.nn.BatchNorm2d)]
    assert len(bns) == 5
    for bn in bns:
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_export_captures_it(torch_built, name):
    m = torch_built[name]
    program = torch.export.export(m, m.example_inputs())
    with torch.no_grad():
        got = program.module()(*m.example_inputs())
        want = m(*m.example_inputs())
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    assert set(program.state_dict) >= set(m.planted)  # parameter names survive capture
