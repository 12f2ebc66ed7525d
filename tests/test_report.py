"""Tables and figures from result files (clip_adapter.report), on hand-written records: no backbone, no training."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from clip_adapter.evaluation import mean_std
from clip_adapter.results import result_path
from clip_adapter.report import (AVERAGE, ablation_rows, average_rows, build_report, format_cell, load_records,
                                 markdown_summary, summarize)

ACC = {  # dataset -> method -> shots -> {seed: accuracy}
    "flowers": {"zero_shot": {0: {1: 0.60}},
                "linear_probe": {1: {1: 0.40, 2: 0.44, 3: 0.47}, 4: {1: 0.70, 2: 0.72, 3: 0.71}},
                "clip_adapter": {1: {1: 0.65, 2: 0.63, 3: 0.66}, 4: {1: 0.80, 2: 0.81, 3: 0.78}}},
    "dtd": {"zero_shot": {0: {1: 0.40}},
            "linear_probe": {1: {1: 0.30, 2: 0.33, 3: 0.31}, 4: {1: 0.50, 2: 0.52, 3: 0.49}},
            "clip_adapter": {1: {1: 0.45, 2: 0.44, 3: 0.46}, 4: {1: 0.55, 2: 0.58, 3: 0.57}}},
}


def _record(dataset, method, shots, seed, acc, variant=None, ablation=None) -> dict:
    rec = {"dataset": dataset, "method": method, "variant": variant or method, "shots": shots, "seed": seed,
           "split": "test", "accuracy": acc, "macro_f1": acc - 0.01, "val_accuracy": acc + 0.02 if shots else math.nan,
           "chosen": {"alpha": 0.6} if method == "clip_adapter" else {}, "train_seconds": 1.5, "n_views": 10,
           "backbone": "lite:test"}
    if ablation:
        rec["ablation"] = ablation
    return rec


def _write(out: Path, rec: dict) -> Path:
    path = result_path(out, rec["dataset"], rec["variant"], rec["shots"], rec["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


@pytest.fixture
def outdir(tmp_path) -> Path:
    for d, methods in ACC.items():
        for m, by_shots in methods.items():
            for k, by_seed in by_shots.items():
                for s, a in by_seed.items():
                    _write(tmp_path, _record(d, m, k, s, a))
    return tmp_path


def test_summary_rows_are_mean_std_over_seeds(outdir):
    rows = summarize(load_records(outdir))
    assert len(rows) == 2 * 5
    for r in rows:
        accs = list(ACC[r["dataset"]][r["method"]][r["shots"]].values())
        m, s = mean_std(accs)
        assert r["acc_mean_pct"] == pytest.approx(100 * m) and r["acc_std_pct"] == pytest.approx(100 * s)
        assert r["n_seeds"] == len(accs)
    assert [r["method"] for r in rows if r["dataset"] == "dtd"][:1] == ["zero_shot"]   # paper order


def test_average_row_is_per_seed_average_over_datasets(outdir):
    avg = {(r["method"], r["shots"]): r for r in average_rows(load_records(outdir))}
    per_seed = [(ACC["flowers"]["clip_adapter"][4][s] + ACC["dtd"]["clip_adapter"][4][s]) / 2 for s in (1, 2, 3)]
    m, s = mean_std(per_seed)
    assert avg[("clip_adapter", 4)]["acc_mean_pct"] == pytest.approx(100 * m)
    assert avg[("clip_adapter", 4)]["acc_std_pct"] == pytest.approx(100 * s)
    assert avg[("zero_shot", 0)]["acc_mean_pct"] == pytest.approx(50.0)
    assert avg[("clip_adapter", 4)]["n_datasets"] == 2


def test_average_needs_every_dataset(outdir):
    (outdir / "dtd" / "linear_probe" / "shots4-seed1.json").unlink()
    (outdir / "dtd" / "linear_probe" / "shots4-seed2.json").unlink()
    (outdir / "dtd" / "linear_probe" / "shots4-seed3.json").unlink()
    avg = {(r["method"], r["shots"]) for r in average_rows(load_records(outdir))}
    assert ("linear_probe", 4) not in avg and ("linear_probe", 1) in avg


def test_build_report_writes_tables_and_figures(outdir):
    (outdir / "dtd" / "clip_adapter" / "shots1-seed3.json").write_text("{ cut by kill -9")   # unfinished: skipped
    paths = build_report(outdir)
    assert paths["n_runs"] == 2 * (1 + 2 * 2 * 3) - 1
    md = Path(paths["markdown"]).read_text()
    flowers_ca4 = mean_std([0.80, 0.81, 0.78])
    assert f"{100 * flowers_ca4[0]:.2f} ± {100 * flowers_ca4[1]:.2f}" in md
    assert "(n=2)" in md                       # the cell that lost a seed is flagged
    assert "| **Average (2 datasets)** | zero_shot" in md and "0 (zero-shot)" in md
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["dataset"] for r in rows} == {"flowers", "dtd", AVERAGE}
    assert {Path(p).name for p in paths["figures"]} == {"flowers.png", "dtd.png", "average.png"}
    for p in paths["figures"]:
        with Image.open(p) as im:
            im.verify()
    lines = (outdir / "runs.jsonl").read_text().splitlines()
    assert len(lines) == paths["n_runs"] and len(set(lines)) == len(lines)


def test_format_cell():
    row = {"acc_mean_pct": 71.234, "acc_std_pct": 0.5, "n_seeds": 3, "shots": 4}
    assert format_cell(row, 3) == "71.23 ± 0.50"
    assert format_cell({**row, "n_seeds": 2}, 3) == "71.23 ± 0.50 (n=2)"
    assert format_cell({**row, "n_seeds": 1, "shots": 0}, 3) == "71.23"
    assert format_cell(None) == "-"


def test_ablation_table_and_figure(tmp_path):
    for d, peak in (("flowers", 0.8), ("imagenette", 0.2)):
        for a in (0.0, 0.2, 0.8):
            for s in (1, 2):
                acc = 0.9 - abs(a - peak) / 2 + 0.01 * s
                _write(tmp_path, _record(d, "clip_adapter", 16, s, acc, variant=f"clip_adapter-alpha{a:g}",
                                         ablation={"param": "alpha", "value": a, "method": "clip_adapter"}))
    _write(tmp_path, _record("flowers", "clip_adapter", 16, 1, 0.85))   # a main-grid run: not in the ablation
    records = load_records(tmp_path)
    ab = ablation_rows(records)
    best = {d: max((r for r in ab if r["dataset"] == d), key=lambda r: r["acc_mean_pct"])["value"]
            for d in ("flowers", "imagenette")}
    assert best == {"flowers": 0.8, "imagenette": 0.2}
    assert len([r for r in ab if r["dataset"] == AVERAGE]) == 3
    assert [r["variant"] for r in records if not r.get("ablation")] == ["clip_adapter"]
    paths = build_report(tmp_path)
    md = Path(paths["ablation_markdown"]).read_text()
    assert "TEST accuracy" in md and "never used to choose" in md and "alpha=0.8" in md
    fig = [p for p in paths["figures"] if "ablation_clip_adapter_alpha_16shot" in p]
    assert len(fig) == 1
    with Image.open(fig[0]) as im:
        assert im.format == "PNG"
    assert "clip_adapter-alpha" not in Path(paths["markdown"]).read_text()


def test_report_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Results folder .*missing not found"):
        build_report(tmp_path / "missing")
    with pytest.raises(ValueError, match="No result files in"):
        build_report(tmp_path)


def test_markdown_summary_without_average(outdir):
    recs = [r for r in load_records(outdir) if r["dataset"] == "dtd"]
    md = markdown_summary(summarize(recs), [], recs)
    assert "Average" not in md.split("|", 1)[1] and "| dtd" in md


def test_side_by_side_table_at_the_largest_shot_count(outdir):
    recs = load_records(outdir)
    md = markdown_summary(summarize(recs), average_rows(recs), recs)
    side = md.split("## Methods side by side at 4 shots", 1)[1]
    header = next(line for line in side.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "dtd", "flowers", AVERAGE]
    ca = mean_std([0.55, 0.58, 0.57])
    row = next(line for line in side.splitlines() if line.startswith("| clip_adapter"))
    assert f"{100 * ca[0]:.2f} ± {100 * ca[1]:.2f} (1.5 s)" in row
    assert "| zero_shot" in side and "40.00 (1.5 s)" in side
    # one method: no side-by-side section
    one = [r for r in recs if r["method"] == "clip_adapter"]
    assert "side by side" not in markdown_summary(summarize(one), [], one)


def test_merged_report_from_several_folders(outdir, tmp_path_factory):
    other = tmp_path_factory.mktemp("tip")
    for d in ("flowers", "dtd"):
        for s in (1, 2, 3):
            _write(other, {**_record(d, "tip_adapter", 4, s, 0.5 + 0.01 * s), "train_seconds": 0.25})
    into = tmp_path_factory.mktemp("merged") / "report"
    paths = build_report(into, figures=False, inputs=[outdir, other])
    assert paths["n_runs"] == 2 * (1 + 2 * 2 * 3) + 6 and "runs" not in paths
    md = Path(paths["markdown"]).read_text()
    assert "| tip_adapter" in md and "52.00 ± 1.00 (0.2 s)" in md.split("side by side", 1)[1]
    assert not (outdir / "summary.md").exists() and not (into / "runs.jsonl").exists()


def test_merged_report_refuses_a_run_twice(outdir, tmp_path):
    twice = tmp_path / "again"
    dup = _write(twice, _record("dtd", "linear_probe", 4, 2, 0.5))
    with pytest.raises(ValueError, match=r"^The same run \('dtd', 'linear_probe', 4, 2\) is in .*shots4-seed2.json "
                                         r"and .*again.*; report each run once\.$") as e:
        build_report(tmp_path / "merged", inputs=[outdir, twice])
    assert str(dup) in str(e.value)


def test_report_cli_merges_with_into(outdir, tmp_path, capsys):
    from clip_adapter.cli import main
    with pytest.raises(SystemExit, match="2 folders given; merge them with --into DIR"):
        main(["report", str(outdir), str(outdir)])
    assert main(["report", "--no-figures", "--into", str(tmp_path / "m"), str(outdir)]) == 0
    assert (tmp_path / "m" / "summary.md").is_file() and "## Methods side by side" in capsys.readouterr().out


def test_text_prior_conflicts_are_reported(outdir, caplog):
    from clip_adapter.report import text_prior_conflicts
    recs = load_records(outdir)
    assert text_prior_conflicts(recs) == []                       # older records without the field: not checked
    for i, r in enumerate(recs):
        r["text_features_sha256"] = "a" * 16 if r["dataset"] == "flowers" or i % 2 else "b" * 16
    lines = text_prior_conflicts(recs)
    assert len(lines) == 1 and lines[0].startswith("dtd with lite:test: runs used 2 different class text features")
