"""Run a TVM-compiled library: ``main(*inputs, *params) -> output(s)`` on the host CPU."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def _quiet_stderr():
    """TVM's C++ loader logs a warning per constant scope it loads; keep the terminal clean."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)


def configure_threads(num_threads: int | None) -> None:
    """TVM sizes its thread pool once, from TVM_NUM_THREADS, when it first runs parallel
    code; unset, it takes half the logical CPUs (1 on a 2-vCPU machine). We ask for every
    core unless the caller (or the environment) already chose."""
    if "TVM_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(num_threads or os.cpu_count() or 1)


class VmRunner:
    def __init__(self, executable):
        import tvm
        from tvm import relax

        with _quiet_stderr():
            self._vm = relax.VirtualMachine(executable, tvm.cpu())
        self._params: list = []

    def set_params(self, arrays: list[np.ndarray]) -> None:
        import tvm

        self._params = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs]
        out = self._vm["main"](*args, *self._params)
        if isinstance(out, tvm.runtime.Tensor):
            return [out.numpy()]
        return [o.numpy() for o in out]


def load_vm(lib_path: Path, num_threads: int | None = None) -> VmRunner:
    configure_threads(num_threads)
    import tvm

    with _quiet_stderr():
        lib = tvm.runtime.load_module(str(lib_path))
    return VmRunner(lib)
