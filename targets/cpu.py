"""``--target cpu``: the host x86-64 CPU, compiled by TVM's LLVM backend.

The host is detected at compile time: LLVM's name for it (``mcpu``) and the SIMD features
the OS really exposes (/proc/cpuinfo). The manifest records the features the code was
built for, and loading refuses a CPU that lacks them.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from sparsec.errors import ArtifactError, ToolchainError, UsageError
from sparsec.targetspec import CostConstants, TargetSpec

# The features that change the code we emit, widest first.
KEY_FEATURES = ("avx512f", "avx2", "fma")

SPEC = TargetSpec(
    name="cpu",
    description="host x86-64 CPU (TVM + LLVM; AVX2 / AVX-512 detected)",
    layouts=("dense", "csr", "bsr", "nm", "chw-spmm", "bitmap"),
    vector_lanes=8,
    cost=CostConstants(),
)

# Cost-model constants fitted to measurements (benchmarks/calibrate.py writes them from
# benchmarks.kernels runs): per instruction set and microarchitecture when one was measured
# (cpu-avx512-znver4.json), else per instruction set (cpu-avx512.json, cpu-avx2.json). The
# same ISA runs at different rates on different cores: Zen 4 executes AVX-512 on 256-bit
# units, an Intel Xeon on 512-bit ones.
CALIBRATION_DIR = Path(__file__).parent / "calibration"

# The flat list of steps a `sparsec compile --target cpu` runs (printed by --help).
PIPELINE = (
    "capture      ONNX / torch.export -> onnx_ir.Model with concrete shapes",
    "cleanup      constant folding, identity and dead-node removal",
    "fold         BatchNorm into Conv, transposes into constant weights",
    "analyze      sparsity statistics of every constant MatMul/Gemm/Conv weight",
    "shrink       drop all-zero output channels where consumers can absorb them",
    "epilogues    mark bias / activation / residual chains for fusion",
    "layouts      cost model (or --layout) picks dense, csr, bsr, nm, chw-spmm or bitmap",
    "lower        each planned op + epilogue -> one ai.sparsec node with packed arrays",
    "tvm          TVM ONNX import, sparse TIR kernels, CPU schedules, LLVM codegen",
    "verify       run on seeded inputs against onnxruntime / torch",
)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo, for reports (platform's as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class HostInfo:
    mcpu: str
    features: list[str] = field(default_factory=list)  # KEY_FEATURES present
    vector_lanes: int = 8


def detect_host() -> HostInfo:
    """The host CPU, or the one named by ``SPARSEC_CPU_MCPU`` (an LLVM CPU name such as
    ``haswell``: build for an older x86 than this one, limited to what this CPU has)."""
    from tvm.target import codegen

    flags = cpu_flags()
    override = os.environ.get("SPARSEC_CPU_MCPU")
    if override:
        import tvm

        known = list(codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"})))
        if override not in known:
            raise UsageError(f"SPARSEC_CPU_MCPU={override!r} is not an x86 CPU LLVM knows; "
                             f"for example: haswell, znver3, skylake-avx512, x86-64-v3")
        implied = codegen.llvm_get_cpu_features(
            tvm.target.Target({"kind": "llvm", "mcpu": override}))
        have = [f for f in KEY_FEATURES if f in implied and (not flags or f in flags)]
        return HostInfo(override, have, family_lanes(_family(have)))
    have = [f for f in KEY_FEATURES if f in flags]
    mcpu = codegen.llvm_get_system_cpu()
    if not flags:  # no /proc/cpuinfo: trust LLVM
        return HostInfo(mcpu, list(KEY_FEATURES[1:]), 8)
    # LLVM may name a CPU whose model implies features the hypervisor hides (AMX, AVX-512);
    # then fall back to the generic x86-64 level the OS really offers.
    import tvm

    implied = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    if any(f in implied and f not in flags for f in ("avx512f", "avx2", "amx-tile")):
        mcpu = "x86-64-v4" if "avx512f" in have else "x86-64-v3" if "avx2" in have else "x86-64"
    return HostInfo(mcpu, have, family_lanes(_family(have)))


def _family(features) -> str:
    return "avx512" if "avx512f" in features else "avx2" if "avx2" in features else "x86-64"


def isa(host: HostInfo) -> str:
    """The instruction-set family the code is built for: avx512, avx2 or x86-64."""
    return _family(host.features)


def family_lanes(family: str) -> int:
    """fp32 lanes of an instruction-set family's vectors as the cost model counts them
    (``HostInfo.vector_lanes`` of a host of that family)."""
    return 16 if family == "avx512" else 8


def calibration_file(family: str, mcpu: str | None = None) -> Path | None:
    """The calibration of ``family`` measured on ``mcpu`` (LLVM's CPU name, such as znver4),
    else the family's own; None when neither was recorded."""
    names = ([f"cpu-{family}-{mcpu}.json"] if mcpu else []) + [f"cpu-{family}.json"]
    return next((CALIBRATION_DIR / n for n in names if (CALIBRATION_DIR / n).is_file()), None)


def calibrated_cost(family: str, mcpu: str | None = None) -> CostConstants:
    """The calibrated constants of ``family`` on ``mcpu`` (``calibration_file``), or the
    defaults when none were recorded."""
    path = calibration_file(family, mcpu)
    if path is None:
        return CostConstants()
    data = json.loads(path.read_text())
    known = {f.name for f in fields(CostConstants)}
    return CostConstants(**{k: v for k, v in data["cost"].items() if k in known})


def llc_bytes(cpu_dir: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The size of the host's last-level (unified, level 3 or the highest) cache in bytes,
    from sysfs; 0 when it cannot be read."""
    best = (0, 0)
    try:
        for index in cpu_dir.glob("index*"):
            if (index / "type").read_text().strip() not in ("Unified", "Data"):
                continue
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            best = max(best, (level, int(size.rstrip("KM")) * scale))
    except (OSError, ValueError):
        return 0
    return best[1]


def spec_for(host: HostInfo) -> TargetSpec:
    """SPEC with the host's vector width and the costs calibrated for its instruction set
    and microarchitecture (``calibration_file``); the cache term
    (``CostConstants.llc_bytes``) gets the host's last-level cache when known."""
    cost = calibrated_cost(isa(host), host.mcpu)
    cache = llc_bytes()
    if cache and cost.llc_bandwidth_gbs:
        cost = replace(cost, llc_bytes=cache)
    return replace(SPEC, vector_lanes=host.vector_lanes, cost=cost)


def tvm_target(host: HostInfo | None = None):
    import tvm

    host = host or detect_host()
    return tvm.target.Target({"kind": "llvm", "mcpu": host.mcpu, "num-cores": os.cpu_count() or 1})


class CpuTarget:
    pipeline = PIPELINE
    library_name = "model.so"
    _spec: TargetSpec | None = None

    @property
    def spec(self) -> TargetSpec:
        """The target as the passes see it, for this host (detected once per process)."""
        if self._spec is None:
            self._spec = spec_for(detect_host())
        return self._spec

    def check_toolchain(self) -> None:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise ToolchainError(f"--target cpu builds for x86-64 hosts; this is "
                                 f"{platform.machine()}")
        try:
            import tvm  # noqa: F401
        except ImportError as exc:
            raise ToolchainError(f"apache-tvm is not importable ({exc}); "
                                 f"pip install apache-tvm") from None

    def check_ops(self, proto) -> None:
        from sparsec.codegen.tvm.support import check_supported

        check_supported(proto)

    def host(self) -> HostInfo:
        return detect_host()

    def build(self, model, host: HostInfo, extra_outputs=()):
        from sparsec.codegen.tvm import lower, schedule

        return lower.build(model, tvm_target(host), schedule.relax_pipeline, extra_outputs)

    def export(self, built, path: Path) -> None:
        built.executable.export_library(str(path))

    def check_loadable(self, manifest: dict) -> None:
        need = set(manifest.get("host", {}).get("features", []))
        missing = sorted(need - set(cpu_flags())) if cpu_flags() else []
        if missing:
            raise ArtifactError(
                f"artifact was compiled for a CPU with {', '.join(missing)}, which this CPU "
                "lacks; compile it again here"
            )

    def load(self, lib_path: Path):
        from sparsec.codegen.tvm.runner import load_vm

        return load_vm(lib_path)


TARGET = CpuTarget()
