"""The instruction sets a CPU kernel's tests compile for, each run only where the host has it."""

from __future__ import annotations

import pytest

ISAS = [("x86-64-v3", "avx2"), ("x86-64-v4", "avx512f")]  # (mcpu, the flag it needs)


def isa_target(mcpu: str, flag: str, cores: int = 2):
    """A TVM llvm target for ``mcpu``; skips the test when the host lacks ``flag``."""
    import tvm

    from sparsec.targets.cpu import cpu_flags

    if flag not in cpu_flags():
        pytest.skip(f"host lacks {flag}")
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": cores})
