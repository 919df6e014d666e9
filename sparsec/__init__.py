"""sparsec: a compiler that turns the zeros of pruned neural networks into real speed.

    import sparsec
    cm = sparsec.compile("model.onnx", target="cpu")
    y = cm(x)
    cm.save("model.sparsec"); cm2 = sparsec.load("model.sparsec")
"""

__version__ = "0.1.0"

from sparsec.errors import SparsecError  # noqa: E402
from sparsec.options import CompileOptions  # noqa: E402


def compile(source, **kw):  # noqa: A001 - the API's name
    """See ``sparsec.api.compile``."""
    from sparsec.api import compile as _compile

    return _compile(source, **kw)


def inspect(source, **kw):
    """See ``sparsec.api.inspect``."""
    from sparsec.api import inspect as _inspect

    return _inspect(source, **kw)


def load(path):
    """Load a saved artifact (``sparsec.runtime.load``)."""
    from sparsec.runtime import load as _load

    return _load(path)


__all__ = ["compile", "inspect", "load", "CompileOptions", "SparsecError", "__version__"]
