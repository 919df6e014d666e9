"""Faults during compile: interrupts and races never leave a partial artifact."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sparsec
from sparsec import artifact
from sparsec.models import examples


def _cli(args, tmpdir):
    env = dict(os.environ, PYTHONWARNINGS="ignore", TMPDIR=str(tmpdir))
    return subprocess.Popen([sys.executable, "-m", "sparsec.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    p = d / "mobilenet.onnx"
    p.write_bytes(examples.mobilenet_like().onnx_model.SerializeToString())
    return p


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_compile_leaves_nothing(model_path, tmp_path, sig):
    work = tmp_path / "tmp"
    work.mkdir()
    out = tmp_path / "m.sparsec"
    proc = _cli(["compile", model_path, "-o", out], work)
    deadline = time.time() + 120
    while not list(work.glob("sparsec-build-*")) and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "compile ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    assert list(work.glob("sparsec-build-*")) == []  # staging removed
    assert list(tmp_path.glob(".m.sparsec*")) == []


def test_two_compiles_to_one_path(model_path, tmp_path):
    out = tmp_path / "m.sparsec"
    procs = [_cli(["compile", model_path, "-o", out, "--quiet"], tmp_path) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    artifact.read_manifest(out)  # whole and consistent
    cm = sparsec.load(out)
    ex = examples.mobilenet_like()
    from sparsec import verify

    want = verify.onnxruntime_outputs(ex.onnx_model, ex.inputs)
    (name, ref), = want.items()
    np.testing.assert_allclose(cm(**ex.inputs), ref, rtol=1e-4, atol=1e-4)
    assert list(tmp_path.glob(".m.sparsec*")) == []  # no staging or old copy left


def test_stale_staging_of_a_killed_writer_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.sparsec.tmp-{dead.pid}-abc"
    stale.mkdir()
    (stale / "model.so").write_bytes(b"half")
    src = tmp_path / "lib"
    src.write_bytes(b"x")
    artifact.write(tmp_path / "m.sparsec", {"model.so": src, "weights.safetensors": src},
                   {"target": "cpu", "library": "model.so", "weights": "weights.safetensors"})
    assert not stale.exists()
