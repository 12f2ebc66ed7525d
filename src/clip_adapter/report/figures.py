"""Figures of a report: accuracy vs shots per dataset (and averaged), TEST accuracy vs a fixed ablation value."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..io import atomic_path
from .summary import AVERAGE, method_key

__all__ = ["plot_dataset", "plot_ablation", "save_figure"]


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_dataset(rows: Sequence[Mapping], title: str, path: str | Path) -> Path:
    """Accuracy vs shots (log2 x axis), a line per method with std error bars, zero-shot as a horizontal line."""
    # No pyplot: no global backend state; Figure.savefig renders with Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    methods = sorted({r["method"] for r in rows}, key=method_key)
    all_shots = sorted({r["shots"] for r in rows if r["shots"] > 0})
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for m in methods:
        pts = sorted((r for r in rows if r["method"] == m), key=lambda r: r["shots"])
        trained = [r for r in pts if r["shots"] > 0]
        if trained:
            ax.errorbar([r["shots"] for r in trained], [r["acc_mean_pct"] for r in trained],
                        yerr=[r["acc_std_pct"] for r in trained], marker="o", ms=4, capsize=3, lw=1.5,
                        color=colors[m], label=m)
        for r in pts:
            if r["shots"] == 0:
                ax.axhline(r["acc_mean_pct"], ls="--", lw=1.2, color=colors[m], label=f"{m} (no training)")
    if all_shots:
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_shots)
        ax.set_xticklabels([str(k) for k in all_shots])
        ax.set_xlim(all_shots[0] / 1.3, all_shots[-1] * 1.3)
    ax.set_xlabel("training images per class (shots, log2 scale)")
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, Path(path))


def plot_ablation(rows: Sequence[Mapping], method: str, param: str, shots: int, path: str | Path) -> Path:
    """TEST accuracy vs the fixed value, one line per dataset (+ average): an analysis figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    datasets = sorted({r["dataset"] for r in rows if r["dataset"] != AVERAGE})
    if any(r["dataset"] == AVERAGE for r in rows):
        datasets.append(AVERAGE)
    numeric = all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) for r in rows)
    for i, d in enumerate(datasets):
        pts = [r for r in rows if r["dataset"] == d]
        if numeric:
            pts.sort(key=lambda r: r["value"])
        xs = [r["value"] if numeric else str(r["value"]) for r in pts]
        ax.errorbar(xs, [r["acc_mean_pct"] for r in pts], yerr=[r["acc_std_pct"] for r in pts], marker="o",
                    ms=4, capsize=3, lw=2.2 if d == AVERAGE else 1.5, ls="--" if d == AVERAGE else "-",
                    color="k" if d == AVERAGE else f"C{i}", label=d)
        if pts:
            best = max(pts, key=lambda r: r["acc_mean_pct"])
            ax.plot([best["value"] if numeric else str(best["value"])], [best["acc_mean_pct"]], marker="*", ms=11,
                    color="k" if d == AVERAGE else f"C{i}", ls="none")
    ax.set_xlabel(f"{param} (fixed for every run; star = best on TEST)")
    ax.set_ylabel("top-1 TEST accuracy (%)")
    ax.set_title(f"{method}, {shots}-shot: TEST accuracy vs {param}\n(analysis only; never used to choose {param})",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, Path(path))
