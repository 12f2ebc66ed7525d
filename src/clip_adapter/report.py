"""Tables and figures from the result files of an experiment (``clip-adapter report OUTDIR``).

Everything here is rebuilt from ``<OUTDIR>/<dataset>/<method>/shots<K>-seed<S>.json``, the records written by
:mod:`clip_adapter.grid` (``runs.jsonl`` is rebuilt from them too), so the report of an interrupted or
half-finished experiment is always consistent with the runs that did finish.

Written into ``OUTDIR``:

* ``summary.md`` / ``summary.csv``: top-1 test accuracy (%) per dataset x method x shots, mean ± std over seeds
  (hyper-parameters chosen on validation), plus an average-over-datasets row per method and shots. Zero-shot
  does not train; it is one run per dataset, in column 0.
* ``figures/<dataset>.png`` and ``figures/average.png``: accuracy vs shots (log2 x axis), one line per method
  with std error bars, zero-shot as a horizontal line.
* ``ablation.md`` / ``ablation.csv`` / ``figures/ablation_<method>_<param>_<K>shot.png`` when the experiment had
  an ablation: TEST accuracy at each fixed value. It is an analysis figure: it shows how the value matters, and
  is never used to choose it (the main table's values are chosen on validation).

The std of the average row is the std over seeds of the per-seed average over datasets (seeds every dataset has).

``clip-adapter report --into DIR OUTDIR [OUTDIR ...]`` merges several experiments (e.g. one per method family) into
one report in ``DIR``; the same run in two folders is an error. ``summary.md`` ends with the methods side by side at
the largest shot count: accuracy and mean training time per dataset.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .evaluation import mean_std

__all__ = ["load_records", "merge_records", "text_prior_conflicts", "summarize", "average_rows", "ablation_rows", "format_cell",
           "markdown_summary", "markdown_comparison", "build_report", "plot_dataset", "plot_ablation", "add_subcommands", "AVERAGE"]

log = logging.getLogger(__name__)

AVERAGE = "Average"
# Methods in the paper's order first, the rest alphabetically.
METHOD_ORDER = ("zero_shot", "linear_probe", "coop", "clip_adapter", "tip_adapter", "tip_adapter_f")
SUMMARY_COLUMNS = ("dataset", "method", "shots", "n_seeds", "seeds", "acc_mean_pct", "acc_std_pct",
                   "macro_f1_mean_pct", "macro_f1_std_pct", "val_acc_mean_pct", "train_seconds_mean", "chosen",
                   "n_datasets")
ABLATION_COLUMNS = ("dataset", "method", "param", "value", "shots", "n_seeds", "seeds", "acc_mean_pct",
                    "acc_std_pct", "macro_f1_mean_pct", "macro_f1_std_pct", "n_datasets")


# -- records -------------------------------------------------------------------------------------------------
def load_records(outdir: str | Path) -> list[dict]:
    """Every parseable result record under ``outdir``; unreadable files are logged and skipped."""
    from .grid import find_result_files, read_result
    out = []
    for p in find_result_files(outdir):
        rec = read_result(p)
        if rec is None:
            log.warning("skipping %s: not a finished result file (missing or unparseable)", p)
            continue
        rec.setdefault("result_file", str(p))
        out.append(rec)
    return out


def merge_records(outdirs: Sequence[str | Path]) -> list[dict]:
    """The records of several experiment folders; a run (dataset, method variant, shots, seed, ablation) found in two
    folders is a one-line ``ValueError`` naming both files, since the report would otherwise count it twice."""
    seen: dict[tuple, str] = {}
    out = []
    for d in outdirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"Results folder {d} not found.")
        for rec in load_records(d):
            ab = rec.get("ablation") or {}
            key = (rec["dataset"], _variant(rec), int(rec["shots"]), rec["seed"], json.dumps(ab, sort_keys=True))
            if key in seen:
                raise ValueError(f"The same run {key[:4]} is in {seen[key]} and {rec['result_file']}; "
                                 f"report each run once.")
            seen[key] = rec["result_file"]
            out.append(rec)
    return out


def text_prior_conflicts(records: Iterable[Mapping]) -> list[str]:
    """One line per (dataset, backbone, templates) whose runs used different class text features (their
    ``text_features_sha256`` differ): the same backbone id gave another zero-shot prior, so those runs do not
    belong in one table. Records without the field (older runs) are not checked."""
    seen: dict[tuple, dict[str, str]] = defaultdict(dict)
    for r in records:
        fp = r.get("text_features_sha256")
        if fp:
            key = (r["dataset"], str(r.get("backbone")), json.dumps(r.get("templates")))
            seen[key].setdefault(fp, str(r.get("result_file", "?")))
    return [f"{d} with {b}: runs used {len(fps)} different class text features (e.g. {', '.join(fps.values())}); "
            f"the backbone's text side changed between them." for (d, b, _), fps in sorted(seen.items())
            if len(fps) > 1]


def _variant(rec: Mapping) -> str:
    return str(rec.get("variant") or rec["method"])


def _method_key(name: str) -> tuple:
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def _pct(x: float) -> float:
    return 100.0 * x


def _chosen_summary(recs: Sequence[Mapping]) -> str:
    counts = Counter(", ".join(f"{k}={v}" for k, v in sorted((r.get("chosen") or {}).items())) or "-"
                     for r in recs)
    return "; ".join(f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _stats(recs: Sequence[Mapping]) -> dict[str, Any]:
    recs = sorted(recs, key=lambda r: r["seed"])
    acc = mean_std([r["accuracy"] for r in recs])
    f1 = mean_std([r["macro_f1"] for r in recs])
    val = [r["val_accuracy"] for r in recs if isinstance(r.get("val_accuracy"), (int, float))
           and not math.isnan(r["val_accuracy"])]
    return {"n_seeds": len(recs), "seeds": " ".join(str(r["seed"]) for r in recs),
            "acc_mean_pct": _pct(acc[0]), "acc_std_pct": _pct(acc[1]),
            "macro_f1_mean_pct": _pct(f1[0]), "macro_f1_std_pct": _pct(f1[1]),
            "val_acc_mean_pct": _pct(sum(val) / len(val)) if val else float("nan"),
            "train_seconds_mean": sum(float(r.get("train_seconds", 0.0)) for r in recs) / len(recs),
            "chosen": _chosen_summary(recs)}


def summarize(records: Iterable[Mapping]) -> list[dict]:
    """One row per (dataset, method, shots) of the main grid (ablation runs excluded): mean ± std over seeds."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        if r.get("ablation"):
            continue
        groups[(r["dataset"], _variant(r), int(r["shots"]))].append(r)
    rows = [{"dataset": d, "method": m, "shots": k, **_stats(g), "n_datasets": 1} for (d, m, k), g in groups.items()]
    return sorted(rows, key=lambda x: (x["dataset"], _method_key(x["method"]), x["shots"]))


def _average(groups: Mapping[str, Sequence[Mapping]]) -> dict[str, Any] | None:
    """Average over datasets (``groups``: dataset -> its records of one cell), per seed, then mean ± std."""
    by_ds = {d: {r["seed"]: r for r in recs} for d, recs in groups.items()}
    seeds = sorted(set.intersection(*(set(v) for v in by_ds.values()))) if by_ds else []
    if not seeds:
        return None
    accs = [sum(by_ds[d][s]["accuracy"] for d in by_ds) / len(by_ds) for s in seeds]
    f1s = [sum(by_ds[d][s]["macro_f1"] for d in by_ds) / len(by_ds) for s in seeds]
    acc, f1 = mean_std(accs), mean_std(f1s)
    all_recs = [by_ds[d][s] for d in by_ds for s in seeds]
    val = [r["val_accuracy"] for r in all_recs if isinstance(r.get("val_accuracy"), (int, float))
           and not math.isnan(r["val_accuracy"])]
    return {"n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)), "acc_mean_pct": _pct(acc[0]),
            "acc_std_pct": _pct(acc[1]), "macro_f1_mean_pct": _pct(f1[0]), "macro_f1_std_pct": _pct(f1[1]),
            "val_acc_mean_pct": _pct(sum(val) / len(val)) if val else float("nan"),
            "train_seconds_mean": sum(float(r.get("train_seconds", 0.0)) for r in all_recs) / len(all_recs),
            "chosen": _chosen_summary(all_recs), "n_datasets": len(by_ds)}


def average_rows(records: Iterable[Mapping]) -> list[dict]:
    """The average-over-datasets row per (method, shots), only where every dataset has that cell (2+ datasets)."""
    records = [r for r in records if not r.get("ablation")]
    datasets = sorted({r["dataset"] for r in records})
    if len(datasets) < 2:
        return []
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[(_variant(r), int(r["shots"]))][r["dataset"]].append(r)
    rows = []
    for (m, k), groups in cells.items():
        if len(groups) != len(datasets):
            continue
        avg = _average(groups)
        if avg is not None:
            rows.append({"dataset": AVERAGE, "method": m, "shots": k, **avg})
    return sorted(rows, key=lambda x: (_method_key(x["method"]), x["shots"]))


def ablation_rows(records: Iterable[Mapping]) -> list[dict]:
    """One row per (ablation method, param, dataset, value, shots), plus the average over datasets."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        a = r.get("ablation")
        if a:
            groups[(a.get("method", r["method"]), a["param"], json.dumps(a["value"]), int(r["shots"]),
                    r["dataset"])].append(r)
    rows = []
    for (m, p, v, k, d), g in groups.items():
        s = _stats(g)
        rows.append({"dataset": d, "method": m, "param": p, "value": json.loads(v), "shots": k,
                     **{c: s[c] for c in ABLATION_COLUMNS if c in s}, "n_datasets": 1})
    by_cell: dict[tuple, dict[str, list]] = defaultdict(dict)
    datasets: dict[tuple, set] = defaultdict(set)
    for (m, p, v, k, d), g in groups.items():
        by_cell[(m, p, v, k)][d] = g
        datasets[(m, p, k)].add(d)
    for (m, p, v, k), g in by_cell.items():
        if len(datasets[(m, p, k)]) > 1 and len(g) == len(datasets[(m, p, k)]):
            avg = _average(g)
            if avg is not None:
                rows.append({"dataset": AVERAGE, "method": m, "param": p, "value": json.loads(v), "shots": k,
                             **{c: avg[c] for c in ABLATION_COLUMNS if c in avg}})

    def key(x):
        val = x["value"]
        return (x["method"], x["param"], x["shots"], x["dataset"] == AVERAGE, x["dataset"],
                (0, val, "") if isinstance(val, (int, float)) else (1, 0, str(val)))
    return sorted(rows, key=key)


# -- tables --------------------------------------------------------------------------------------------------
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
    from .cli import format_table
    return format_table([dict(zip(header, r)) for r in rows], header)


def markdown_summary(rows: Sequence[Mapping], avg: Sequence[Mapping], records: Sequence[Mapping] = ()) -> str:
    """The Markdown table: a row per (dataset, method), a column per shot count (0 = zero-shot)."""
    main = [r for r in records if not r.get("ablation")]
    shots = sorted({r["shots"] for r in list(rows) + list(avg)})
    n_exp = max((r["n_seeds"] for r in rows if r["shots"] > 0), default=1)
    index = {(r["dataset"], r["method"], r["shots"]): r for r in list(rows) + list(avg)}
    datasets = sorted({r["dataset"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=_method_key)
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
    methods = sorted({r["method"] for r in cells}, key=_method_key)
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


def _csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
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


# -- figures -------------------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)[:80] or "dataset"


def _save(fig, path: Path) -> Path:
    from .io import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_dataset(rows: Sequence[Mapping], title: str, path: str | Path) -> Path:
    """Accuracy vs shots (log2 x axis), a line per method with std error bars, zero-shot as a horizontal line."""
    # No pyplot: no global backend state; Figure.savefig renders with Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    methods = sorted({r["method"] for r in rows}, key=_method_key)
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
    return _save(fig, Path(path))


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
    return _save(fig, Path(path))


# -- entry points --------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    from .io import atomic_path
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def build_report(outdir: str | Path, figures: bool = True,
                 inputs: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Rebuild ``runs.jsonl``, the summary tables, the figures (and the ablation outputs) of ``outdir``.

    With ``inputs`` (experiment folders), their records are merged (:func:`merge_records`) and the report is
    written into ``outdir`` (created), whose own result files and ``runs.jsonl`` are left alone.

    Returns the written paths: ``markdown``, ``csv``, ``figures`` (list), ``runs`` (single folder only), and
    ``ablation_markdown``, ``ablation_csv`` when there were ablation runs; ``n_runs`` counts the records used.
    """
    from .grid import RUNS_FILE, rebuild_runs_jsonl
    outdir = Path(outdir)
    if inputs:
        records = merge_records(inputs)
        where = ", ".join(map(str, inputs))
    else:
        if not outdir.is_dir():
            raise FileNotFoundError(f"Results folder {outdir} not found.")
        records, where = load_records(outdir), str(outdir)
    if not records:
        raise ValueError(f"No result files in {where}; expected <dataset>/<method>/shots<K>-seed<S>.json "
                         f"(written by 'clip-adapter experiment').")
    for warning in text_prior_conflicts(records):
        log.warning(warning)
    out: dict[str, Any] = {"figures": [], "n_runs": len(records)}
    if not inputs:
        rebuild_runs_jsonl(outdir)
        out["runs"] = str(outdir / RUNS_FILE)
    rows, avg = summarize(records), average_rows(records)
    if rows:
        out["markdown"] = str(_write(outdir / "summary.md", markdown_summary(rows, avg, records)))
        out["csv"] = str(_write(outdir / "summary.csv", _csv_text(rows + avg, SUMMARY_COLUMNS)))
        if figures:
            backbone = ", ".join(sorted({str(r.get("backbone")) for r in records if not r.get("ablation")}))
            for d in sorted({r["dataset"] for r in rows}):
                p = plot_dataset([r for r in rows if r["dataset"] == d], f"{d} ({backbone})",
                                 outdir / "figures" / f"{_safe(d)}.png")
                out["figures"].append(str(p))
            if avg:
                n = len({r["dataset"] for r in rows})
                out["figures"].append(str(plot_dataset(avg, f"Average over {n} datasets ({backbone})",
                                                       outdir / "figures" / "average.png")))
    ab = ablation_rows(records)
    if ab:
        out["ablation_markdown"] = str(_write(outdir / "ablation.md", markdown_ablation(ab)))
        out["ablation_csv"] = str(_write(outdir / "ablation.csv", _csv_text(ab, ABLATION_COLUMNS)))
        if figures:
            for (m, p, k) in sorted({(r["method"], r["param"], r["shots"]) for r in ab}, key=str):
                sub = [r for r in ab if (r["method"], r["param"], r["shots"]) == (m, p, k)]
                out["figures"].append(str(plot_ablation(sub, m, p, k, outdir / "figures" /
                                                        f"ablation_{_safe(m)}_{_safe(p)}_{k}shot.png")))
    return out


def cmd_report(args) -> int:
    if len(args.outdir) > 1 and not args.into:
        raise SystemExit(f"report: {len(args.outdir)} folders given; merge them with --into DIR "
                         f"(one folder is reported in place).")
    if args.into:
        paths = build_report(args.into, figures=not args.no_figures, inputs=args.outdir)
    else:
        paths = build_report(args.outdir[0], figures=not args.no_figures)
    for key in ("markdown", "ablation_markdown"):
        if paths.get(key):
            print(Path(paths[key]).read_text())
    written = [paths.get(k) for k in ("markdown", "csv", "ablation_markdown", "ablation_csv", "runs")]
    print("wrote: " + ", ".join([p for p in written if p] + paths["figures"]), file=sys.stderr)
    return 0


def add_subcommands(sub) -> None:
    """The ``report`` command (cli.py discovers it through ``_optional_command_modules``)."""
    p = sub.add_parser("report", help="rebuild tables and figures from an experiment's result files.",
                       description="Read OUTDIR/<dataset>/<method>/shots<K>-seed<S>.json and write summary.md, "
                                   "summary.csv, figures/*.png (and ablation.* when present); rebuild runs.jsonl. "
                                   "With --into DIR, merge several OUTDIRs into one report in DIR.")
    p.add_argument("outdir", metavar="OUTDIR", nargs="+", help="the experiment's output folder (several with --into).")
    p.add_argument("--into", metavar="DIR", default=None,
                   help="merge the OUTDIRs' runs into one report written to DIR (the same run twice is an error).")
    p.add_argument("--no-figures", action="store_true", help="tables only.")
    p.set_defaults(func=cmd_report)
