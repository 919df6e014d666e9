"""Timing engines side by side in one process, each at its defaults.

onnxruntime runs as its users run it: its thread pool spin-waits between runs. Turning the
spinning off (``session.intra_op.allow_spinning=0``, what sparsec's benchmarks did until
2026-11-30) made onnxruntime 1.16-1.53x slower on single MatMuls of 0.15-2.4 ms and about
1.07x slower on BERT-base, measured on the CI machine (AMD EPYC, 2 cores); only the
slowest layers (26 ms) were unaffected. That handicapped the peer.

A spinning pool keeps a core busy for a while after its last run, and on 2 cores that slows
whatever runs next. Measured on the CI machine from the CPU time of the process's threads
(``/proc/self/task/*/schedstat``) after a block of calls: onnxruntime's pool spins for about
50 ms, and TVM's, at its default (300000 ``sched_yield`` calls a worker), for about 220 ms.
A 20 ms pause, what ``settle()`` was until 2026-12-01, left the next engine's block in the
other's spin: MobileNetV2-96's 24x24 block took sparsec 0.37 ms 20 ms after onnxruntime's
block and 0.085 ms 0.1-0.5 s after it, and onnxruntime timed 20 ms after sparsec ran
against a spinning TVM worker for its whole block.

So ``settle()`` waits until the other threads of the process have gone quiet (at most
``QUIET_MAX_S``), and sparsec's runtime asks TVM's workers to spin for 10000 yields
(``codegen.tvm.runner.configure_threads``: a few ms; MobileNetV2-96 back to back took
1.01x the time it takes at TVM's default, median of 8 process pairs), so they no longer
hold a core for 0.2 s after every call.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PAUSE_S = 0.02  # the least pause
QUIET_MAX_S = 0.5  # the longest wait for the other threads to go quiet
_WINDOW_S = 0.005
_QUIET_SHARE = 0.1  # of a window's time on a CPU, all other threads together


def _others_cpu_ns() -> int | None:
    """CPU time so far of this process's threads but the calling one, in ns; None where
    /proc does not tell."""
    me = str(threading.get_native_id())
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def settle() -> None:
    """Let the thread pools of the engine timed before go idle (module doc): a pause of
    ``PAUSE_S``, then windows of 5 ms until the other threads used under a tenth of one
    between them, or ``QUIET_MAX_S`` passed."""
    time.sleep(PAUSE_S)
    prev = _others_cpu_ns()
    if prev is None:
        time.sleep(QUIET_MAX_S / 5)
        return
    deadline = time.perf_counter() + QUIET_MAX_S
    while time.perf_counter() < deadline:
        time.sleep(_WINDOW_S)
        cur = _others_cpu_ns()
        if cur is None or cur - prev < _QUIET_SHARE * _WINDOW_S * 1e9:
            return
        prev = cur


def ort_session(model, threads: int | None = None):
    """An onnxruntime CPU session at its default settings (spin-waiting on), quiet logging.
    ``model``: an ``onnx.ModelProto``, serialized bytes or a path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
