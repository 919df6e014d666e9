"""The compiled artifact: one directory, written atomically, checked when loaded.

    model.sparsec/
      manifest.json        format version, sparsec/TVM versions, target and host features,
                           input/output names, shapes, dtypes, parameter order, the Plan,
                           the verification result, and the sha256 of every other file
      model.so             the compiled library (native code: trust it like any .so)
      weights.safetensors  every weight the library takes as a parameter (no pickle)

Writing goes to a hidden sibling directory that is renamed into place only when complete,
so an interrupted or failed compile leaves nothing at the destination, and two compiles
racing to one path each leave a whole artifact. Loading checks every file's sha256 and
refuses names that would escape the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from sparsec.errors import ArtifactError
from sparsec.scratch import scratch_dir

FORMAT = "sparsec-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write(dest: Path, files: dict[str, Path], manifest: dict[str, Any]) -> Path:
    """Copy ``files`` (artifact name -> source path) and the manifest into ``dest`` atomically."""
    dest = Path(dest).absolute()
    parent = dest.parent
    if not parent.exists():
        raise ArtifactError(f"cannot write '{dest}': directory '{parent}' does not exist")
    replaceable = dest.is_dir() and ((dest / MANIFEST).exists() or not any(dest.iterdir()))
    if dest.exists() and not replaceable:
        raise ArtifactError(f"'{dest}' exists and is not a sparsec artifact; refusing to replace it")
    _remove_stale_stages(parent, dest.name)
    # Removed if anything fails or is interrupted; on success it has become `dest`.
    with scratch_dir(f".{dest.name}.tmp-{os.getpid()}-", parent) as stage:
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files={})
        for name, src in files.items():
            _check_name(name)
            shutil.copyfile(src, stage / name)
            manifest["files"][name] = sha256(stage / name)
        with open(stage / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(stage)
        os.chmod(stage, 0o755)
        if dest.exists():
            old = parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(stage, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, dest)
        _fsync_dir(parent)
    return dest


def _remove_stale_stages(parent: Path, name: str) -> None:
    """Staging directories of writers that were killed (SIGKILL leaves them behind): the
    pid in their name no longer runs."""
    for p in parent.glob(f".{name}.tmp-*-*"):
        try:
            pid = int(p.name[len(name) + 6:].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_name(name: str) -> None:
    p = Path(name)
    if p.is_absolute() or len(p.parts) != 1 or name in (".", "..") or name.startswith("."):
        raise ArtifactError(f"artifact file name '{name}' escapes the artifact directory")


def read_manifest(path: Path) -> dict[str, Any]:
    """The verified manifest of the artifact at ``path`` (every file's sha256 checked)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"artifact '{path}' does not exist")
    if not path.is_dir():
        raise ArtifactError(f"'{path}' is not a sparsec artifact (expected a directory)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"artifact '{path}' has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"artifact '{path}': {MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"'{path}' is not a sparsec artifact (manifest format)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"artifact '{path}' has format version {version}; this sparsec reads version "
            f"{FORMAT_VERSION}: compile the model again"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"artifact '{path}': manifest lists no files")
    for name, digest in files.items():
        _check_name(name)
        fpath = path / name
        if fpath.is_symlink() or not fpath.is_file():
            raise ArtifactError(f"artifact '{path}' is missing {name}")
        if sha256(fpath) != digest:
            raise ArtifactError(f"artifact '{path}': {name} was altered (sha256 mismatch)")
    for key in ("library", "weights"):
        if manifest.get(key) not in files:
            raise ArtifactError(f"artifact '{path}': manifest names no checked {key} file")
    return manifest
