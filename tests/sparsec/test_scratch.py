"""Scratch directories survive no interrupt: ``sparsec.scratch.scratch_dir``."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

from sparsec.scratch import scratch_dir


def _mkdtemp_then_interrupted(real):
    """mkdtemp that makes its directory and is then hit by Ctrl-C, before it returns: the
    window in which a plain mkdtemp-then-try leaks the directory."""
    def mkdtemp(*args, **kwargs):
        path = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return path
    return mkdtemp


def test_interrupt_while_the_directory_is_made_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkdtemp", _mkdtemp_then_interrupted(tempfile.mkdtemp))
    with pytest.raises(KeyboardInterrupt):
        with scratch_dir("s-", tmp_path):
            pytest.fail("the interrupt must be raised before the block runs")
    assert list(tmp_path.iterdir()) == []


def test_failure_removes_success_keeps_or_removes(tmp_path):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(ValueError):
        with scratch_dir("a-", tmp_path) as path:
            (path / "f").write_text("x")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
    with scratch_dir("b-", tmp_path) as kept:
        pass
    with scratch_dir("c-", tmp_path, keep=False) as gone:
        (gone / "f").write_text("x")
    assert kept.is_dir() and not gone.exists()
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers are back
