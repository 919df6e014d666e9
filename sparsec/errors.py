"""Errors sparsec raises on purpose, each with its own exit code.

Every error is one line a person can act on. The CLI prints ``sparsec: error: <message>``
and exits with the class's ``exit_code``; a traceback appears only with ``--debug``.
The table is repeated in README.md ("Errors and exit codes"); keep the two in step.
"""

from __future__ import annotations


class SparsecError(Exception):
    """Base class. ``exit_code`` is what the CLI returns."""

    exit_code = 1
    kind = "error"


class UsageError(SparsecError):
    """A wrong argument: unknown target or layout name, bad --input-shape syntax."""

    exit_code = 2
    kind = "usage"


class ModelError(SparsecError):
    """The model itself is unusable: missing, empty, truncated, not ONNX, fails the
    checker, opset out of range, control flow, symbolic dims without a shape, bad dtypes."""

    exit_code = 3
    kind = "model"


class UnsupportedOpError(ModelError):
    """An op sparsec cannot lower; the message names op, node and the nearest alternative."""

    exit_code = 4
    kind = "unsupported-op"


class LayoutError(SparsecError):
    """A forced layout that does not fit its weight (never silently densified)."""

    exit_code = 5
    kind = "layout"


class ToolchainError(SparsecError):
    """A target whose compiler, linker or runner is missing on this machine."""

    exit_code = 6
    kind = "toolchain"


class CompileError(SparsecError):
    """A pass or a backend failed; the message names the pass, the node and the weight."""

    exit_code = 7
    kind = "compile"


class VerificationError(SparsecError):
    """The compiled model does not match the reference; names the first diverging layer."""

    exit_code = 8
    kind = "verify"


class ArtifactError(SparsecError):
    """An artifact with missing or altered files, or from an incompatible format version."""

    exit_code = 9
    kind = "artifact"


class RunInputError(SparsecError):
    """Inputs given to a compiled model with wrong names, shapes or dtypes."""

    exit_code = 10
    kind = "input"


class CaptureError(SparsecError):
    """A torch module or program that torch.export / torch.onnx.export cannot capture."""

    exit_code = 11
    kind = "capture"


EXIT_INTERRUPTED = 130

ALL_ERRORS = (
    UsageError,
    ModelError,
    UnsupportedOpError,
    LayoutError,
    ToolchainError,
    CompileError,
    VerificationError,
    ArtifactError,
    RunInputError,
    CaptureError,
)


class SparsecWarning(UserWarning):
    """Something worth a person's attention that does not stop the compile
    (e.g. NaN/Inf in a weight, which then stays dense)."""
