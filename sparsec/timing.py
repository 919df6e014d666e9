"""Timing engines side by side in one process, each at its defaults.

onnxruntime runs as its users run it: its thread pool spin-waits between runs. Turning the
spinning off (``session.intra_op.allow_spinning=0``, what sparsec's benchmarks did until
2026-11-30) made onnxruntime 1.16-1.53x slower on single MatMuls of 0.15-2.4 ms and about
1.07x slower on BERT-base, measured on the CI machine (AMD EPYC, 2 cores); only the
slowest layers (26 ms) were unaffected. That handicapped the peer.

A spinning pool keeps its cores busy for a while after its last run, and on 2 cores that
slows whatever runs next: a sparsec layer timed right after onnxruntime's block took 0.26
against 0.17 ms alone. So every engine's block of calls starts after ``settle()``, a pause
long enough for the pools of onnxruntime, TVM and torch to go idle (20 ms: 0.185 ms, the
same as after a non-spinning onnxruntime).
"""

from __future__ import annotations

import time
from pathlib import Path

PAUSE_S = 0.02


def settle() -> None:
    """Let the thread pools of the engine timed before go idle (module doc)."""
    time.sleep(PAUSE_S)


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
