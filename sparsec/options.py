"""``CompileOptions``: every knob of a compile travels in this one object.

Nothing reads global flags or the environment; the CLI and the Python API both build one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sparsec.errors import UsageError
from sparsec.layouts import parse_layout


@dataclass
class CompileOptions:
    target: str = "cpu"
    # Forced layouts: "*" applies to every planned op; other keys are node names or
    # weight names (e.g. "fc1", "encoder.0.fc1.weight").
    layouts: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    verify: bool = True
    rtol: float = 1e-4
    atol: float = 1e-4
    seed: int = 0
    shrink_zero_channels: bool = True
    fuse_epilogues: bool = True
    fuse_depthwise: bool = True  # a sparse 1x1 conv computes the depthwise conv after it
    fuse_head: bool = True  # a 1x1 conv computes the mean pool and the linear after it
    num_threads: int | None = None  # None: all cores
    progress: bool = False  # show progress bars (the CLI turns this on for a terminal)

    def __post_init__(self) -> None:
        for key, name in self.layouts.items():
            parse_layout(name)  # raises UsageError naming the bad layout
            if not key:
                raise UsageError("empty op name in a forced layout")

    def forced_layout(self, node: str, weight: str) -> str | None:
        """The layout forced for this op, most specific first: node name, weight name
        (also without a trailing ``.weight``, so ``fc1`` matches ``fc1.weight``), then ``*``."""
        for key in (node, weight, weight.removesuffix(".weight"), "*"):
            if key in self.layouts:
                return parse_layout(self.layouts[key]).name
        return None


_SHAPE = re.compile(r"^\s*([^=\s]+)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*)\s*$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"x=8x512" -> ("x", (8, 512))``. Also accepts commas: ``x=8,512``."""
    m = _SHAPE.match(text)
    if not m:
        raise UsageError(
            f"bad --input-shape {text!r}; expected NAME=D1xD2x... with positive integers, "
            "e.g. x=8x512"
        )
    dims = tuple(int(d) for d in re.split(r"\s*[x,]\s*", m.group(2)))
    if any(d <= 0 for d in dims):
        raise UsageError(f"bad --input-shape {text!r}: every dimension must be positive")
    return m.group(1), dims


def parse_layout_option(text: str) -> tuple[str, str]:
    """``"csr" -> ("*", "csr")``; ``"fc1=bsr4x4" -> ("fc1", "bsr4x4")``."""
    if "=" in text:
        key, _, name = text.rpartition("=")
        key = key.strip()
        if not key:
            raise UsageError(f"bad --layout {text!r}; expected LAYOUT or OP=LAYOUT")
    else:
        key, name = "*", text
    return key, parse_layout(name).name
