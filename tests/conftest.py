"""Test-wide settings. pytest -n 2 already puts one worker on each core, so each worker's
TVM thread pool gets one thread (tests check answers, never speed; benchmarks/ measures)."""

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")
