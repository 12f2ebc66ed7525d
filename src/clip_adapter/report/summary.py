"""Result records -> table rows: mean ± std over seeds per (dataset, method, shots), the average over datasets, the
ablation rows, and the checks that make a merged report honest (a run twice, two text priors under one id)."""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation import mean_std
from ..results import load_records

__all__ = ["AVERAGE", "METHOD_ORDER", "merge_records", "text_prior_conflicts", "summarize", "average_rows",
           "ablation_rows", "method_key", "SUMMARY_COLUMNS", "ABLATION_COLUMNS"]

AVERAGE = "Average"
# Methods in the paper's order first, the rest alphabetically.
METHOD_ORDER = ("zero_shot", "linear_probe", "coop", "clip_adapter", "tip_adapter", "tip_adapter_f")
SUMMARY_COLUMNS = ("dataset", "method", "shots", "n_seeds", "seeds", "acc_mean_pct", "acc_std_pct",
                   "macro_f1_mean_pct", "macro_f1_std_pct", "val_acc_mean_pct", "train_seconds_mean", "chosen",
                   "n_datasets")
ABLATION_COLUMNS = ("dataset", "method", "param", "value", "shots", "n_seeds", "seeds", "acc_mean_pct",
                    "acc_std_pct", "macro_f1_mean_pct", "macro_f1_std_pct", "n_datasets")


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


def method_key(name: str) -> tuple:
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
    return sorted(rows, key=lambda x: (x["dataset"], method_key(x["method"]), x["shots"]))


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
    return sorted(rows, key=lambda x: (method_key(x["method"]), x["shots"]))


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
