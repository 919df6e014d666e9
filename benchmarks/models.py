"""End-to-end zoo benchmark: each zoo model pruned to several sparsities, compiled by
sparsec, against onnxruntime (the same pruned model, run densely), torch eager and, when
given, DeepSparse 1.8.

    python -m benchmarks.models [--quick] [--model NAME ...] [--level 0.9 ...]
                                [--out benchmarks/results] [--deepsparse-python PY]
                                [--processes 3]

For every (model, level), level being a sparsity (0, 0.5, 0.8, 0.9, 0.95, and 0.7 for the
GPT-2 decode goal) or the pattern 2:4, in the zoo's prunable layers by magnitude, per layer:

- the model is exported to ONNX (``sparsec.models.zoo.export.to_onnx``), compiled by sparsec
  (verified against onnxruntime) and saved; its artifact size is compared with the ONNX
  file's;
- sparsec and onnxruntime are timed in this process, interleaved round by round (median ms;
  each at its defaults, with a pause before every block of calls: ``sparsec.timing``). The
  speed-up is the median of the per-round ratios, shown with their lowest and highest
  ("1.45x (1.38-1.52)"): on a shared host a whole-run median can move 30% between runs,
  the ratio within a round much less. Goals are judged on that median;
- torch eager (``torch.no_grad``) is timed in a child process of its own, since its OpenMP
  pool disturbs TVM's in the same process;
- peak memory: each engine loads the model and runs it in a fresh child process; the
  figure is its peak RSS while running over its RSS after the imports (``child``);
- DeepSparse, with ``--deepsparse-python``, runs in that interpreter (it pins onnx<1.15),
  timed back to back in a worker process of its own; sparsec's artifact is timed the same
  way in a worker (``sparsec alone``). The two workers take turns for ``ROUNDS`` blocks of
  calls (``benchmarks.workers``), a fresh pair of processes ``--processes`` times
  (``against_deepsparse``); the ratio DeepSparse ms / sparsec ms is
  taken block by block, and the goals use its median over every round of every pair,
  shown with the lowest and highest pair's median ("1.10x (0.98-1.21; 3 pairs of 7
  rounds)"). Where that median is within ``SECOND_LOOK`` (1.10x) either way, as many pairs
  run again and the median is over all of them.

Writes ``<out>/models.json``, ``<out>/models.md`` (the table and the issue's goals, met or
not) and ``<out>/models.png`` (speed-up over onnxruntime vs sparsity, one line per model):
``benchmarks.models_report``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.deepsparse_onnx import to_deepsparse
from benchmarks.models_report import Row, goals, merge_rows, plot, table
from benchmarks.workers import DEEPSPARSE_WORKER, alone_loop, paired_rounds, serve
from sparsec.timing import ort_session, settle

MODELS = ["mlp", "mobilenetv2_224", "mobilenetv2_96", "bert_base", "gpt2_decode",
          "gpt2_prefill"]
LEVELS = ["0", "0.5", "2:4", "0.8", "0.9", "0.95"]
EXTRA_LEVELS = {"gpt2_decode": ["0.7"]}  # the level of its goal
QUICK = dict(models=["mlp", "mobilenetv2_96", "bert_2layer"], levels=["0", "0.9"])


# ---------------------------------------------------------------- models and inputs


def build(model: str, level: str):
    """(module, example inputs) of a zoo model pruned to ``level``, seeded."""
    from sparsec.models.prune import prune_module
    from sparsec.models.zoo import ZOO

    entry = ZOO[model]
    module = entry.build(seed=0)
    if level == "2:4":
        prune_module(module, "n_m", 2, 4, include=entry.include)
    elif float(level) > 0:
        prune_module(module, "unstructured", float(level), include=entry.include)
    return module.eval(), entry.example_inputs(batch=1, seed=0)


def save_inputs(path: Path, names: list[str], xs) -> None:
    np.savez(path, **{n: np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x)
                      for n, x in zip(names, xs)})


def load_inputs(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def interleaved_rounds(fns: dict, budget_s: float = 1.5, rounds: int = 7
                       ) -> dict[str, list[float]]:
    """Per engine, the median ms of each of ``rounds`` rounds of blocks of calls, engines
    interleaved; each block lasts about budget_s / rounds seconds per engine and starts
    after ``settle()``."""
    for fn in fns.values():
        fn()
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            settle()
            t = time.perf_counter()
            fn()
            one = max(time.perf_counter() - t, 1e-6)
            per[k].append(median_ms(fn, int(min(200, max(3, budget_s / rounds / one)))))
    return per


def interleaved(fns: dict, budget_s: float = 1.5, rounds: int = 7) -> dict[str, float]:
    """Median ms per engine over the rounds of ``interleaved_rounds``."""
    return {k: float(np.median(v)) for k, v in interleaved_rounds(fns, budget_s, rounds).items()}


def round_ratios(per: dict[str, list[float]], peer: str, ours: str = "sparsec") -> list[float]:
    """[median, lowest, highest] of peer ms / our ms, round by round."""
    r = np.asarray(per[peer]) / np.asarray(per[ours])
    return [float(np.median(r)), float(r.min()), float(r.max())]


# ---------------------------------------------------------------- child processes


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM (peak) of this process in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(engine: str, args: list[str]) -> dict:
    """Run in a fresh process: load one engine's model, run it, report ms (torch) and the
    memory it takes to serve: peak RSS while running, over the RSS after the imports. The
    peak is reset once the model is loaded, so building and pruning the torch module (which
    copies weights) does not count, for any engine alike."""
    import gc

    if engine == "torch":
        import torch

        model, level, calls = args[0], args[1], int(args[2])
        base = _status_mb("VmRSS")
        module, xs = build(model, level)
        fn = lambda: module(*xs)  # noqa: E731
    else:
        feeds = load_inputs(args[1])
        if engine == "sparsec":
            import tvm  # noqa: F401

            import sparsec

            base = _status_mb("VmRSS")
            cm = sparsec.load(args[0])
            fn = lambda: cm(**feeds)  # noqa: E731
        elif engine == "onnxruntime":
            import onnxruntime  # noqa: F401

            base = _status_mb("VmRSS")
            sess = ort_session(args[0])
            fn = lambda: sess.run(None, feeds)  # noqa: E731
        else:
            raise SystemExit(f"unknown engine {engine}")
    gc.collect()
    _reset_peak()
    result = {}
    if engine == "torch":
        import torch

        with torch.no_grad():
            result["ms"] = interleaved({"torch": fn}, budget_s=min(3.0, 0.3 * calls))["torch"]
    else:
        for _ in range(3):
            fn()
    result["peak_mb"] = _status_mb("VmHWM") - base
    if engine == "sparsec" and args[2:] == ["alone"]:
        result["ms"] = alone_loop(fn)
    return result


# Processes the engines timed alone (sparsec alone, DeepSparse) each run in, the median
# taken: one process's memory-bound model moves with where its pages land. The same GPT-2
# decode artifact (0%, 340 MB of dense weights) took 17.7, 8.4 and 11.3 ms in three fresh
# processes in a row (2026-12-01, 12:03).
PROCESSES = 3
# A second look: when DeepSparse's time over sparsec's is within this factor either way
# after ``--processes`` pairs, as many pairs again are run and the ratio is their median
# over all: a near tie is where one pair's noise decides the sign (2026-12-01, MobileNetV2-224
# at 0%: three pairs gave 1.02x (0.91-1.03) in one run and 1.08x (1.05-1.59) in another).
# It applies whichever engine leads, as the kernel benchmark's second look does.
SECOND_LOOK = 1.10


def run_child(engine: str, *args: str, timeout: int = 900) -> dict | None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.models", "--child", engine, *args],
                       capture_output=True, text=True, timeout=timeout,
                       cwd=Path(__file__).resolve().parent.parent)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {engine} child failed: {tail}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def deepsparse_files(onnx_path: Path, inputs: Path) -> tuple[Path, Path] | None:
    """The model and inputs as DeepSparse takes them (``to_deepsparse``), written beside
    ``onnx_path``; None, said on stderr, when it cannot take the model."""
    import onnx

    try:
        model, feeds = to_deepsparse(onnx.load(str(onnx_path)), load_inputs(inputs))
    except ValueError as exc:
        print(f"  deepsparse skipped: {exc}", file=sys.stderr)
        return None
    onnx_path = onnx_path.with_name(onnx_path.stem + "-deepsparse.onnx")
    inputs = inputs.with_name(inputs.stem + "-deepsparse.npz")
    onnx.save(model, str(onnx_path))
    np.savez(inputs, **feeds)
    return onnx_path, inputs


def against_deepsparse(row: Row, python: str, art: Path, onnx_path: Path, inputs: Path,
                       processes: int = PROCESSES) -> None:
    """sparsec alone and DeepSparse, a fresh worker process each, ``processes`` pairs of
    them taking turns for ``ROUNDS`` blocks of calls (``workers.paired_rounds``): the medians
    of the blocks into ``row.ms``, and DeepSparse ms / sparsec ms block by block into
    ``row.ratios``: the median over every round of every pair, and the lowest and highest
    pair's median (pairs differ by where their pages land; rounds by the host's load)."""
    files = deepsparse_files(onnx_path, inputs)
    if not files:  # sparsec alone still, for the table
        res = run_child("sparsec", str(art), str(inputs), "alone")
        if res is not None:
            row.ms["sparsec alone"] = res["ms"]
        return
    ours: list[list[float]] = []
    theirs: list[list[float]] = []
    cmds = {"sparsec": [sys.executable, "-m", "benchmarks.models", "--child", "sparsec-worker",
                        str(art), str(inputs)],
            "deepsparse": [python, "-c", DEEPSPARSE_WORKER, *map(str, files)]}

    def pairs(count: int) -> bool:
        for _ in range(count):
            per = paired_rounds(cmds)
            if per is None:
                return False
            ours.append(per["sparsec"])
            theirs.append(per["deepsparse"])
        return True

    def ratios() -> np.ndarray:
        return np.divide(np.concatenate(theirs), np.concatenate(ours))

    complete = pairs(processes)
    if not ours:
        return
    if complete and 1 / SECOND_LOOK < np.median(ratios()) < SECOND_LOOK:
        pairs(processes)  # a near tie: as many pairs again (``SECOND_LOOK``)
    by_pair = [float(np.median(np.divide(d, a))) for a, d in zip(ours, theirs)]
    row.ms["sparsec alone"] = float(np.median(np.concatenate(ours)))
    row.ms["deepsparse"] = float(np.median(np.concatenate(theirs)))
    row.ratios["deepsparse"] = [float(np.median(ratios())), min(by_pair), max(by_pair)]
    row.pairs = len(ours)
    row.rounds = len(ours[0])


# ---------------------------------------------------------------- one (model, level)


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def run_row(model: str, level: str, work: Path, deepsparse: str | None,
            processes: int = PROCESSES) -> Row:
    import torch

    import sparsec
    from sparsec.layouts import parse_layout
    from sparsec.models.zoo.export import to_onnx

    row = Row(model, level, measured=time.strftime("%Y-%m-%d %H:%M"))
    module, xs = build(model, level)
    onnx_path = work / f"{model}-{level}.onnx"
    with torch.no_grad():
        proto = to_onnx(module, xs, onnx_path)
    del module
    names = [i.name for i in proto.graph.input]
    inputs = work / f"{model}-{level}-inputs.npz"
    save_inputs(inputs, names, xs)
    feeds = load_inputs(inputs)
    row.onnx_mb = onnx_path.stat().st_size / 2**20

    t0 = time.perf_counter()
    cm = sparsec.compile(str(onnx_path), progress=False)
    row.compile_s = time.perf_counter() - t0
    art = cm.save(work / f"{model}-{level}.sparsec")
    row.artifact_mb = dir_mb(art)
    for r in cm.report:
        kind = parse_layout(r["layout"]).kind
        row.layouts[kind] = row.layouts.get(kind, 0) + 1
    v = cm.verification or {}
    row.max_abs_err = max((o.get("max_abs_err", 0.0) for o in v.get("outputs", [])), default=0.0)

    sess = ort_session(onnx_path)
    per = interleaved_rounds({"sparsec": lambda: cm(**feeds),
                              "onnxruntime": lambda: sess.run(None, feeds)})
    row.ms = {k: float(np.median(v)) for k, v in per.items()}
    row.ratios["onnxruntime"] = round_ratios(per, "onnxruntime")
    del cm, sess
    calls = max(3, int(1500 / max(row.ms["onnxruntime"], 1e-3)))
    torch_res = run_child("torch", model, level, str(min(calls, 200)))
    if torch_res:
        row.ms["torch"] = torch_res["ms"]
        row.peak_mb["torch"] = torch_res["peak_mb"]
    for engine, path in (("sparsec", art), ("onnxruntime", onnx_path)):
        res = run_child(engine, str(path), str(inputs))
        if res:
            row.peak_mb[engine] = res["peak_mb"]
    if deepsparse:  # sparsec timed as DeepSparse is (``alone_loop``)
        against_deepsparse(row, deepsparse, art, onnx_path, inputs, processes)
    return row


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        if sys.argv[2] == "sparsec-worker":  # ``paired_rounds``: art, inputs
            import sparsec

            cm, feeds = sparsec.load(sys.argv[3]), load_inputs(sys.argv[4])
            serve(lambda: cm(**feeds))
            return 0
        print(json.dumps(child(sys.argv[2], sys.argv[3:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--quick", action="store_true", help="mlp, mobilenetv2_96, bert_2layer at "
                    "0 and 0.9 (a few minutes)")
    ap.add_argument("--model", action="append", help="zoo model (repeatable)")
    ap.add_argument("--level", action="append",
                    help="sparsity such as 0.9, or 2:4 (repeatable)")
    ap.add_argument("--out", default="benchmarks/results", help="where results go")
    ap.add_argument("--deepsparse-python", metavar="PY", help="a python with deepsparse 1.8")
    ap.add_argument("--processes", type=int, default=PROCESSES, metavar="N",
                    help="fresh processes each for sparsec alone and DeepSparse, in turn "
                    f"(default {PROCESSES}; on a shared host one process can be 2x off)")
    ap.add_argument("--update", action="store_true",
                    help="merge into <out>/models.json: this run's rows replace the ones of "
                    "the same model and level, the others stay (each row keeps its time)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    from sparsec.models.zoo import ZOO

    models = args.model or (QUICK["models"] if args.quick else MODELS)
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; the zoo has {', '.join(ZOO)}")
    if args.processes < 1:
        ap.error("--processes must be at least 1")
    for lv in args.level or []:
        if lv != "2:4":
            try:
                ok = 0 <= float(lv) < 1
            except ValueError:
                ok = False
            if not ok:
                ap.error(f"bad --level {lv!r}: a sparsity in [0, 1) or 2:4")
    plan = [(m, lv) for m in models for lv in (
        args.level or (QUICK["levels"] if args.quick else LEVELS + EXTRA_LEVELS.get(m, [])))]
    from tqdm import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsec-models-") as tmp:
        for model, level in tqdm(plan, desc="models", unit="run", file=sys.stderr):
            rows.append(run_row(model, level, Path(tmp), args.deepsparse_python,
                                args.processes))
    from sparsec.targets.cpu import model_name

    if args.update:
        rows = merge_rows(out / "models.json", rows, MODELS)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": model_name(), "cores": os.cpu_count(),
            "tvm_threads": os.environ.get("TVM_NUM_THREADS")}
    (out / "models.json").write_text(json.dumps(
        {"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    times = sorted(r.measured for r in rows if r.measured)
    span = f"; rows measured {times[0]} to {times[-1]}" if times else ""
    text = (f"{meta['date']}, {meta['machine']}, {meta['cores']} cores; batch 1; median ms"
            f"{span}\n\n"
            + table(rows) + "\n\nGoals (issue 5):\n\n" + goals(rows))
    (out / "models.md").write_text(text + "\n")
    print(text)
    if not args.no_plot:
        plot(rows, out / "models.png")
        print(f"\nplot: {out / 'models.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
