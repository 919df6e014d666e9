"""The end-to-end zoo benchmark's results (``benchmarks.models``): one ``Row`` per (model,
level), the markdown table, the issue's goals met or not, the plot, and the merge of a
partial run into stored results (``--update``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# (model, level, speed-up over onnxruntime it should reach), from issue 5; "*": every model.
GOALS = [("mobilenetv2_224", "0.9", 2.0), ("bert_base", "0.9", 3.0), ("gpt2_decode", "0.7", 2.0),
         ("*", "0", 0.9)]

LEVEL_ORDER = ["0", "0.5", "2:4", "0.7", "0.8", "0.9", "0.95"]  # of the table and plot


@dataclass
class Row:
    model: str
    level: str
    layouts: dict[str, int] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    onnx_mb: float = 0.0
    artifact_mb: float = 0.0
    compile_s: float = 0.0
    max_abs_err: float = 0.0
    measured: str = ""  # when (rows of several runs meet in one table with --update)
    # Per peer timed in the same rounds as sparsec: [median, lowest, highest] of the
    # per-round ratios peer ms / sparsec ms. Rounds are seconds apart, so a ratio within a
    # round cancels the host's drift; the spread says how far one run can be trusted.
    ratios: dict[str, list[float]] = field(default_factory=dict)
    pairs: int = 0  # process pairs behind the DeepSparse ratio (``models.SECOND_LOOK``)
    rounds: int = 0  # rounds of each pair (``workers.paired_rounds``); 0: one block a process

    def speedup(self, peer: str = "onnxruntime") -> float | None:
        """The median per-round (or per-pair) ratio peer ms / sparsec ms, else the ratio of
        the medians; DeepSparse against sparsec timed alone, as it is timed."""
        if peer in self.ratios:
            return self.ratios[peer][0]
        ours = "sparsec alone" if peer == "deepsparse" else "sparsec"
        if peer in self.ms and ours in self.ms:
            return self.ms[peer] / self.ms[ours]
        return None

    def spread(self, peer: str = "onnxruntime") -> str:
        """" (lo-hi)" of the per-round ratios, or "" when there are none."""
        if peer not in self.ratios:
            return ""
        _, lo, hi = self.ratios[peer]
        pairs = ""
        if peer == "deepsparse" and self.pairs:
            rounds = f" of {self.rounds} rounds" if self.rounds else ""
            pairs = f"; {self.pairs} pairs{rounds}"
        return f" ({lo:.2f}-{hi:.2f}{pairs})"


def table(rows: list[Row]) -> str:
    engines = ["sparsec", "onnxruntime", "torch"] + [
        e for e in ("sparsec alone", "deepsparse") if any(e in r.ms for r in rows)]
    with_ds = any("deepsparse" in r.ratios for r in rows)  # (sparsec alone against it)
    head = ["model", "sparsity", "layouts", *[f"{e} ms" for e in engines], "vs onnxruntime",
            "vs torch", *(["vs deepsparse"] * with_ds), "peak MB sparsec / ort / torch",
            "artifact MB / ONNX MB", "compile s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lay = ", ".join(f"{n} {k}" for k, n in sorted(r.layouts.items(), key=lambda kv: -kv[1]))
        cells = [r.model, r.level, lay]
        cells += [f"{r.ms[e]:.3f}" if e in r.ms else "-" for e in engines]
        s_ort, s_torch = r.speedup(), r.speedup("torch")
        cells += [f"{s_ort:.2f}x{r.spread()}" if s_ort else "-",
                  f"{s_torch:.2f}x" if s_torch else "-"]
        if with_ds:
            s_ds = r.speedup("deepsparse")
            cells.append(f"{s_ds:.2f}x{r.spread('deepsparse')}" if s_ds else "-")
        cells.append(" / ".join(f"{r.peak_mb[e]:.0f}" if e in r.peak_mb else "-"
                                for e in ("sparsec", "onnxruntime", "torch")))
        cells += [f"{r.artifact_mb:.1f} / {r.onnx_mb:.1f}", f"{r.compile_s:.1f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def merge_rows(path: Path, new: list[Row], models: list[str]) -> list[Row]:
    """The rows of ``path`` (a models.json) with ``new`` in place of those of the same model
    and level, ordered by ``models`` (others after them), then ``LEVEL_ORDER``."""
    old = [Row(**r) for r in json.loads(path.read_text())["rows"]] if path.exists() else []
    fresh = {(r.model, r.level) for r in new}
    rows = [r for r in old if (r.model, r.level) not in fresh] + new
    models = models + sorted({r.model for r in rows} - set(models))
    return sorted(rows, key=lambda r: (models.index(r.model), _level_rank(r.level)))


def _level_rank(level: str) -> int:
    return LEVEL_ORDER.index(level) if level in LEVEL_ORDER else len(LEVEL_ORDER)


def _goal(want: float) -> str:
    return f">= {want}x onnxruntime, faster than DeepSparse"


def goals(rows: list[Row]) -> str:
    lines = ["| goal | measured | met |", "|---|---|---|"]
    for model, level, want in GOALS:
        hits = [r for r in rows if (model == "*" or r.model == model) and r.level == level]
        who = "every model" if model == "*" else model
        if not hits:
            lines.append(f"| {who} at {level}: {_goal(want)} | not run | - |")
            continue
        for r in hits:
            got = r.speedup()
            ds, alone = r.ms.get("deepsparse"), r.ms.get("sparsec alone")
            extra = f"; DeepSparse {ds:.3f} ms" if ds else ""
            met = "yes" if got >= want else "no"
            vs_ds = r.speedup("deepsparse")
            if ds and alone and vs_ds:  # issue 5: "and faster than DeepSparse 1.8.0 on each"
                extra += (f" against sparsec's {alone:.3f} timed alone "
                          f"({vs_ds:.2f}x{r.spread('deepsparse')})")
                if vs_ds <= 1.0:
                    met = "no: DeepSparse faster" if got >= want else "no"
            lines.append(f"| {r.model} at {level}: {_goal(want)} | {got:.2f}x{r.spread()}"
                         f"{extra} | {met} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r.level for r in rows}, key=_level_rank)
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in dict.fromkeys(r.model for r in rows):
        pts = sorted((r for r in rows if r.model == model), key=lambda r: levels.index(r.level))
        ax.plot([levels.index(r.level) for r in pts], [r.speedup() for r in pts], "o-",
                label=model)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_xlabel("sparsity of the prunable layers")
    ax.set_ylabel("speed-up vs onnxruntime (same model, dense)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
