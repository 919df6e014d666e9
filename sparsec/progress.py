"""Stage progress for long work: a tqdm bar on a terminal, silent otherwise."""

from __future__ import annotations

import sys


class Stages:
    def __init__(self, names: list[str], enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=len(names), desc="sparsec", unit="step", file=sys.stderr,
                             leave=False, bar_format="{desc}: {n_fmt}/{total_fmt} {postfix}")

    def step(self, name: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(name)
            self._bar.update(0)

    def done(self, name: str) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
