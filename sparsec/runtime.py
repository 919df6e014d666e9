"""A compiled model in memory: call it, read its report, save it, load it again.

``CompiledModel`` wraps a target's runner and the artifact's manifest. Inputs are checked
by name, shape and dtype before anything runs; a mismatch is a RunInputError naming the
input.
"""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from sparsec import artifact
from sparsec.errors import ArtifactError, RunInputError
from sparsec.plan import Plan


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception:  # noqa: BLE001
        raise RunInputError(f"input '{name}': cannot use a {type(x).__name__} as a tensor") from None


class CompiledModel:
    def __init__(self, manifest: dict[str, Any], runner, files: dict[str, Path],
                 params: list[np.ndarray], staging: Path | None = None):
        self.manifest = manifest
        self._runner = runner
        self._files = files  # artifact name -> where the file is now
        self._runner.set_params(params)
        if hasattr(self._runner, "set_fresh_outputs"):
            self._runner.set_fresh_outputs([bool(o.get("fresh")) for o in manifest["outputs"]])
        if hasattr(self._runner, "set_input_align"):  # absent in older artifacts
            self._runner.set_input_align([int(i.get("align", LEGACY_ALIGN))
                                          for i in manifest["inputs"]])
        self.plan = Plan.from_dict(manifest["plan"])
        # (name, shape, dtype) of every input, parsed once: small models run in tens of
        # microseconds, and re-reading the manifest took 2.5-5 of them a call (now 1.4-2.5)
        self._specs = [(s["name"], tuple(s["shape"]), np.dtype(s["dtype"]))
                       for s in manifest["inputs"]]
        self._names = [name for name, _, _ in self._specs]
        self._staging = staging
        if staging is not None:
            weakref.finalize(self, shutil.rmtree, str(staging), True)

    # -- what it is -----------------------------------------------------------------------
    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def report(self) -> list[dict[str, Any]]:
        """Per-layer records, the same as ``sparsec inspect --json``'s ``layers``."""
        return [e.report_row() for e in self.plan.entries]

    @property
    def verification(self) -> dict[str, Any] | None:
        return self.manifest.get("verification")

    def __repr__(self) -> str:
        ins = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in self.inputs)
        return f"<sparsec.CompiledModel {self.manifest.get('model')} target={self.target} ({ins})>"

    # -- running --------------------------------------------------------------------------
    def _bind(self, args: tuple, kwargs: dict) -> list[np.ndarray]:
        names = self._names
        if len(args) > len(names):
            raise RunInputError(f"model takes {len(names)} input(s) ({', '.join(names)}), "
                                f"got {len(args)} positional")
        given: dict[str, Any] = dict(zip(names, args))
        for key, val in kwargs.items():
            if key not in names:
                raise RunInputError(f"unknown input '{key}'; inputs are: {', '.join(names)}")
            if key in given:
                raise RunInputError(f"input '{key}' given twice")
            given[key] = val
        if len(given) < len(names):
            missing = [n for n in names if n not in given]
            raise RunInputError(f"missing input(s): {', '.join(missing)}")
        out = []
        for name, shape, dtype in self._specs:
            arr = _to_numpy(given[name], name)
            if arr.shape != shape:
                raise RunInputError(
                    f"input '{name}' has shape {list(arr.shape)}, the model was compiled "
                    f"for {list(shape)}"
                )
            if arr.dtype != dtype:
                raise RunInputError(f"input '{name}' has dtype {arr.dtype}, expected {dtype}")
            out.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        return out

    def run(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """All outputs as a list of numpy arrays."""
        return self._runner(self._bind(args, kwargs))

    def __call__(self, *args: Any, **kwargs: Any):
        """numpy or torch tensors in, numpy out (a list when there are several outputs)."""
        outs = self.run(*args, **kwargs)
        return outs[0] if len(outs) == 1 else outs

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        keep = {k: v for k, v in self.manifest.items() if k not in ("files", "format", "format_version")}
        return artifact.write(Path(path), self._files, keep)


# Bytes an input may be required to be aligned to; up to 64, which the runner's copies give.
ALIGNMENTS = (1, 2, 4, 8, 16, 32, 64)
LEGACY_ALIGN = 64  # what a library built before ``codegen/tvm/unaligned.py`` needs


def _check_inputs(manifest: dict[str, Any], path: Path) -> None:
    """The input specs the runner relies on are well formed: one clear error if not (the
    manifest is not covered by the checksums of the files it lists)."""
    specs = manifest.get("inputs")
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ArtifactError(f"artifact '{path}': manifest.json has no list of inputs")
    for spec in specs:
        name, shape, align = spec.get("name"), spec.get("shape"), spec.get("align", LEGACY_ALIGN)

        def bad(what, value):
            return ArtifactError(f"artifact '{path}': manifest.json gives input {name!r} "
                                 f"an invalid {what} {value!r}")

        if not isinstance(name, str):
            raise bad("name", name)
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad("shape", shape)
        try:
            np.dtype(spec["dtype"] if isinstance(spec.get("dtype"), str) else object())
        except (TypeError, ValueError):
            raise bad("dtype", spec.get("dtype")) from None
        if isinstance(align, bool) or align not in ALIGNMENTS:
            raise bad("alignment", align)


def load(path: str | Path) -> CompiledModel:
    """Load an artifact written by ``CompiledModel.save`` / ``sparsec compile``, no compiling."""
    from safetensors.numpy import load_file

    from sparsec.targets import registry

    path = Path(path)
    manifest = artifact.read_manifest(path)
    _check_inputs(manifest, path)
    try:
        target = registry.get(manifest["target"])
    except Exception:  # noqa: BLE001
        raise ArtifactError(f"artifact '{path}' is for unknown target {manifest.get('target')!r}") from None
    target.check_loadable(manifest)
    weights_path = path / manifest["weights"]
    try:
        weights = load_file(str(weights_path))
    except Exception:  # noqa: BLE001
        raise ArtifactError(f"artifact '{path}': {manifest['weights']} is not readable") from None
    names = manifest.get("params", [])
    missing = [n for n in names if n not in weights]
    if missing:
        raise ArtifactError(f"artifact '{path}': weights file lacks {missing[0]}")
    try:
        runner = target.load(path / manifest["library"])
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"artifact '{path}': cannot load {manifest['library']}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    files = {name: path / name for name in manifest["files"]}
    return CompiledModel(manifest, runner, files, [weights[n] for n in names])
