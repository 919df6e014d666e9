"""``python -m benchmarks.calibrate``: a fit over several runs, and its clear errors."""

import json
from pathlib import Path

from benchmarks import calibrate

RECORDED = Path(__file__).resolve().parents[2] / "benchmarks" / "recorded"


def _small_run(tmp_path, name, isa, n=12):
    """The first ``n`` points of the recorded run of ``isa``, as a run of its own."""
    data = json.loads(next(RECORDED.glob(f"kernels-{isa}-*.json")).read_text())
    data["points"] = data["points"][:n]
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_fits_over_several_runs_and_reports_each(tmp_path, capsys):
    a, b = _small_run(tmp_path, "a.json", "avx2"), _small_run(tmp_path, "b.json", "avx2", 20)
    assert calibrate.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"{a} (" in out and f"{b} (" in out and "the fastest of 2 runs (" in out
    assert out.count("fitted constants: fastest layout at") == 3
    assert '"csr_panel4_gflops"' in out


def test_runs_merge_to_each_candidates_fastest_time():
    point = {"shape": [8, 8], "pattern": "unstructured", "density": 0.1, "batch": 1}
    a = [{**point, "candidates_ms": {"dense": 2.0, "csr": 1.0}},
         {**point, "batch": 8, "candidates_ms": {"dense": 3.0, "csr": 5.0}}]
    b = [{**point, "candidates_ms": {"dense": 1.5, "csr": 1.2, "bsr4x4": 0.9}}]
    merged = calibrate.merge([a, b])
    assert [m["candidates_ms"] for m in merged] == [
        {"dense": 1.5, "csr": 1.0, "bsr4x4": 0.9}, {"dense": 3.0, "csr": 5.0}]
    assert a[0]["candidates_ms"] == {"dense": 2.0, "csr": 1.0}  # the inputs stay as they were


def test_runs_of_different_cpus_are_refused(tmp_path, capsys):
    a, b = _small_run(tmp_path, "a.json", "avx2"), _small_run(tmp_path, "b.json", "avx512")
    assert calibrate.main([str(a), str(b)]) == 2
    assert "different CPUs (avx2 on an unnamed CPU, avx512 on" in capsys.readouterr().err
    # The same instruction set on two microarchitectures runs at different rates.
    c = _small_run(tmp_path, "c.json", "avx512")
    data = json.loads(c.read_text())
    data["meta"]["mcpu"] = "znver4"
    c.write_text(json.dumps(data))
    assert calibrate.main([str(b), str(c)]) == 2
    assert "avx512 on znver4" in capsys.readouterr().err


def test_unreadable_or_empty_run_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert calibrate.main([str(bad)]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"points": [{"batch": 1}]}))
    assert calibrate.main([str(empty)]) == 2
    assert "no point" in capsys.readouterr().err
