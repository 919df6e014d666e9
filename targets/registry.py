"""Targets by name. Adding a target means adding a module here and one line in ``_MODULES``.

A target module exports ``TARGET``: an object with
  ``spec`` (sparsec.targetspec.TargetSpec: what the passes need),
  ``pipeline`` (the flat list of named steps it runs, for ``--help`` and docs),
  ``check_toolchain()`` (raises ToolchainError when something it needs is missing),
  ``build(model, plan, options, workdir, extra_outputs=()) -> Built`` and
  ``load(artifact_dir, manifest) -> Runner``.
"""

from __future__ import annotations

import importlib
from difflib import get_close_matches

from sparsec.errors import UsageError

# name -> (module, one-line description). Only targets that exist today are listed; the
# next issues add x86-amx, arm, wasm and cuda as files beside cpu.py.
_MODULES: dict[str, tuple[str, str]] = {
    "cpu": ("sparsec.targets.cpu", "the host x86-64 CPU through TVM (AVX2 / AVX-512 detected)"),
}


def names() -> list[str]:
    return list(_MODULES)


def describe() -> list[tuple[str, str]]:
    return [(n, d) for n, (_, d) in _MODULES.items()]


def get(name: str):
    if name not in _MODULES:
        near = get_close_matches(name, _MODULES, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UsageError(f"unknown target '{name}'{hint} Known targets: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name][0]).TARGET
