"""Host detection, the SPARSEC_CPU_MCPU override and the calibrated cost constants."""

import json

import pytest

from sparsec.errors import UsageError
from sparsec.targets import cpu
from sparsec.targetspec import CostConstants


def test_override_builds_for_an_older_cpu(monkeypatch):
    monkeypatch.setenv("SPARSEC_CPU_MCPU", "haswell")
    host = cpu.detect_host()
    assert host.mcpu == "haswell"
    assert "avx512f" not in host.features and host.vector_lanes == 8
    if "avx2" in cpu.cpu_flags():
        assert cpu.isa(host) == "avx2"


def test_override_rejects_an_unknown_cpu(monkeypatch):
    monkeypatch.setenv("SPARSEC_CPU_MCPU", "nonsense9")
    with pytest.raises(UsageError, match="not an x86 CPU LLVM knows"):
        cpu.detect_host()


def test_calibrated_constants_are_loaded_per_isa():
    cost = cpu.calibrated_cost("avx512")
    assert cost != CostConstants()  # the file in targets/calibration, not the defaults
    assert cpu.calibrated_cost("no-such-isa") == CostConstants()


def test_calibration_of_the_cpu_wins_over_its_instruction_set(tmp_path, monkeypatch):
    def write(name, gflops):
        (tmp_path / name).write_text(json.dumps({"cost": {"dense_gflops": gflops}}))

    write("cpu-avx512.json", 100.0)
    write("cpu-avx512-znver4.json", 200.0)
    monkeypatch.setattr(cpu, "CALIBRATION_DIR", tmp_path)
    assert cpu.calibrated_cost("avx512", "znver4").dense_gflops == 200.0
    assert cpu.calibrated_cost("avx512", "sapphirerapids").dense_gflops == 100.0
    assert cpu.calibrated_cost("avx512").dense_gflops == 100.0
    assert cpu.calibrated_cost("avx2", "znver4") == CostConstants()
    host = cpu.HostInfo("znver4", ["avx512f", "avx2", "fma"], 16)
    assert cpu.spec_for(host).cost.dense_gflops == 200.0


def test_spec_follows_the_host():
    host = cpu.HostInfo("x86-64-v4", ["avx512f", "avx2", "fma"], 16)
    spec = cpu.spec_for(host)
    assert spec.vector_lanes == 16 and spec.cost == cpu.calibrated_cost("avx512")


def test_llc_bytes_reads_the_largest_level_from_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                             (2, "Unified", "512K"), (3, "Unified", "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert cpu.llc_bytes(tmp_path) == 32 << 20
    (tmp_path / "index3" / "size").write_text("garbage\n")
    assert cpu.llc_bytes(tmp_path) == 0  # unreadable: no cache term, not a crash
    assert cpu.llc_bytes(tmp_path / "missing") == 0
