"""The single-layer benchmark's report (``benchmarks.kernels`` measures): markdown tables of
the linear points and the 1x1 convs, with sparsec's speed-up over the best peer, its
fraction of the bound and the points timed twice (the second look), and the PNG plot of
speed-up vs density per batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SECOND_LOOK = 1.10  # sparsec's speed-up over the best peer below which a point is re-timed


def _engines(points) -> list[str]:
    engines = ["sparsec", "onnxruntime", "torch", "torch-csr", "scipy-csr"]
    return engines + (["deepsparse"] if any("deepsparse" in p.ms for p in points) else [])


def best_peer(ms: dict[str, float]) -> tuple[str, float]:
    """The fastest engine of ``ms`` but sparsec, and its time."""
    peers = {k: v for k, v in ms.items() if k != "sparsec"}
    k = min(peers, key=peers.get)
    return k, peers[k]


def _wins(points, first: bool = False) -> int:
    """Points where sparsec beat every peer (``first``: on the first look)."""
    looks = (p.first_ms if first and p.first_ms else p.ms for p in points)
    return sum(ms["sparsec"] < best_peer(ms)[1] for ms in looks)


def _summary(points) -> str:
    frac = [p.bound_ms / p.ms["sparsec"] for p in points]
    text = (f"sparsec faster than every peer at {_wins(points)} of {len(points)} points; "
            f"geometric mean {100 * math.exp(np.mean(np.log(frac))):.0f}% of the bound")
    if again := sum(bool(p.first_ms) for p in points):
        text += (f"\n\n\\* timed twice ({again} points within {SECOND_LOOK:.2f}x of the best peer "
                 f"or behind it on the first look), each engine's faster median kept; on the "
                 f"first look alone sparsec was faster at {_wins(points, first=True)} of "
                 f"{len(points)}")
    return text


def _speedup_cell(p) -> str:
    return f"{p.best_peer[1] / p.ms['sparsec']:.2f}x" + (" \\*" if p.first_ms else "")


def conv_table(points) -> str:
    engines = _engines(points)
    head = ["C_in->C_out", "H x W", "density", "layout", *engines, "best peer", "speed-up",
            "bound", "% of bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        peer = p.best_peer[0]
        cells = [f"{p.c_in}->{p.c_out}", f"{p.hw}x{p.hw}", f"{p.density:g}", p.layout]
        cells += [f"{p.ms[e]:.3f}" if e in p.ms else "-" for e in engines]
        cells += [peer, _speedup_cell(p), f"{p.bound_ms:.3f}",
                  f"{100 * p.bound_ms / p.ms['sparsec']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", _summary(points)])


def table(points) -> str:
    engines = _engines(points)
    head = ["W [out,in]", "pattern", "density", "batch", "layout", *engines, "best peer",
            "speed-up", "bound", "% of bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        peer = p.best_peer[0]
        cells = [f"{p.shape[0]}x{p.shape[1]}", p.pattern, f"{p.density:g}", str(p.batch), p.layout]
        cells += [f"{p.ms[e]:.3f}" if e in p.ms else "-" for e in engines]
        cells += [peer, _speedup_cell(p), f"{p.bound_ms:.3f}",
                  f"{100 * p.bound_ms / p.ms['sparsec']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", _summary(points)])


def plot(points, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({p.batch for p in points})
    fig, axes = plt.subplots(1, len(batches), figsize=(4 * len(batches), 3.4), sharey=True)
    for ax, b in zip(np.atleast_1d(axes), batches):
        for pattern in sorted({p.pattern for p in points}):
            at = [p for p in points if p.batch == b and p.pattern == pattern]
            densities = sorted({p.density for p in at})
            # geometric mean over the weight shapes at each density
            ys = [math.exp(np.mean([math.log(p.ms["onnxruntime"] / p.ms["sparsec"])
                                    for p in at if p.density == d])) for d in densities]
            if at:
                ax.plot(densities, ys, "o-", label=pattern)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({p.density for p in points})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"batch {b}")
        ax.set_xlabel("density")
    np.atleast_1d(axes)[0].set_ylabel("speed-up vs onnxruntime dense\n(geo. mean of shapes)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
