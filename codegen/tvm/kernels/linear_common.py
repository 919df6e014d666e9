"""Shared pieces of the SparseLinear kernels: target facts, the PrimFunc frame, X transposition.

Every SparseLinear kernel computes ``Y[r, o] = epilogue(sum_k X[r, k] * W[o, k])``. The kernels
are written with TVM's IR builder (plain loops, no blocks) so the loop structure is exactly the
schedule. Two rules keep them correct and fast:

- Every loop starts at 0 (``loop(n)``). TVM 0.27 miscompiles a loop ``for o in range(a, b)``
  whose body holds another loop with bounds that depend on ``o`` (the inner bounds see ``o - a``).
- Vector widths come from the target (``vector_lanes``), never from the machine compiling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T
from tvm.target import codegen as _codegen

from sparsec.codegen.tvm.kernels import epilogue as _epilogue
from sparsec.codegen.tvm.kernels.conv_geometry import pow2_pieces
from sparsec.errors import CompileError
from sparsec.ops import SparseOpSpec

F32 = "float32"
ZERO = tirx.const(0.0, F32)


# ---------------------------------------------------------------- target facts


def _as_target(target) -> tvm.target.Target | None:
    if target is None or isinstance(target, tvm.target.Target):
        return target
    return tvm.target.Target(target)


def _has(feature: str, target) -> bool:
    try:
        return bool(_codegen.target_has_features(feature, target))
    except Exception:  # not an LLVM target, or a feature LLVM does not know there
        return False


def vector_lanes(target, knobs: dict | None = None) -> int:
    """fp32 lanes of the widest SIMD register of ``target`` (AVX-512 16, AVX2 8, NEON/SSE 4).

    ``llvm_get_vector_width`` is not used for x86: in TVM 0.27 it reports 512 bits for any
    x86 CPU name (haswell, znver3), so the features are asked instead.
    """
    if knobs and knobs.get("lanes"):
        return int(knobs["lanes"])
    tgt = _as_target(target)
    if tgt is None:
        return 8
    if _has("avx512f", tgt):
        return 16
    if _has("avx", tgt):
        return 8
    if _has("sse2", tgt) or _has("neon", tgt) or _has("simd128", tgt):
        return 4
    triple = str(tgt.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86", "i686")):
        try:
            bits = int(_codegen.llvm_get_vector_width(tgt))
        except Exception:
            bits = -1
        if bits >= 128:
            return min(bits // 32, 16)
    return 4


def vector_registers(target) -> int:
    """Architectural SIMD registers: 32 with AVX-512 and on AArch64, 16 otherwise."""
    tgt = _as_target(target)
    if tgt is None:
        return 16
    if _has("avx512f", tgt) or _has("neon", tgt):
        return 32
    return 16


def thread_count(target, knobs: dict | None = None) -> int:
    """Cores to parallelize for: knobs["threads"], else the target's num-cores, else the host's."""
    if knobs and knobs.get("threads"):
        return int(knobs["threads"])
    tgt = _as_target(target)
    if tgt is not None:
        cores = tgt.attrs.get("num-cores")
        if cores:
            return int(cores)
    return max(1, os.cpu_count() or 1)


def balanced_splits(costs: np.ndarray, parts: int) -> np.ndarray:
    """Split points ``s[0..parts]`` (int32, s[0]=0, s[-1]=len) with near-equal cost per range."""
    n = len(costs)
    parts = max(1, min(parts, n)) if n else 1
    cum = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.float64))])
    targets = np.linspace(0.0, cum[-1], parts + 1)
    splits = np.searchsorted(cum, targets, side="left").astype(np.int32)
    splits[0], splits[-1] = 0, n
    return np.maximum.accumulate(splits).astype(np.int32)


def row_tasks(costs: np.ndarray, target, knobs: dict | None = None) -> np.ndarray:
    """Per-task output-row ranges for a parallel loop: 4 tasks per thread, balanced by cost."""
    return balanced_splits(costs, 4 * thread_count(target, knobs))


# ---------------------------------------------------------------- the PrimFunc frame


@dataclass
class LinearFunc:
    """The parameters of a SparseLinear PrimFunc while its body is being built.

    Params in order: X [rows, in], the prepared arrays (dict order), bias [out] if the
    epilogue has "bias", residual [rows, out] if it has "residual", Y [rows, out].
    """

    spec: SparseOpSpec
    rows: int
    k: int
    o: int
    X: tirx.Buffer = None
    arrays: dict[str, tirx.Buffer] = field(default_factory=dict)
    bias: tirx.Buffer | None = None
    residual: tirx.Buffer | None = None
    Y: tirx.Buffer = None
    func: tirx.PrimFunc | None = None

    def epilogue(self, acc, r, o):
        """The epilogue of ``spec`` applied to ``acc`` for element (r, o)."""
        return _epilogue.emit(
            acc,
            self.spec.epilogue,
            bias=self.bias[o] if self.bias is not None else None,
            residual=self.residual[r, o] if self.residual is not None else None,
        )


class linear_func:  # noqa: N801 - used as a context manager, like T.prim_func
    """``with linear_func(spec, in_shape, arrays, name) as f: <body>``; then ``f.func``."""

    def __init__(self, spec: SparseOpSpec, in_shape, arrays: dict[str, np.ndarray], name: str):
        rows, k = check_shape(spec, in_shape)
        self.f = LinearFunc(spec, rows, k, spec.out_features)
        self.arrays = arrays
        self.name = name

    def __enter__(self) -> LinearFunc:
        f = self.f
        self._ib = IRBuilder()
        self._ib.__enter__()
        self._pf = T.prim_func()
        self._pf.__enter__()
        T.func_name(self.name)
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        f.X = T.arg("X", T.buffer((f.rows, f.k), F32))
        for name, a in self.arrays.items():
            f.arrays[name] = T.arg(name, T.buffer(tuple(int(d) for d in a.shape), str(a.dtype)))
        if f.spec.has_bias:
            f.bias = T.arg("bias", T.buffer((f.o,), F32))
        if f.spec.has_residual:
            f.residual = T.arg("residual", T.buffer((f.rows, f.o), F32))
        f.Y = T.arg("Y", T.buffer((f.rows, f.o), F32))
        return f

    def __exit__(self, exc_type, exc, tb):
        self._pf.__exit__(exc_type, exc, tb)
        self._ib.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.f.func = self._ib.get()
        return False


def check_shape(spec: SparseOpSpec, in_shape) -> tuple[int, int]:
    """(rows, in) of a static 2-D X whose last dim is ``spec.in_features``; CompileError else."""
    dims = tuple(in_shape)
    if len(dims) != 2 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise CompileError(
            f"codegen/tvm: SparseLinear {spec.entry} needs a static 2-D input, got {dims}"
        )
    rows, k = int(dims[0]), int(dims[1])
    if k != spec.in_features or rows < 1:
        raise CompileError(
            f"codegen/tvm: SparseLinear {spec.entry} input {dims} does not match "
            f"in_features {spec.in_features}"
        )
    return rows, k


# ---------------------------------------------------------------- loops


def loop(n, kind: str = "serial"):
    """A zero-based loop frame (see the module note); ``kind`` serial|parallel|vectorized|unroll."""
    return getattr(T, kind)(0, n)


def prefetch(buf, offset, locality: int = 3) -> None:
    """``llvm.prefetch`` of ``buf`` at element ``offset`` (a read, into the data cache):
    ``locality`` 3 into L1 (prefetcht0), 2 into L2 (prefetcht1)."""
    T.evaluate(T.call_llvm_intrin(
        "void", "llvm.prefetch.p0", buf.access_ptr("r", offset=offset), tirx.const(0, "int32"),
        tirx.const(locality, "int32"), tirx.const(1, "int32")))


def bind(expr):
    """Bind a PrimExpr to a variable (evaluated once); Python ints stay constants."""
    return expr if isinstance(expr, (int, np.integer)) else T.Bind(expr)


def i32(expr):
    """An index (scalar or vector) as int32, from int8/int16/int32 index arrays."""
    lanes = tvm.DataType(str(expr.ty)).lanes
    want = "int32" if lanes == 1 else f"int32x{lanes}"
    return expr if str(expr.ty) == want else T.Cast(want, expr)


CHUNK_TERMS = 128  # terms in a partial sum of a long reduction (see ``sum_in_chunks``)


def chunk_size(longest: int, terms_per_item: int = 1) -> int:
    """Items per partial sum when the longest reduction has ``longest`` items of
    ``terms_per_item`` terms each; 0 (no chunks) when it is short enough to sum at once."""
    if longest * terms_per_item <= 2 * CHUNK_TERMS:
        return 0
    return max(1, CHUNK_TERMS // terms_per_item)


def fold_chains(acc, size: int, chains: int) -> None:
    """acc[0:size] += acc[c*size : (c+1)*size] for every chain c > 0: the independent
    accumulator sets a walk keeps to hide FMA latency, summed into the first."""
    if chains < 2:
        return
    with T.vectorized(0, size) as l:
        total = acc[l]
        for c in range(1, chains):
            total = total + acc[c * size + l]
        T.buffer_store(acc, total, [l])


def sum_in_chunks(start, count, chunk: int, walk, acc, size: int):
    """Sum items start .. start+count-1 in partial sums of ``chunk`` items; returns the flat
    buffer whose first ``size`` elements hold the sum.

    ``walk(first, n)`` zeroes the kernel's accumulators and leaves the sum of items
    first..first+n-1 in ``acc[0:size]`` (a flat buffer). With ``chunk`` 0 that is one walk,
    and ``acc`` is the result; otherwise each chunk's sum is added to a total. One running
    float32 sum over k terms errs like k; partial sums err like chunk + k/chunk
    (onnxruntime's MLAS does the same): at k = 4096 that is the difference between 4e-4
    and 6e-5 on outputs near 250.
    """
    if not chunk:
        walk(start, count)
        return acc
    total = T.decl_buffer((size,), F32, scope="local")
    with T.vectorized(0, size) as l:
        T.buffer_store(total, ZERO, [l])

    def part(first, n):
        walk(first, n)
        with T.vectorized(0, size) as l:
            T.buffer_store(total, total[l] + acc[l], [l])

    with loop(count // chunk) as c:
        part(start + c * chunk, chunk)
    part(start + count // chunk * chunk, count % chunk)
    return total


# CPUs (LLVM names, by prefix) whose AVX-512 gather is slower than loading lane by lane.
SLOW_GATHER_CPUS = ("znver",)


# CPUs (LLVM names, by prefix) on which the dense GEMM streams a big weight faster without
# software prefetches (``linear_dense``): on Zen 4 (2 threads, A/B in one process against
# prefetching 32 k steps ahead) 4096x4096 at 8 rows 3.26 -> 1.59 ms (onnxruntime 2.08), at 14
# rows 5.53 -> 2.51, at 2 rows 1.54 -> 1.39; 2048x8192 at 4 rows 1.76 -> 1.61. On Zen 3 the
# prefetches were the 1.2-1.5x faster ones.
NO_PREFETCH_CPUS = ("znver4", "znver5")


def _mcpu(target) -> str:
    tgt = _as_target(target)
    return str((tgt.attrs.get("mcpu", "") if tgt is not None else "") or "")


def software_prefetch(target) -> bool:
    """Prefetch a streamed weight ahead of the loads (``linear_dense``)? Not on
    ``NO_PREFETCH_CPUS``."""
    return not _mcpu(target).startswith(NO_PREFETCH_CPUS)


def hardware_gather(target, lanes: int) -> bool:
    """Use AVX-512 vgatherdps? On the Intel Xeon it was 2x faster than TVM's per-lane
    loads (AVX2's gather is not). On AMD Zen 4 it is the slower one: the one-row csr
    kernel without it ran 1.2-1.7x faster (2 threads, A/B in one process: 1024x1024 at
    density 0.1 0.0257 -> 0.0167 ms, 4096x4096 at 0.1 0.325 -> 0.188, 3072x768 at 0.05
    0.033 -> 0.020), so not on ``SLOW_GATHER_CPUS``."""
    return (lanes == 16 and _has("avx512f", _as_target(target))
            and not _mcpu(target).startswith(SLOW_GATHER_CPUS))


def gather(x, row, cols, lanes: int, hw: bool):
    """x[row, cols] for an int32 vector ``cols``: a float32 vector of ``lanes``."""
    if hw:
        return T.call_llvm_pure_intrin(
            f"float32x{lanes}",
            "llvm.x86.avx512.mask.gather.dps.512",
            T.Broadcast(ZERO, lanes),
            x.access_ptr("r", offset=row * int(x.shape[1])),
            cols,
            T.Broadcast(tirx.const(True, "bool"), lanes),
            tirx.const(4, "int32"),  # byte scale of the indices
        )
    return x[row, cols]  # TVM loads lane by lane


# ---------------------------------------------------------------- X transposed for the rows path


@dataclass(frozen=True)
class RowBlocks:
    """Rows padded to ``padded`` and cut in blocks of ``width``; the rows after the last
    full block go in narrower blocks of power-of-two vectors (``tail``).

    The block at row r0 with w rows lives in the scratch ``XT`` at offset ``r0 * k``, laid
    out [k, w] so its rows are contiguous. A tail of 3, 5 or 6 vectors in one block made
    LLVM split its accumulators lane by lane: 4x slower (3 vectors), 0.73x the time of the
    2-vector path (6 vectors, 4096x4096 at 112 rows).
    """

    rows: int
    padded: int
    width: int
    lanes: int = 1

    @property
    def full(self) -> int:
        return self.padded // self.width

    @property
    def tail(self) -> list[tuple[int, int]]:
        """(first row, width) of each block after the full ones."""
        rest = self.padded - self.full * self.width
        return [(self.full * self.width + r0 * self.lanes, n * self.lanes)
                for r0, n in pow2_pieces(rest // self.lanes)]

    @property
    def widths(self) -> list[int]:
        return [self.width] * self.full + [w for _, w in self.tail]

    def each(self, emit) -> None:
        """``emit(r0, width)`` for every block: one loop over the full-width blocks (its
        body emitted once), then each tail block."""
        if self.full:
            with loop(self.full) as b:
                emit(b * self.width, self.width)
        for r0, w in self.tail:
            emit(r0, w)


def row_blocks(rows: int, lanes: int, block_vectors: int) -> RowBlocks:
    padded = -(-rows // lanes) * lanes
    return RowBlocks(rows, padded, min(padded, block_vectors * lanes), lanes)


def transpose_x(f: LinearFunc, blocks: RowBlocks):
    """Emit ``XT`` (scratch) = X transposed into row blocks; padding rows are zero.

    Rows of a block that are all valid go lanes x lanes squares at a time: lanes vector
    loads along X's rows, a transposition in registers (``transpose_square``), lanes vector
    stores. Gathering a column of the block instead (a scalar load per element, rows k
    floats apart, so the same L1 sets for every row) cost 1.1 ms for 128 x 3072 in
    64-row blocks, against 0.1 ms this way; X's last k % lanes columns are still gathered.
    """
    k, width, lanes = f.k, blocks.width, blocks.lanes
    xt = T.decl_buffer((blocks.padded * k,), F32, scope="global")
    kc = 64  # columns per parallel task (a multiple of every lanes)
    squares = lanes > 1 and (lanes & (lanes - 1)) == 0

    def gathered(r0, w, valid, base, col):
        """Column col of the block at r0 (w rows, the first ``valid`` of them real)."""
        if valid == w:
            with T.vectorized(0, w) as r:
                T.buffer_store(xt, f.X[r0 + r, col], [base + col * w + r])
            return
        with loop(valid) as r:
            T.buffer_store(xt, f.X[r0 + r, col], [base + col * w + r])
        with T.vectorized(0, w - valid) as r:
            T.buffer_store(xt, ZERO, [base + col * w + valid + r])

    def block(r0, w, valid, kb, nk):
        base = r0 * k
        if not (squares and valid == w):
            with loop(nk) as kk:
                gathered(r0, w, valid, base, kb * kc + kk)
            return
        with loop(nk // lanes) as cg:
            c0 = kb * kc + cg * lanes
            for g in range(w // lanes):
                vecs = transpose_square([
                    T.Bind(f.X[r0 + g * lanes + i, T.Ramp(c0, 1, lanes)]) for i in range(lanes)])
                for j in range(lanes):
                    T.buffer_store(xt, vecs[j], [T.Ramp(base + (c0 + j) * w + g * lanes, 1, lanes)])
        with loop(nk % lanes) as kk:
            gathered(r0, w, valid, base, kb * kc + nk // lanes * lanes + kk)

    valid_blocks = f.rows // width  # full blocks whose rows are all real (the last may not be)
    with loop(-(-k // kc), "parallel") as kb:
        nk = bind(T.min(kc, k - kb * kc))
        with loop(valid_blocks) as b:
            block(b * width, width, width, kb, nk)
        rest = [(b * width, width) for b in range(valid_blocks, blocks.full)] + blocks.tail
        for r0, w in rest:
            block(r0, w, max(0, min(w, f.rows - r0)), kb, nk)
    return xt


def epilogue_lanes(f: LinearFunc, acc, r0, width: int, o, offset: int = 0):
    """acc[offset + l] = epilogue(acc[offset + l]) for rows r0 + l of output column o,
    vectorized over all lanes (padding lanes read a clamped residual row)."""
    last = f.rows - 1
    with T.vectorized(0, width) as l:
        a = offset + l
        T.buffer_store(acc, f.epilogue(acc[a], T.min(r0 + l, last), o), [a])


def store_row_lanes(f: LinearFunc, acc, r0, width: int, o, offset: int = 0):
    """Y[r0 + l, o] = epilogue(acc[offset + l]) for the valid lanes l < width; the stores
    are scalar, one per valid row, since Y is row-major (``transpose_store`` does a group
    of output columns at once)."""
    epilogue_lanes(f, acc, r0, width, o, offset)
    valid = min(width, f.rows - r0) if isinstance(r0, int) else T.min(width, f.rows - r0)
    with loop(valid) as l:
        T.buffer_store(f.Y, acc[offset + l], [r0 + l, o])


def transpose_square(vecs: list) -> list:
    """The lanes x lanes square whose rows are ``vecs`` (lanes vectors of lanes lanes),
    transposed in registers: log2(lanes) butterfly stages, each swapping the off-diagonal
    blocks of every 2s x 2s block with two-vector shuffles (lanes * log2(lanes) shuffles)."""
    lanes = len(vecs)
    s = lanes // 2
    while s >= 1:
        lo = [j if j & s == 0 else lanes + j - s for j in range(lanes)]
        hi = [j + s if j & s == 0 else lanes + j for j in range(lanes)]
        new = list(vecs)
        for i in range(lanes):
            if i & s == 0:
                pair = [vecs[i], vecs[i + s]]
                new[i] = T.Bind(tirx.Shuffle(pair, lo))
                new[i + s] = T.Bind(tirx.Shuffle(pair, hi))
        vecs = new
        s //= 2
    return vecs


def transpose_store(f: LinearFunc, stage, r0, width: int, o0, lanes: int, offset=0,
                    stride: int | None = None):
    """Y[r0 + l, o0 + g] = stage[offset + g * stride + l] for g < lanes and the valid rows
    l < width (``stride`` defaults to ``width``).

    ``stage`` holds the finished outputs of ``lanes`` consecutive output columns, one row of
    ``width`` rows each. Each lanes x lanes square is transposed in registers (log2(lanes)
    butterfly stages, each swapping the off-diagonal blocks of every 2s x 2s block with
    two-vector shuffles: lanes * log2(lanes) shuffles) and stored as one vector of ``lanes``
    outputs per row: 16 vector stores instead of 256 scalar ones (AVX-512)."""
    stride = width if stride is None else stride
    for h in range(width // lanes):
        vecs = transpose_square([T.Bind(stage[T.Ramp(offset + g * stride + h * lanes, 1, lanes)])
                                 for g in range(lanes)])
        for l in range(lanes):
            r = r0 + h * lanes + l
            with T.If(r < f.rows):
                with T.Then():
                    T.buffer_store(f.Y, vecs[l], [r, T.Ramp(o0, 1, lanes)])
