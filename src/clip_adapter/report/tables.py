"""Markdown and CSV tables of a report: the summary (a column per shot count), the methods side by side, the
ablation tables; :func:`format_table` is the one Markdown table writer (the CLI prints with it too)."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence

from .summary import ABLATION_COLUMNS, AVERAGE, SUMMARY_COLUMNS, method_key

__all__ = ["format_table", "format_cell", "markdown_summary", "markdown_comparison", "markdown_ablation",
           "csv_text", "SUMMARY_COLUMNS", "ABLATION_COLUMNS"]

def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain Markdown table (floats with 4 decimals)."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def format_cell(row: Mapping | None, n_expected: int | None = None) -> str:
    """``"72.34 ± 0.51"`` (percent); a single-run cell has no ± part; ``(n=2)`` flags a cell missing seeds."""
    if row is None:
        return "-"
    text = f"{row['acc_mean_pct']:.2f}"
    if row["n_seeds"] > 1:
        text += f" ± {row['acc_std_pct']:.2f}"
    if n_expected is not None and row["shots"] != 0 and row["n_seeds"] != n_expected:
        text += f" (n={row['n_seeds']})"
    return text


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return format_table([dict(zip(header, r)) for r in rows], header)


def markdown_summary(rows: Sequence[Mapping], avg: Sequence[Mapping], records: Sequence[Mapping] = ()) -> str:
    """The Markdown table: a row per (dataset, method), a column per shot count (0 = zero-shot)."""
    main = [r for r in records if not r.get("ablation")]
    shots = sorted({r["shots"] for r in list(rows) + list(avg)})
    n_exp = max((r["n_seeds"] for r in rows if r["shots"] > 0), default=1)
    index = {(r["dataset"], r["method"], r["shots"]): r for r in list(rows) + list(avg)}
    datasets = sorted({r["dataset"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=method_key)
    n_ds = len(datasets)
    header = ["dataset", "method"] + [f"{k} (zero-shot)" if k == 0 else f"{k}-shot" for k in shots]
    body = []
    for d in datasets + ([AVERAGE] if avg else []):
        for m in methods:
            cells = [format_cell(index.get((d, m, k)), n_exp) for k in shots]
            if all(c == "-" for c in cells):
                continue
            label = f"**{AVERAGE} ({n_ds} datasets)**" if d == AVERAGE else d
            body.append([label, m] + cells)
    backbones = sorted({str(r.get("backbone")) for r in main})
    views = sorted({r.get("n_views") for r in main if r.get("shots")})
    intro = (f"Top-1 test accuracy (%), mean ± std over {n_exp} seed(s). Hyper-parameters were chosen on the "
             f"validation split of each run; the test split was scored once per run. Zero-shot does not train "
             f"(one run per dataset, column 0). The average row averages over datasets per seed, then takes "
             f"mean ± std over seeds.")
    setup = (f"Backbone: {', '.join(f'`{b}`' for b in backbones) or '-'}; augmented views per training image: "
             f"{', '.join(map(str, views)) or '-'}; runs: {len(main)}.")
    lines = ["# Few-shot results", "", intro, "", setup, "", _md_table(header, body), ""]
    comparison = markdown_comparison(rows, avg)
    return "\n".join(lines + ([comparison] if comparison else []))


def markdown_comparison(rows: Sequence[Mapping], avg: Sequence[Mapping] = ()) -> str:
    """Methods side by side at the largest shot count (zero-shot included): ``acc ± std`` and the mean training
    seconds per run, a column per dataset (and the average); empty when fewer than two methods are there."""
    trained = [r["shots"] for r in rows if r["shots"] > 0]
    if not trained:
        return ""
    k = max(trained)
    cells = [r for r in list(rows) + list(avg) if r["shots"] in (0, k)]
    methods = sorted({r["method"] for r in cells}, key=method_key)
    if len(methods) < 2:
        return ""
    datasets = sorted({r["dataset"] for r in rows}) + ([AVERAGE] if any(r["dataset"] == AVERAGE for r in cells)
                                                        else [])
    index = {(r["dataset"], r["method"]): r for r in cells}
    n_exp = max((r["n_seeds"] for r in rows if r["shots"] == k), default=1)
    body = []
    for m in methods:
        line = [m]
        for d in datasets:
            r = index.get((d, m))
            line.append("-" if r is None else f"{format_cell(r, n_exp)} ({r['train_seconds_mean']:.1f} s)")
        body.append(line)
    return "\n".join([f"## Methods side by side at {k} shots", "",
                      "Top-1 test accuracy (%), mean ± std over seeds, with the mean training time per run in "
                      "parentheses (the hyper-parameter search on val included, feature extraction excluded). "
                      "Zero-shot is the 0-shot run.", "", _md_table(["method"] + datasets, body), ""])


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (repr(v) if isinstance(v, float) else v) for c, v in r.items()})
    return buf.getvalue()


def markdown_ablation(rows: Sequence[Mapping]) -> str:
    """One table per (method, param, shots): datasets x fixed values, TEST accuracy (analysis only)."""
    intro = ("TEST accuracy (%) of each fixed value, mean ± std over seeds. This shows how much the value matters; "
             "it is never used to choose it: in the main results the value is chosen on the validation split.")
    out = ["# Ablation (analysis only)", "", intro, ""]
    for (m, p, k) in sorted({(r["method"], r["param"], r["shots"]) for r in rows}, key=str):
        sub = [r for r in rows if (r["method"], r["param"], r["shots"]) == (m, p, k)]
        values = []
        for r in sub:
            if r["value"] not in values:
                values.append(r["value"])
        values.sort(key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
        datasets = sorted({r["dataset"] for r in sub if r["dataset"] != AVERAGE})
        if any(r["dataset"] == AVERAGE for r in sub):
            datasets.append(AVERAGE)
        index = {(r["dataset"], json.dumps(r["value"])): r for r in sub}
        body = []
        for d in datasets:
            cells = []
            for v in values:
                r = index.get((d, json.dumps(v)))
                cells.append("-" if r is None else f"{r['acc_mean_pct']:.2f}" +
                             (f" ± {r['acc_std_pct']:.2f}" if r["n_seeds"] > 1 else ""))
            body.append([f"**{d}**" if d == AVERAGE else d] + cells)
        out += [f"## {m}: TEST accuracy vs fixed {p}, {k}-shot", "",
                _md_table(["dataset"] + [f"{p}={v}" for v in values], body), ""]
    return "\n".join(out)
