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


ALIGN = 64  # what TVM allocates, and what a library built before ``unaligned`` needs


def _aligned(x: np.ndarray, align: int = ALIGN) -> np.ndarray:
    """``x`` itself when C-contiguous and ``align``-byte aligned, else an aligned copy.

    An alignment no larger than the element's is numpy's own ``aligned`` flag, a bit test;
    reading the address (``ctypes.data``) costs ~3 us a call."""
    flags = x.flags
    if flags.c_contiguous and (flags.aligned if align <= x.dtype.alignment else
                               x.ctypes.data % align == 0):
        return x
    buf = np.empty(x.nbytes + ALIGN, np.uint8)
    off = (-buf.ctypes.data) % ALIGN
    y = buf[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
    y[...] = x
    return y


SPIN_COUNT = 10000  # sched_yield calls a TVM worker makes before it sleeps (TVM: 300000)


def configure_threads(num_threads: int | None) -> None:
    """TVM sizes its thread pool once, from TVM_NUM_THREADS, when it first runs parallel
    code; unset, it takes half the logical CPUs (1 on a 2-vCPU machine). We ask for every
    core unless the caller (or the environment) already chose.

    Its idle workers spin on ``sched_yield`` TVM_THREAD_POOL_SPIN_COUNT times before they
    sleep: 300000 by default, about 0.22 s of a whole core after every call on the CI
    machine, which slows whatever the user runs next. ``SPIN_COUNT`` is a few ms, still far
    longer than the gaps between a model's kernels or between calls in a loop
    (MobileNetV2-96 back to back took 1.01x the time it takes at TVM's default, median of 8
    process pairs). The environment's value wins."""
    if "TVM_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(num_threads or os.cpu_count() or 1)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(SPIN_COUNT))


class VmRunner:
    def __init__(self, executable):
        import tvm
        import tvm_ffi
        from tvm import relax

        with _quiet_stderr():
            self._vm = relax.VirtualMachine(executable, tvm.cpu())
        # Looked up once: every lookup or import on the call path costs ~1 us, and small
        # models run in tens of microseconds.
        self._main = self._vm["main"]
        self._from_dlpack = tvm_ffi.from_dlpack  # tvm.runtime's insists on 64 bytes
        self._tensor = tvm.runtime.tensor
        self._tensor_type = tvm.runtime.Tensor
        self._params: list = []
        self._fresh: list[bool] = []
        self._align: list[int] = []

    def set_fresh_outputs(self, fresh: list[bool]) -> None:
        """Outputs the library allocates anew on every call (``lower.fresh_outputs``): they
        are handed out without a copy. The rest are copied."""
        self._fresh = list(fresh)

    def set_input_align(self, align: list[int]) -> None:
        """Bytes of alignment the library needs of each input (``unaligned``); inputs not
        listed need 64."""
        self._align = [int(a) for a in align]

    def set_params(self, arrays: list[np.ndarray]) -> None:
        """The weights, shared with TVM without a copy (DLPack) once 64-byte aligned: the
        model's weights live in memory once, not once in numpy and again in TVM."""
        self._held = [_aligned(np.asarray(a, order="C")) for a in arrays]
        self._params = [self._from_dlpack(a, require_alignment=ALIGN, require_contiguous=True)
                        if a.size else self._tensor(a) for a in self._held]

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # Zero-copy in and out through DLPack (tvm.runtime.tensor copies: ~25 us a call).
        # A library built by ``lower.build`` needs its inputs aligned to their element size
        # only (``unaligned``); older ones need 64 bytes, and a misaligned input is copied.
        # An output is copied unless it is fresh: one may be a view of an input, a weight or
        # a constant of the library, and writing to a result must not change those. Fresh
        # ones save a copy of every output (3072 outputs at 128 rows: 0.1-0.2 ms).
        args = []
        align = self._align if len(self._align) == len(inputs) else [ALIGN] * len(inputs)
        for x, a in zip(inputs, align):
            x = _aligned(x, a)
            args.append(self._from_dlpack(x, require_alignment=a, require_contiguous=True)
                        if x.size else self._tensor(x))
        out = self._main(*args, *self._params)
        outs = [out] if isinstance(out, self._tensor_type) else list(out)
        fresh = self._fresh if len(self._fresh) == len(outs) else [False] * len(outs)
        return [np.from_dlpack(o) if f else np.from_dlpack(o).copy() for o, f in zip(outs, fresh)]


def load_vm(lib_path: Path, num_threads: int | None = None) -> VmRunner:
    configure_threads(num_threads)
    import tvm

    with _quiet_stderr():
        lib = tvm.runtime.load_module(str(lib_path))
    return VmRunner(lib)
