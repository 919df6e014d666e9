"""The command line as a user meets it: real subprocesses, exit codes, no tracebacks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sparsec.models import examples


def sparsec(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "sparsec.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def lm_head(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ex = examples.lm_head()
    path = d / "lm_head.onnx"
    path.write_bytes(ex.onnx_model.SerializeToString())
    np.save(d / "x.npy", ex.inputs["x"])
    return d, path, ex


def test_help_explains():
    r = sparsec("--help")
    assert r.returncode == 0
    for word in ("inspect", "compile", "run", "demo", "examples:"):
        assert word in r.stdout
    r = sparsec("compile", "--help")
    assert "--input-shape" in r.stdout and "--layout" in r.stdout and "--no-verify" in r.stdout


def test_inspect_table_and_json(lm_head):
    d, path, ex = lm_head
    r = sparsec("inspect", path)
    assert r.returncode == 0, r.stderr
    assert "lm_head.weight" in r.stdout and "layout" in r.stdout
    r = sparsec("inspect", path, "--json")
    doc = json.loads(r.stdout)
    assert doc["model"] == "lm_head.onnx"
    (layer,) = doc["layers"]
    assert set(layer) == {"name", "op", "weight", "shape", "density", "nm", "block",
                          "block_density", "zero_rows", "zero_cols", "layout", "reason"}
    assert layer["weight"] == "lm_head.weight"
    assert layer["density"] == pytest.approx(0.05, abs=0.005)
    assert layer["layout"] != "dense"


def test_compile_then_run(lm_head):
    d, path, ex = lm_head
    out = d / "lm.sparsec"
    r = sparsec("compile", path, "--target", "cpu", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "verification passed" in r.stdout
    assert (out / "manifest.json").exists()
    r = sparsec("run", out, "--input", f"x={d / 'x.npy'}", "--output", d / "y.npz")
    assert r.returncode == 0, r.stderr
    y = np.load(d / "y.npz")
    from sparsec import verify

    want = verify.onnxruntime_outputs(ex.onnx_model, ex.inputs)
    (name,) = want
    np.testing.assert_allclose(y[name], want[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args,code,needle", [
    (["inspect", "missing.onnx"], 3, "does not exist"),
    (["compile", "{path}", "--target", "tpu", "-o", "x"], 2, "unknown target 'tpu'"),
    (["compile", "{path}", "--layout", "fancy", "-o", "x"], 2, "unknown layout"),
    (["compile", "{path}", "--input-shape", "x:1x256", "-o", "x"], 2, "bad --input-shape"),
    (["compile", "{path}", "--layout", "nm2:4", "-o", "{d}/bad.sparsec"], 5, "nm2:4"),
    (["run", "{d}/nothing.sparsec", "--random"], 9, "does not exist"),
])
def test_errors_are_one_line(lm_head, args, code, needle):
    d, path, _ = lm_head
    r = sparsec(*[a.format(path=path, d=d) for a in args])
    assert r.returncode == code, (r.returncode, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (d / "bad.sparsec").exists()


def test_run_with_wrong_input(lm_head):
    d, path, _ = lm_head
    out = d / "lm2.sparsec"
    assert sparsec("compile", path, "--no-verify", "-o", out).returncode == 0
    np.save(d / "bad.npy", np.zeros((2, 256), np.float32))
    r = sparsec("run", out, "--input", f"x={d / 'bad.npy'}")
    assert r.returncode == 10 and "shape [2, 256]" in r.stderr and "Traceback" not in r.stderr
    np.save(d / "int.npy", np.zeros((1, 256), np.int64))
    r = sparsec("run", out, "--input", f"x={d / 'int.npy'}")
    assert r.returncode == 10 and "dtype int64" in r.stderr
    r = sparsec("run", out, "--input", f"y={d / 'bad.npy'}")
    assert r.returncode == 10 and "unknown input 'y'" in r.stderr


def test_debug_shows_traceback(lm_head):
    r = sparsec("--debug", "inspect", "missing.onnx")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_exit_codes_are_distinct_and_documented():
    import re
    from pathlib import Path

    from sparsec.errors import ALL_ERRORS

    codes = [e.exit_code for e in ALL_ERRORS]
    assert len(set(codes)) == len(codes)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| ([\w-]+) \|", readme, re.M))
    for e in ALL_ERRORS:
        assert table.get(str(e.exit_code)) == e.kind, e.__name__
