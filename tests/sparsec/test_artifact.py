"""Artifact writing is atomic and loading refuses anything altered, missing or foreign."""

import json
import os

import pytest

from sparsec import artifact
from sparsec.errors import ArtifactError


def _files(tmp_path):
    lib = tmp_path / "src.so"
    lib.write_bytes(b"\x7fELF fake library")
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"weights")
    return {"model.so": lib, "weights.safetensors": w}


MANIFEST = {"target": "cpu", "library": "model.so", "weights": "weights.safetensors"}


def test_write_then_read(tmp_path):
    out = artifact.write(tmp_path / "m.sparsec", _files(tmp_path), MANIFEST)
    m = artifact.read_manifest(out)
    assert m["format_version"] == artifact.FORMAT_VERSION
    assert set(m["files"]) == {"model.so", "weights.safetensors"}
    assert sorted(os.listdir(tmp_path)) == ["m.sparsec", "src.so", "w.safetensors"]  # no temp left


def test_overwrite_replaces_whole_artifact(tmp_path):
    out = artifact.write(tmp_path / "m.sparsec", _files(tmp_path), MANIFEST)
    files = _files(tmp_path)
    files["model.so"].write_bytes(b"new library")
    artifact.write(out, files, MANIFEST)
    assert (out / "model.so").read_bytes() == b"new library"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_to_replace_foreign_directory(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("do not delete")
    with pytest.raises(ArtifactError, match="not a sparsec artifact"):
        artifact.write(d, _files(tmp_path), MANIFEST)
    assert (d / "thesis.tex").exists()


def test_failed_write_leaves_nothing(tmp_path):
    files = _files(tmp_path)
    files["weights.safetensors"] = tmp_path / "missing"
    with pytest.raises(OSError):
        artifact.write(tmp_path / "m.sparsec", files, MANIFEST)
    assert not (tmp_path / "m.sparsec").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tampered_file(tmp_path):
    out = artifact.write(tmp_path / "m.sparsec", _files(tmp_path), MANIFEST)
    (out / "model.so").write_bytes(b"evil")
    with pytest.raises(ArtifactError, match="model.so was altered"):
        artifact.read_manifest(out)


def test_missing_file(tmp_path):
    out = artifact.write(tmp_path / "m.sparsec", _files(tmp_path), MANIFEST)
    (out / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing weights.safetensors"):
        artifact.read_manifest(out)


def _edit(out, **changes):
    m = json.loads((out / "manifest.json").read_text())
    m.update(changes)
    (out / "manifest.json").write_text(json.dumps(m))


def test_other_format_version(tmp_path):
    out = artifact.write(tmp_path / "m.sparsec", _files(tmp_path), MANIFEST)
    _edit(out, format_version=99)
    with pytest.raises(ArtifactError, match="format version 99"):
        artifact.read_manifest(out)


@pytest.mark.parametrize("name", ["../outside.so", "/etc/passwd", "sub/x.so", ".hidden"])
def test_names_escaping_the_directory(tmp_path, name):
    out = artifact.write(tmp_path / "m.sparsec", _files(tmp_path), MANIFEST)
    m = json.loads((out / "manifest.json").read_text())
    m["files"][name] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="escapes"):
        artifact.read_manifest(out)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        artifact.read_manifest(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArtifactError, match="expected a directory"):
        artifact.read_manifest(tmp_path / "f")
    (tmp_path / "d").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        artifact.read_manifest(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifact.read_manifest(tmp_path / "d")
