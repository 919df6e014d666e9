"""Engines timed alone, each in a worker process of its own, taking turns (the zoo
benchmark's comparison with DeepSparse, ``benchmarks.models.against_deepsparse``):

- ``alone_loop``: the median ms of back-to-back calls after a warm-up;
- ``serve``: a worker that blocks on stdin and times a block of calls (``alone_loop``) per
  "go" line; its source and ``alone_loop``'s are the DeepSparse worker's script
  (``DEEPSPARSE_WORKER``), which runs in DeepSparse's own interpreter;
- ``paired_rounds``: two workers (or more) taking turns block by block, so both blocks of
  a round see the same moment of a shared host.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Rounds of a process pair against DeepSparse: blocks of calls, the two workers taking
# turns (``paired_rounds``). Until 2026-12-01 20:40 each process timed one block and the
# pair's two blocks were a process start apart (5-10 s): a load spike on one of them set
# the pair's ratio, and three pairs of MobileNetV2-224 at 0% ranged 0.56-1.90x in one run.
ROUNDS = 7


def alone_loop(fn, warm_s: float = 0.2, measure_s: float = 0.5, calls: int = 30) -> float:
    """Median ms of back-to-back calls of ``fn`` after ``warm_s`` of them: at least ``calls``
    and as many as take ``measure_s``. Every engine timed alone uses it (its source is part
    of ``DEEPSPARSE_WORKER``, through ``serve``, and of the kernel benchmark's DeepSparse
    script). 30 calls after one, as before, were 4.5 ms of a 0.15 ms MLP, measured before
    the fresh process was warm: the same artifact took 0.15, 0.29 and 0.17 ms in three
    children (2026-12-01, 14:25). Against onnxruntime the engines run in interleaved blocks
    instead, 3 calls for a 100 ms model, the first after the other engine has thrashed the
    caches: BERT-base at 50% ran 74-80 ms back to back and 89-92 ms in those blocks
    (2026-12-01)."""
    import time

    import numpy as np

    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    while time.perf_counter() - t0 < warm_s:
        fn()
    times = []
    for _ in range(max(calls, int(measure_s / max(one, 1e-6)))):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def serve(fn, pause_s: float = 0.1) -> None:
    """A timing worker: warm ``fn`` up (``alone_loop``), print a "ready" line, then for each
    "go" line on stdin pause ``pause_s`` (the other engine's threads stop spinning), call
    ``fn`` back to back for a block (``alone_loop``: 0.05 s to warm the caches the other
    engine used, then 0.3 s) and print the block's median ms; return at EOF. Both engines
    timed alone serve this way (its source is part of ``DEEPSPARSE_WORKER``)."""
    import json
    import sys
    import time

    alone_loop(fn)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            return
        time.sleep(pause_s)
        ms = alone_loop(fn, warm_s=0.05, measure_s=0.3, calls=10)
        print(json.dumps({"ms": ms}), flush=True)


DEEPSPARSE_WORKER = inspect.getsource(alone_loop) + inspect.getsource(serve) + r"""
import sys, numpy as np
from deepsparse import Engine
model, inputs = sys.argv[1], sys.argv[2]
with np.load(inputs, allow_pickle=False) as z:
    xs = [z[k] for k in z.files]
eng = Engine(model=model, batch_size=None)  # the shapes are the exported ones (a KV cache
# is not batch-first: overriding its first dimension breaks the graph)
serve(lambda: eng(xs))
"""


def paired_rounds(cmds: dict[str, list[str]], rounds: int = ROUNDS,
                  timeout_s: float = 1800) -> dict[str, list[float]] | None:
    """Start one worker (``serve``) per command, then ``rounds`` rounds in which each times
    a block of calls while the other waits, the order swapped every round: per worker, the
    blocks' median ms; None, said on stderr, when a worker fails. The host's load moves
    over seconds; two blocks of one round are a second apart."""
    import select

    cwd = Path(__file__).resolve().parent.parent
    procs: dict[str, subprocess.Popen] = {}
    errs: dict[str, object] = {}

    def read(name: str) -> dict | None:
        p = procs[name]
        ready, _, _ = select.select([p.stdout], [], [], timeout_s)
        line = p.stdout.readline() if ready else ""
        if not line:
            p.kill()
            p.wait()
            errs[name].seek(0)
            tail = (errs[name].read().strip().splitlines() or ["no answer"])[-1]
            print(f"  {name} worker failed: {tail}", file=sys.stderr)
            return None
        return json.loads(line)

    try:
        for name, cmd in cmds.items():
            errs[name] = tempfile.TemporaryFile("w+")
            procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=errs[name], text=True, cwd=cwd)
        if any(read(name) is None for name in cmds):
            return None
        per: dict[str, list[float]] = {name: [] for name in cmds}
        names = list(cmds)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                procs[name].stdin.write("go\n")
                procs[name].stdin.flush()
                res = read(name)
                if res is None:
                    return None
                per[name].append(res["ms"])
        return per
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.stdin.close()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in errs.values():
            f.close()
