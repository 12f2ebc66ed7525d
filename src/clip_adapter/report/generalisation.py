"""The generalisation tables and figures, from the records alone: base-to-new (base / new / harmonic mean per
dataset and their average, as CoCoOp's Table 1) and transfer (source -> each target, and the targets' average).

Base-to-new's average row is CoCoOp's: base and new are averaged over datasets, and HM is the harmonic mean of
those two averages (not the average of the per-dataset HMs). Each cell is the mean ± std over seeds.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation import mean_std
from .figures import save_figure
from .summary import AVERAGE, method_key
from .tables import format_table

__all__ = ["base_to_new_rows", "transfer_rows", "markdown_base_to_new", "markdown_transfer", "plot_base_to_new",
           "plot_transfer", "BASE_TO_NEW_COLUMNS", "TRANSFER_COLUMNS", "is_base_to_new"]

BASE_TO_NEW_COLUMNS = ("dataset", "method", "shots", "n_seeds", "base_mean_pct", "base_std_pct", "new_mean_pct",
                       "new_std_pct", "hm_mean_pct", "hm_std_pct", "new_classes_by")
TRANSFER_COLUMNS = ("source", "method", "shots", "target", "n_seeds", "acc_mean_pct", "acc_std_pct", "note")
_FALLBACK = {"transfer": "transfer", "zero_shot_fallback": "zero-shot fallback"}


def is_base_to_new(rec: Mapping) -> bool:
    return rec.get("protocol") == "base_to_new"


def _method(rec: Mapping) -> str:
    """The method line's name: its variant label (``clip-adapter run --base-to-new`` adds a suffix, dropped)."""
    v = str(rec.get("variant") or rec["method"])
    return rec["method"] if v == f"{rec['method']}-base_to_new" else v


def _harmonic(b: float, n: float) -> float:
    return 2 * b * n / (b + n) if b + n > 0 else 0.0


def base_to_new_rows(records: Sequence[Mapping]) -> list[dict[str, Any]]:
    """A row per (dataset, method, shots) of the base-to-new records, then an Average row per (method, shots)."""
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for r in records:
        if is_base_to_new(r):
            groups[(r["dataset"], _method(r), int(r["shots"]))].append(r)
    rows = []
    for (d, m, k), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], method_key(kv[0][1]), kv[0][2])):
        row: dict[str, Any] = {"dataset": d, "method": m, "shots": k, "n_seeds": len(recs)}
        for key, field in (("base", "base_accuracy"), ("new", "new_accuracy"), ("hm", "harmonic_mean")):
            mean, std = mean_std([100.0 * float(r[field]) for r in recs])
            row[f"{key}_mean_pct"], row[f"{key}_std_pct"] = mean, std
        row["new_classes_by"] = ", ".join(sorted({_FALLBACK.get(r.get("unseen_classes"), "?") for r in recs}))
        rows.append(row)
    by_method: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[(row["method"], row["shots"])].append(row)
    n_ds = len({r["dataset"] for r in rows})
    avg = []
    for (m, k), rs in sorted(by_method.items(), key=lambda kv: (method_key(kv[0][0]), kv[0][1])):
        if len(rs) < n_ds or n_ds < 2:
            continue  # an average over some of the datasets would mislead
        base = sum(r["base_mean_pct"] for r in rs) / len(rs)
        new = sum(r["new_mean_pct"] for r in rs) / len(rs)
        avg.append({"dataset": AVERAGE, "method": m, "shots": k, "n_seeds": min(r["n_seeds"] for r in rs),
                    "base_mean_pct": base, "base_std_pct": 0.0, "new_mean_pct": new, "new_std_pct": 0.0,
                    "hm_mean_pct": _harmonic(base, new), "hm_std_pct": 0.0,
                    "new_classes_by": rs[0]["new_classes_by"]})
    return rows + avg


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and std else f"{mean:.2f}"


def markdown_base_to_new(rows: Sequence[Mapping], records: Sequence[Mapping] = ()) -> str:
    """Base / new / HM (%) per dataset and method, then the average over datasets (CoCoOp's Table 1 layout)."""
    table = []
    for r in rows:
        avg = r["dataset"] == AVERAGE
        table.append({"dataset": f"**{AVERAGE}**" if avg else r["dataset"], "method": r["method"],
                      "shots": r["shots"], "seeds": r["n_seeds"],
                      "base": _cell(r["base_mean_pct"], r["base_std_pct"], 1 if avg else r["n_seeds"]),
                      "new": _cell(r["new_mean_pct"], r["new_std_pct"], 1 if avg else r["n_seeds"]),
                      "HM": _cell(r["hm_mean_pct"], r["hm_std_pct"], 1 if avg else r["n_seeds"]),
                      "new classes scored by": r["new_classes_by"]})
    b2n = [r for r in records if is_base_to_new(r)]
    backbones = ", ".join(sorted({str(r.get("backbone")) for r in b2n})) or "?"
    lines = ["# Base-to-new generalisation (CoCoOp protocol)", "",
             f"Top-1 test accuracy (%), mean ± std over seeds; backbone {backbones}. Each dataset's classes are split "
             "in half (sorted labels, base = first ceil(n/2)); methods train and select on base classes only. "
             "base: base test images, base classifier; new: new test images, a classifier of the new class names "
             "only; HM: harmonic mean. 'zero-shot fallback': the method's learned part is class-specific, so its "
             "new classes are scored by zero-shot CLIP. Average: base and new averaged over datasets, HM of the "
             "averages.", "", format_table(table, list(table[0]) if table else ["dataset"]), ""]
    return "\n".join(lines)


def transfer_rows(records: Sequence[Mapping]) -> list[dict[str, Any]]:
    """A row per (source, method, shots, target) of the records with a ``transfer`` list (the source's own test
    accuracy first, then each target, then the targets' average)."""
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for r in records:
        if r.get("transfer") and not is_base_to_new(r):
            groups[(r["dataset"], str(r.get("variant") or r["method"]), int(r["shots"]))].append(r)
    rows = []
    for (src, m, k), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], method_key(kv[0][1]), kv[0][2])):
        mean, std = mean_std([100.0 * r["accuracy"] for r in recs])
        rows.append({"source": src, "method": m, "shots": k, "target": f"{src} (source)", "n_seeds": len(recs),
                     "acc_mean_pct": mean, "acc_std_pct": std, "note": ""})
        targets: dict[str, list[Mapping]] = defaultdict(list)
        for r in recs:
            for t in r["transfer"]:
                targets[t["dataset"]].append(t)
        means = []
        for t, results in targets.items():
            ok = [x for x in results if x.get("applicable")]
            if not ok:
                rows.append({"source": src, "method": m, "shots": k, "target": t, "n_seeds": 0,
                             "acc_mean_pct": None, "acc_std_pct": None,
                             "note": f"not applicable: {results[0].get('reason', '')}"})
                continue
            mean, std = mean_std([100.0 * x["accuracy"] for x in ok])
            means.append(mean)
            rows.append({"source": src, "method": m, "shots": k, "target": t, "n_seeds": len(ok),
                         "acc_mean_pct": mean, "acc_std_pct": std, "note": _how(ok[0]["matched"])})
        if means and len(means) == len(targets):
            rows.append({"source": src, "method": m, "shots": k, "target": f"{AVERAGE} of targets",
                         "n_seeds": len(recs), "acc_mean_pct": sum(means) / len(means), "acc_std_pct": 0.0,
                         "note": ""})
    return rows


def _how(matched: str) -> str:
    if matched.startswith("transfer"):
        return "its own class names (the method transfers)"
    return f"the model's classes, matched by {matched}"


def markdown_transfer(rows: Sequence[Mapping]) -> str:
    """Source -> targets: a row per (method, shots), a column per target (n/a: the method cannot transfer)."""
    cols: list[str] = []
    for r in rows:
        if r["target"] not in cols:
            cols.append(r["target"])
    table, notes = [], []
    for key in dict.fromkeys((r["source"], r["method"], r["shots"]) for r in rows):
        row: dict[str, Any] = {"source": key[0], "method": key[1], "shots": key[2]}
        for r in rows:
            if (r["source"], r["method"], r["shots"]) == key:
                row[r["target"]] = "n/a" if r["acc_mean_pct"] is None else \
                    _cell(r["acc_mean_pct"], r["acc_std_pct"], r["n_seeds"])
                if r["acc_mean_pct"] is None:
                    notes.append(f"- {key[1]} on {r['target']}: {r['note'].removeprefix('not applicable: ')}")
        table.append({c: row.get(c, "-") for c in ["source", "method", "shots", *cols]})
    matched = sorted({f"{r['target']}: {r['note']}" for r in rows
                      if r["acc_mean_pct"] is not None and r["note"] and "(source)" not in r["target"]})
    lines = ["# Transfer: models trained on the source, scored on each target", "",
             "Top-1 test accuracy (%), mean ± std over seeds. A target with the source's classes (mapped by wnid or "
             "name; a subset is scored on its own classes' logits only) takes every method; a target with other "
             "classes only methods whose learned part carries over to new class names (n/a otherwise).", "",
             format_table(table, ["source", "method", "shots", *cols]) if table else "(no transfer records)", ""]
    if matched:
        lines += ["How each target was scored:", *[f"- {m}" for m in matched], ""]
    if notes:
        lines += ["Not applicable:", *notes, ""]
    return "\n".join(lines)


def plot_base_to_new(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Grouped bars: base, new and HM per method, one panel per dataset (and the average)."""
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = Figure(figsize=(max(6.0, 3.2 * len(datasets)), 4.2))
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, d in zip(axes, datasets):
        sub = [r for r in rows if r["dataset"] == d]
        xs = range(len(sub))
        for j, (key, label) in enumerate((("base", "base"), ("new", "new"), ("hm", "HM"))):
            ax.bar([x + (j - 1) * 0.27 for x in xs], [r[f"{key}_mean_pct"] for r in sub], width=0.27,
                   yerr=[r[f"{key}_std_pct"] for r in sub], capsize=2, color=f"C{j}", label=label)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["method"] + ("*" if "fallback" in r["new_classes_by"] else "") for r in sub],
                           rotation=30, ha="right", fontsize=8)
        ax.set_title(d)
        ax.set_ylim(0, 100)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 test accuracy (%)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Base-to-new (* new classes by zero-shot fallback)", fontsize=10)
    return save_figure(fig, Path(path))


def plot_transfer(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Grouped bars: accuracy on the source and each target, a bar per method (n/a methods have no bar)."""
    from matplotlib.figure import Figure

    targets = list(dict.fromkeys(r["target"] for r in rows))
    methods = sorted({(r["method"], r["shots"]) for r in rows}, key=lambda mk: (method_key(mk[0]), mk[1]))
    fig = Figure(figsize=(max(6.0, 1.4 * len(targets) * max(1, len(methods)) / 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    for j, (m, k) in enumerate(methods):
        pts = {r["target"]: r for r in rows if (r["method"], r["shots"]) == (m, k)}
        xs = [i for i, t in enumerate(targets) if t in pts and pts[t]["acc_mean_pct"] is not None]
        ax.bar([x + (j - (len(methods) - 1) / 2) * width for x in xs],
               [pts[targets[x]]["acc_mean_pct"] for x in xs], width=width,
               yerr=[pts[targets[x]]["acc_std_pct"] for x in xs], capsize=2, color=f"C{j}", label=f"{m} ({k}-shot)")
    ax.set_xticks(range(len(targets)))
    ax.set_xticklabels(targets, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.set_title("Transfer: trained on the source, scored on each target")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, Path(path))
