"""Small helpers shared by the CPU schedule rules (``schedule_*.py``).

Loop-level recipes on a ``tvm.s_tir.Schedule``: pick a vector factor that divides an
extent, vectorize an innermost loop, fuse and parallelize outer loops when there is enough
work, and read which block iter vars index a buffer access. The SIMD width always comes
from the target (``llvm_get_vector_width``), never from the host CPU.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target
from tvm.target.codegen import llvm_get_cpu_features, llvm_get_vector_width
from tvm.tirx.analysis import undefined_vars

# Below this many output elements a parallel launch costs more than it saves.
MIN_PARALLEL_ELEMS = 16384


def vector_bits(target: Target) -> int:
    """Width in bits of the target's widest SIMD register (128 when unknown).

    ``llvm_get_vector_width`` alone is not enough: in TVM 0.27 it reports the host's width
    for any x86 ``mcpu`` (512 for "haswell" on an AVX-512 host), so it is capped by the
    target's own CPU features: AVX-512F -> 512, AVX -> 256, other x86 / NEON / SIMD128 -> 128.
    """
    if target.kind.name != "llvm":
        return 128
    bits = int(llvm_get_vector_width(target))
    if bits <= 0:
        bits = 128
    try:
        feats = {str(f) for f in llvm_get_cpu_features(target)}
    except Exception:  # noqa: BLE001 - unknown CPU: trust the width alone
        return bits
    if "avx512f" in feats:
        cap = 512
    elif "avx" in feats:
        cap = 256
    else:
        cap = 128
    return min(bits, cap)


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """Elements of ``dtype_bits`` in the target's widest SIMD register (at least 1)."""
    return max(vector_bits(target) // dtype_bits, 1)


def block_lanes(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: Target) -> int:
    """Vector lanes for the dtype the block writes."""
    writes = sch.get(block).writes
    bits = writes[0].source.dtype.bits if writes else 32
    return vector_lanes(target, max(int(bits), 8))


def extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    """The loop's constant extent, or None when it is symbolic."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def vector_factor(ext: int | None, lanes: int) -> int:
    """The vector width for a loop of extent ``ext``; 0 when it should stay scalar.

    The widest of ``lanes``, ``lanes/2``, ... down to 4 that divides ``ext``; otherwise an
    extent between 4 and ``lanes`` (7, 14) is one odd-width vector that LLVM pads.
    """
    if ext is None or ext < 4:
        return 0
    width = lanes
    while width >= 4:
        if ext % width == 0:
            return width
        width //= 2
    return ext if ext <= lanes else 0


def vectorize_innermost(
    sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int
) -> tuple[s_tir.schedule.LoopRV | None, s_tir.schedule.LoopRV | None]:
    """Split ``loop`` by a dividing vector factor and vectorize the inner part.

    Returns ``(outer, vec)``; ``outer`` is None when the loop was vectorized whole and
    ``vec`` is None when no factor fits (the loop is then left as is and returned as outer).
    """
    ext = extent(sch, loop)
    width = vector_factor(ext, lanes)
    if width == 0:
        return loop, None
    if width == ext:
        sch.vectorize(loop)
        return None, loop
    outer, vec = sch.split(loop, factors=[None, width])
    sch.vectorize(vec)
    return outer, vec


def parallelize(
    sch: s_tir.Schedule, loops: list[s_tir.schedule.LoopRV], work: int | None
) -> s_tir.schedule.LoopRV | None:
    """Fuse ``loops`` (outermost first, adjacent) and mark the result parallel.

    ``work`` is the number of elements the nest computes; below ``MIN_PARALLEL_ELEMS`` the
    loops are fused but stay serial. Returns the fused loop, or None when ``loops`` is empty.
    """
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work is None or work >= MIN_PARALLEL_ELEMS:
        if extent(sch, fused) != 1:
            sch.parallel(fused)
    return fused


def loop_product(sch: s_tir.Schedule, loops: list[s_tir.schedule.LoopRV]) -> int | None:
    """Product of constant loop extents, None if any is symbolic."""
    total = 1
    for loop in loops:
        ext = extent(sch, loop)
        if ext is None:
            return None
        total *= ext
    return total


def index_vars(region) -> list[set]:
    """For each dimension of a buffer access, the set of variables its index uses."""
    return [set(undefined_vars(rng.min)) for rng in region.region]


def iter_var_kinds(block: s_tir.SBlock) -> dict:
    """Map each block iter var to "S" (data parallel), "R" (reduction) or "O" (other)."""
    kinds = {}
    for iv in block.iter_vars:
        if iv.iter_type == tirx.IterVar.DataPar:
            kinds[iv.var] = "S"
        elif iv.iter_type == tirx.IterVar.CommReduce:
            kinds[iv.var] = "R"
        else:
            kinds[iv.var] = "O"
    return kinds
