"""Scratch directories that an interrupt cannot leave behind.

``tempfile.mkdtemp`` followed by ``try: ... except BaseException: rmtree`` has a window: a
Ctrl-C or SIGTERM (which the CLI turns into ``KeyboardInterrupt``) that lands after the
directory exists but before the ``try`` is entered leaks it. A caller that waits for the
directory to appear and then interrupts hits exactly that window on a loaded machine
(``tests/sparsec/test_faults.py`` did, 1 run in 3 under ``pytest -n 2``). ``scratch_dir``
makes the directory while SIGINT and SIGTERM are only noted, and raises a noted one inside
its guard. (Blocking the signals with ``pthread_sigmask`` is not enough: it is per thread,
the kernel hands the signal to another thread, and Python then runs the handler in the
main thread at once.)
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


def _defer() -> tuple[dict, list] | None:
    """Swap in handlers that only note SIGINT/SIGTERM; (old handlers, noted signals). None
    off the main thread, where Python raises no signal anyway."""
    if threading.current_thread() is not threading.main_thread():
        return None
    noted: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in _DEFERRED}
    return old, noted


def _resume(state: tuple[dict, list] | None) -> None:
    """Put the old handlers back and deliver a noted signal to them."""
    if state is None:
        return
    old, noted = state
    for s, handler in old.items():
        signal.signal(s, handler)
    if noted:
        signal.raise_signal(noted[0])


@contextlib.contextmanager
def scratch_dir(prefix: str, dir: str | Path | None = None, *,  # noqa: A002 - mkdtemp's name
                keep: bool = True) -> Iterator[Path]:
    """A new directory (``tempfile.mkdtemp(prefix=..., dir=...)``), removed if the block
    raises, interrupts included; also removed when the block ends unless ``keep`` (the
    caller moved it or handed it on). A signal that arrives while it is made is raised
    inside the guard, once the directory is known."""
    state = _defer()
    path = None
    try:
        try:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
        finally:
            _resume(state)  # a noted signal is raised here, with `path` set
        yield path
    except BaseException:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
