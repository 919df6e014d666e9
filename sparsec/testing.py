"""Helpers for testing generated kernels: arrays next to an unreadable page.

A kernel that reads or writes past the end (or before the start) of one of its buffers
usually gets away with it: the bytes next to a buffer belong to some other allocation, and
the output is still right when the stray lanes are dropped. ``guarded_tensor`` puts an
array against a page that has no access rights, so such an access faults (SIGSEGV) instead
of passing silently. TVM takes only 64-byte-aligned data, so an array whose size is not a
multiple of 64 bytes keeps up to 63 bytes of slack before the guard.

Linux (and other systems whose libc has ``mprotect``) only; elsewhere ``guarded_tensor``
returns a plain copy.
"""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

ALIGN = 64  # TVM's DLPack import needs 64-byte-aligned data
PROT_NONE = 0

_keep: list[mmap.mmap] = []  # the mappings live as long as the process


def _mprotect():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.mprotect
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MPROTECT = _mprotect()


def guarded_array(a: np.ndarray, where: str = "end") -> np.ndarray:
    """A copy of ``a`` whose data ends right before (``where="end"``, up to the 64-byte
    alignment) or starts right after (``"start"``) a page without access rights."""
    if where not in ("end", "start"):
        raise ValueError(f"guarded_array: where must be 'end' or 'start', got {where!r}")
    if _MPROTECT is None:
        raise OSError("guarded_array: this system's libc has no mprotect")
    a = np.ascontiguousarray(a)
    page = mmap.PAGESIZE
    size = -(-max(a.nbytes, 1) // ALIGN) * ALIGN
    body = -(-size // page) * page
    m = mmap.mmap(-1, body + page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    guard, offset = (base + body, body - size) if where == "end" else (base, page)
    if _MPROTECT(guard, page, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "guarded_array: mprotect failed")
    _keep.append(m)
    out = np.frombuffer(m, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
    out[...] = a
    return out


def guarded_tensor(a: np.ndarray, where: str = "end"):
    """``guarded_array(a, where)`` as a TVM tensor sharing its memory (no copy)."""
    import tvm

    if _MPROTECT is None:
        return tvm.runtime.tensor(np.ascontiguousarray(a))
    return tvm.runtime.from_dlpack(guarded_array(a, where))
