"""Tables and figures from the result files of an experiment (``clip-adapter report OUTDIR``).

Everything here is rebuilt from ``<OUTDIR>/<dataset>/<method>/shots<K>-seed<S>.json``, the records written by
:mod:`clip_adapter.experiment` (``runs.jsonl`` is rebuilt from them too), so the report of an interrupted or
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

* ``base_to_new.md`` / ``.csv`` / ``figures/base_to_new.png`` for base-to-new records (``protocol: base_to_new``;
  they stay out of the few-shot summary): base / new / HM per dataset and the average.
* ``transfer.md`` / ``.csv`` / ``figures/transfer.png`` for records with a ``transfer`` list (cross-dataset
  transfer, domain shift): source -> each target, n/a for methods that cannot transfer.

The std of the average row is the std over seeds of the per-seed average over datasets (seeds every dataset has).

``clip-adapter report --into DIR OUTDIR [OUTDIR ...]`` merges several experiments (e.g. one per method family) into
one report in ``DIR``; the same run in two folders is an error. ``summary.md`` ends with the methods side by side at
the largest shot count: accuracy and mean training time per dataset.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import safe_name, write_text
from ..results import RUNS_FILE, load_records, missing_runs, rebuild_runs_jsonl
from .figures import plot_ablation, plot_dataset
from .generalisation import (BASE_TO_NEW_COLUMNS, TRANSFER_COLUMNS, base_to_new_rows, is_base_to_new,
                             markdown_base_to_new, markdown_transfer, plot_base_to_new, plot_transfer, transfer_rows)
from .html import write_html_report
from .summary import (AVERAGE, ablation_rows, average_rows, merge_records, summarize, text_prior_conflicts)
from .tables import (ABLATION_COLUMNS, SUMMARY_COLUMNS, csv_text, format_cell, format_table, markdown_ablation,
                     markdown_comparison, markdown_summary)

__all__ = ["build_report", "load_records", "merge_records", "text_prior_conflicts", "summarize", "average_rows",
           "ablation_rows", "format_cell", "format_table", "markdown_summary", "markdown_comparison",
           "markdown_ablation", "plot_dataset", "plot_ablation", "AVERAGE"]

log = logging.getLogger(__name__)


def build_report(outdir: str | Path, figures: bool = True,
                 inputs: Sequence[str | Path] | None = None, html: bool = False) -> dict[str, Any]:
    """Rebuild ``runs.jsonl``, the summary tables, the figures (and the ablation outputs) of ``outdir``.

    With ``inputs`` (experiment folders), their records are merged (:func:`merge_records`) and the report is
    written into ``outdir`` (created), whose own result files and ``runs.jsonl`` are left alone.

    Returns the written paths: ``markdown``, ``csv``, ``figures`` (list), ``runs`` (single folder only), and
    ``ablation_markdown``, ``ablation_csv`` when there were ablation runs; ``n_runs`` counts the records used;
    ``html`` is the self-contained page (with ``html=True``); ``missing`` lists the planned runs (from the
    experiment's ``plan.json``) that have no result yet.
    """
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
    out: dict[str, Any] = {"figures": [], "n_runs": len(records), "missing": []}
    for folder in (inputs or [outdir]):
        plan = missing_runs(folder)
        if plan and plan[1]:
            out["missing"] += [str(Path(folder) / p) for p in plan[1]]
            log.warning("%s: %d of %d planned runs missing (e.g. %s); the tables show the finished ones. Rerun the "
                        "experiment to finish them.", folder, len(plan[1]), plan[0], plan[1][0])
    if not inputs:
        rebuild_runs_jsonl(outdir)
        out["runs"] = str(outdir / RUNS_FILE)
    out.update(_write_summary(outdir, [r for r in records if not is_base_to_new(r)], figures))
    out["figures"] += out.pop("summary_figures", [])
    out.update(_write_generalisation(outdir, records, figures))
    out["figures"] += out.pop("generalisation_figures", [])
    out.update(_write_ablation(outdir, records, figures))
    out["figures"] += out.pop("ablation_figures", [])
    if html:
        md = [out[k] for k in ("markdown", "ablation_markdown", "base_to_new_markdown", "transfer_markdown")
              if out.get(k)]
        out["html"] = str(write_html_report(outdir, md, out["figures"], f"clip-adapter report: {outdir.name}",
                                            out["missing"]))
    return out


def _write_summary(outdir: Path, records: list[dict], figures: bool) -> dict[str, Any]:
    rows, avg = summarize(records), average_rows(records)
    if not rows:
        return {}
    out: dict[str, Any] = {
        "markdown": str(write_text(outdir / "summary.md", markdown_summary(rows, avg, records))),
        "csv": str(write_text(outdir / "summary.csv", csv_text(rows + avg, SUMMARY_COLUMNS))), "summary_figures": []}
    if figures:
        backbone = ", ".join(sorted({str(r.get("backbone")) for r in records if not r.get("ablation")}))
        for d in sorted({r["dataset"] for r in rows}):
            out["summary_figures"].append(str(plot_dataset([r for r in rows if r["dataset"] == d], f"{d} ({backbone})",
                                                           outdir / "figures" / f"{safe_name(d, 'dataset')}.png")))
        if avg:
            n = len({r["dataset"] for r in rows})
            out["summary_figures"].append(str(plot_dataset(avg, f"Average over {n} datasets ({backbone})",
                                                           outdir / "figures" / "average.png")))
    return out


def _write_generalisation(outdir: Path, records: list[dict], figures: bool) -> dict[str, Any]:
    """The base-to-new and transfer tables (and figures) when there are such records."""
    out: dict[str, Any] = {}
    b2n = base_to_new_rows(records)
    if b2n:
        out["base_to_new_markdown"] = str(write_text(outdir / "base_to_new.md", markdown_base_to_new(b2n, records)))
        out["base_to_new_csv"] = str(write_text(outdir / "base_to_new.csv", csv_text(b2n, BASE_TO_NEW_COLUMNS)))
        if figures:
            out["generalisation_figures"] = [str(plot_base_to_new(b2n, outdir / "figures" / "base_to_new.png"))]
    tr = transfer_rows(records)
    if tr:
        out["transfer_markdown"] = str(write_text(outdir / "transfer.md", markdown_transfer(tr)))
        out["transfer_csv"] = str(write_text(outdir / "transfer.csv", csv_text(tr, TRANSFER_COLUMNS)))
        if figures:
            out.setdefault("generalisation_figures", []).append(
                str(plot_transfer(tr, outdir / "figures" / "transfer.png")))
    return out


def _write_ablation(outdir: Path, records: list[dict], figures: bool) -> dict[str, Any]:
    ab = ablation_rows(records)
    if not ab:
        return {}
    out: dict[str, Any] = {"ablation_markdown": str(write_text(outdir / "ablation.md", markdown_ablation(ab))),
                           "ablation_csv": str(write_text(outdir / "ablation.csv", csv_text(ab, ABLATION_COLUMNS))),
                           "ablation_figures": []}
    if figures:
        for (m, p, k) in sorted({(r["method"], r["param"], r["shots"]) for r in ab}, key=str):
            sub = [r for r in ab if (r["method"], r["param"], r["shots"]) == (m, p, k)]
            name = f"ablation_{safe_name(m, 'dataset')}_{safe_name(p, 'dataset')}_{k}shot.png"
            out["ablation_figures"].append(str(plot_ablation(sub, m, p, k, outdir / "figures" / name)))
    return out

