"""The experiment grid (clip_adapter.experiment): end to end on generated images, resume after kill -9, no test leakage.

Everything runs on the tiny random-init ``tiny-vit`` backbone (seeded by the grid, so every process builds the same
model) with a few epochs; torch uses one thread here (on a shared 2-core machine that is several times faster).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_color_images
from PIL import Image

from clip_adapter.evaluation import mean_std
from clip_adapter.experiment import load_config, parse_config, plan_runs, run_experiment
from clip_adapter.results import RUNS_FILE, claim_run, find_result_files

REPO = Path(__file__).resolve().parents[1]
SHOTS, SEEDS = [1, 2], [1, 2]
N_RUNS = 2 * (1 + len(SHOTS) * len(SEEDS) * 2)   # 2 datasets x (zero-shot once + shots x seeds x 2 trained)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: extra threads only add synchronisation


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("grid_data")
    return [str(make_color_images(root / "colorsA", per_class=8, size=32, seed=0)),
            str(make_color_images(root / "colorsB", per_class=8, size=32, seed=1))]


def small_config(datasets, output, cache_dir, **extra) -> dict:
    return {"name": "small", "datasets": list(datasets), "shots": SHOTS, "seeds": SEEDS,
            "methods": {"zero_shot": {}, "linear_probe": {"grid": {"C": [0.1, 10.0]}},
                        "clip_adapter": {"grid": {"alpha": [0.2, 0.6]}, "overrides": {"epochs": 4}}},
            "backbone": {"name": "tiny-vit", "pretrained": None}, "n_views": 2, "workers": 0,
            "cache_dir": str(cache_dir), "output": str(output), **extra}


@pytest.fixture(scope="module")
def small_run(datasets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid_run")
    return run_experiment(small_config(datasets, tmp / "out", tmp / "cache"), progress=False)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(rec: dict) -> tuple:
    return rec["dataset"], rec["variant"], rec["shots"], rec["seed"]


# -- end to end ----------------------------------------------------------------------------------------------
def test_small_grid_runs_end_to_end(small_run):
    out = small_run.output
    assert small_run.ran == N_RUNS and small_run.skipped == 0 and not small_run.failed
    files = find_result_files(out)
    assert len(files) == N_RUNS
    rows = _read_jsonl(out / RUNS_FILE)
    assert len(rows) == N_RUNS and len({_key(r) for r in rows}) == N_RUNS
    zs = [r for r in rows if r["method"] == "zero_shot"]
    assert len(zs) == 2 and all(r["shots"] == 0 and r["seed"] == 1 for r in zs)   # once per dataset
    for r in rows:
        assert r["split"] == "test" and 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1
        assert {"chosen", "val_accuracy", "train_seconds", "versions", "config", "run_settings"} <= set(r)
        if r["method"] == "clip_adapter":
            assert set(r["chosen"]) == {"alpha"} and r["config"]["epochs"] == 4 and r["n_views"] == 2
    copy = load_config(out / "experiment.yaml")     # the resolved config is written runnable as is
    assert copy == small_run.config.__class__(**{**small_run.config.__dict__, "source": str(out / "experiment.yaml")})


def test_table_cells_equal_mean_std_of_run_files(small_run):
    out = small_run.output
    recs = [json.loads(p.read_text()) for p in find_result_files(out)]
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    datasets = sorted({r["dataset"] for r in recs})
    assert len(table) == 2 * (1 + 2 * len(SHOTS)) + (1 + 2 * len(SHOTS))   # per dataset + the average rows
    md = (out / "summary.md").read_text()
    for row in table:
        k = int(row["shots"])
        if row["dataset"] == "Average":
            per_seed = [sum(r["accuracy"] for r in recs if r["variant"] == row["method"] and r["shots"] == k
                            and r["seed"] == s) / len(datasets)
                        for s in sorted({r["seed"] for r in recs if r["variant"] == row["method"] and r["shots"] == k})]
            m, s = mean_std(per_seed)
        else:
            cell = [r for r in recs if (r["dataset"], r["variant"], r["shots"]) == (row["dataset"], row["method"], k)]
            assert int(row["n_seeds"]) == len(cell) == (1 if k == 0 else len(SEEDS))
            m, s = mean_std([r["accuracy"] for r in cell])
            f1 = mean_std([r["macro_f1"] for r in cell])
            assert float(row["macro_f1_mean_pct"]) == pytest.approx(100 * f1[0], abs=1e-9)
        assert float(row["acc_mean_pct"]) == pytest.approx(100 * m, abs=1e-9)
        assert float(row["acc_std_pct"]) == pytest.approx(100 * s, abs=1e-9)
        text = f"{100 * m:.2f}" + (f" ± {100 * s:.2f}" if k else "")
        assert text in md
    assert "Average (2 datasets)" in md and "0 (zero-shot)" in md


def test_figures_are_valid_pngs(small_run):
    figs = [Path(p) for p in small_run.report["figures"]]
    names = {p.name for p in figs}
    assert names == {"colorsA.png", "colorsB.png", "average.png"}
    for p in figs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 200


def test_rerun_skips_finished_runs_and_encodes_nothing(small_run):
    again = run_experiment(small_run.config, progress=False, report=False)
    assert again.ran == 0 and again.skipped == N_RUNS and again.encoded_images == 0
    assert [r["accuracy"] for r in again.records] == [r["accuracy"] for r in small_run.records]
    assert len(_read_jsonl(small_run.output / RUNS_FILE)) == N_RUNS


def test_changed_settings_are_not_silently_reused(small_run, datasets):
    raw = small_config(datasets, small_run.config.output, small_run.config.cache_dir)
    raw["methods"]["clip_adapter"]["overrides"] = {"epochs": 5}
    with pytest.raises(ValueError, match=r"other settings \(overrides"):
        run_experiment(raw, progress=False, dry_run=True)


def _stale(raw: dict) -> str:
    with pytest.raises(ValueError, match=r"was made with other settings") as err:
        run_experiment(raw, progress=False, dry_run=True)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("change, key", [
    (lambda r: r["methods"]["clip_adapter"].update(grid={"alpha": [0.2, 0.8]}), "grid.alpha"),
    (lambda r: r["methods"]["clip_adapter"].update(method="tip_adapter_f"), "method"),
    (lambda r: r.update(n_views=3), "n_views"),
    (lambda r: r.update(repeat_shots=True), "repeat_shots"),
    (lambda r: r.update(templates=["a {} thing."]), "templates"),
    (lambda r: r.update(backbone={"name": "tiny-rn", "pretrained": None}), "backbone.name"),
    (lambda r: r.update(backbone={"name": "tiny-vit", "pretrained": "openai"}), "backbone.pretrained"),
])
def test_each_setting_that_changes_a_result_makes_it_stale(small_run, datasets, change, key):
    raw = small_config(datasets, small_run.config.output, small_run.config.cache_dir)
    change(raw)
    assert f"other settings ({key}:" in _stale(raw)


def test_other_data_under_the_same_label_makes_results_stale(small_run, datasets, tmp_path):
    # Same folder name (so the same label and result paths), other images: another source.
    other = make_color_images(tmp_path / "elsewhere" / "colorsA", per_class=8, size=32, seed=7)
    raw = small_config([str(other), datasets[1]], small_run.config.output, small_run.config.cache_dir)
    assert "(dataset.source:" in _stale(raw)
    # Nothing changed: every result is reused.
    same = run_experiment(small_config(datasets, small_run.config.output, small_run.config.cache_dir),
                          progress=False, dry_run=True)
    assert same.skipped == N_RUNS


def test_changed_split_lists_of_the_same_folder_make_results_stale(tmp_path):
    data = make_color_images(tmp_path / "colors", per_class=4, size=16, seed=3)
    raw = {**small_config([str(data)], tmp_path / "out", tmp_path / "cache"), "methods": {"zero_shot": {}}}
    assert run_experiment(raw, progress=False, report=False).ran == 1
    assert run_experiment(raw, progress=False, dry_run=True).skipped == 1
    next((data / "red").iterdir()).unlink()       # the same folder (same source) now lists other images
    assert "(dataset.sha256." in _stale(raw)


def test_settings_hold_every_runspec_field_and_the_dataset_identity(tmp_path):
    from clip_adapter.datasets import load_dataset
    from clip_adapter.experiment.plan import NOT_IN_SETTINGS, dataset_identity
    from clip_adapter.protocol import RunSpec
    data = make_color_images(tmp_path / "colors", per_class=4, size=16, seed=3)
    config = parse_config(small_config([str(data)], tmp_path / "o", tmp_path / "c"))
    ident = dataset_identity(load_dataset(data))
    run = plan_runs(config, ["colors"], [ident])[1]
    settings = run.settings(config)
    assert {f.name for f in dataclasses.fields(RunSpec)} - NOT_IN_SETTINGS <= set(settings)
    assert settings["dataset"] == ident and set(ident["sha256"]) == {"train", "val", "test", "classnames",
                                                                     "templates"}
    spec = run.spec(config)
    assert (spec.method, spec.shots, spec.seed, spec.variant, spec.n_views) == (run.method, run.shots, run.seed,
                                                                               run.variant, config.n_views)
    # A moved copy of the same folder has the same split fingerprints (paths are relative), another source.
    import shutil
    moved = dataset_identity(load_dataset(shutil.copytree(data, tmp_path / "moved" / "colors")))
    assert moved["sha256"] == ident["sha256"] and moved["source"] != ident["source"]


# -- resume after kill -9 ------------------------------------------------------------------------------------
def test_kill_midway_then_resume_gives_same_results_without_duplicates(datasets, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(small_config(datasets[:1], out, cache)))
    n_runs = N_RUNS // 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clip_adapter.cli", "experiment", str(cfg), "--no-progress", "--no-report"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not find_result_files(out):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no result file within 120 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done_before = len(find_result_files(out))
    assert 1 <= done_before < n_runs, "the kill should land midway"

    resumed = run_experiment(cfg, progress=False, report=False)
    assert resumed.skipped == done_before and resumed.ran == n_runs - done_before
    rows = _read_jsonl(out / RUNS_FILE)
    assert len(rows) == n_runs and len({_key(r) for r in rows}) == n_runs

    # An uninterrupted pass over the same (cached: nothing is encoded again) features gives the same records.
    reference = run_experiment(cfg, progress=False, report=False, output=str(tmp_path / "reference"))
    assert reference.encoded_images == 0 and reference.ran == n_runs
    got = {_key(r): r for r in rows}
    for ref in reference.records:
        r = got[_key(ref)]
        fields = ("accuracy", "macro_f1", "chosen", "val_accuracy", "candidates")   # NaN-safe via JSON
        assert json.dumps([r[f] for f in fields]) == json.dumps([ref[f] for f in fields])


def test_a_claimed_run_is_not_claimed_twice(tmp_path):
    result = tmp_path / "ds" / "m" / "shots1-seed1.json"
    with claim_run(tmp_path, result) as first:
        assert first
        with claim_run(tmp_path, result) as second:
            assert not second
    with claim_run(tmp_path, result) as again:
        assert again


# -- the search never sees test data -------------------------------------------------------------------------
def _csv_dataset(folder: Path, images: Path, permute_test: bool) -> Path:
    rows = []
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    for y, c in enumerate(classes):
        files = sorted((images / c).glob("*.png"))
        for i, f in enumerate(files):
            split = "train" if i < 4 else "val" if i < 6 else "test"
            rows.append([str(f), y, split])
    if permute_test:   # a derangement of the test labels: every test image gets another class
        test = [r for r in rows if r[2] == "test"]
        labels = [r[1] for r in test]
        for r, y in zip(test, labels[2:] + labels[:2]):
            r[1] = y
    folder.mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(classes) + "\n")
    path = folder / f"{folder.name}.csv"
    path.write_text("path,label,split\n" + "".join(f"{p},{y},{s}\n" for p, y, s in rows))
    return path


def test_search_never_sees_test_labels(datasets, tmp_path):
    images = Path(datasets[0])
    a = _csv_dataset(tmp_path / "orig", images, permute_test=False)
    b = _csv_dataset(tmp_path / "permuted", images, permute_test=True)
    # The CSVs list the images of another folder by absolute path: allowed explicitly, per dataset.
    cfg = small_config([{"data": str(a), "allow_outside_paths": True}, {"data": str(b), "allow_outside_paths": True}],
                       tmp_path / "out", tmp_path / "cache", shots=[2], seeds=[1],
                       methods={"linear_probe": {"grid": {"C": [0.01, 1.0, 100.0]}},
                                "clip_adapter": {"grid": {"alpha": [0.2, 0.5, 0.8]}, "overrides": {"epochs": 4}}})
    res = run_experiment(cfg, progress=False, report=False)
    by = {(r["dataset"], r["method"]): r for r in res.records}
    for method in ("linear_probe", "clip_adapter"):
        orig, perm = by[("orig", method)], by[("permuted", method)]
        assert perm["chosen"] == orig["chosen"]
        assert perm["val_accuracy"] == orig["val_accuracy"]
        assert perm["candidates"] == orig["candidates"]
    # The permutation did change what test measures.
    assert any(by[("orig", m)]["accuracy"] != by[("permuted", m)]["accuracy"] for m in ("linear_probe", "clip_adapter"))


# -- config validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"seed": [1]}, r"unknown key 'seed' \(did you mean 'seeds'\?\)"),
    ({"shots": [0, 2]}, r"'shots' must be a non-empty list of distinct ints >= 1\. Got \[0, 2\]"),
    ({"methods": {"clip_adaptor": {}}}, r"methods\.clip_adaptor: Unknown method 'clip_adaptor'.*did you mean 'clip_adapter'"),
    ({"methods": {"clip_adapter": {"overides": {}}}}, r"methods\.clip_adapter: unknown key 'overides' \(did you mean 'overrides'"),
    ({"methods": {"clip_adapter": {"grid": {"alpah": [0.2]}}}}, r"methods\.clip_adapter\.grid: Unknown ClipAdapterConfig key 'alpah' \(did you mean 'alpha'"),
    ({"methods": {"clip_adapter": {"grid": {"alpha": [0.2, 1.5]}}}}, r"The 'alpha' parameter of ClipAdapterConfig must be a float in \[0, 1\]\. Got 1\.5"),
    ({"backbone": {"name": "RN50", "pretrain": "openai"}}, r"backbone: unknown key 'pretrain' \(did you mean 'pretrained'"),
    ({"datasets": []}, r"'datasets' must be a non-empty list"),
    ({"ablation": {"method": "clip_adapter", "param": "alpah", "values": [0.2]}}, r"ablation: Unknown ClipAdapterConfig param 'alpah' \(did you mean 'alpha'"),
    ({"n_views": -1}, r"'n_views' must be an int >= 0\. Got -1"),
])
def test_config_errors_are_one_line_and_name_the_key(change, message, tmp_path):
    raw = {**small_config(["a", "b"], tmp_path / "o", tmp_path / "c"), **change}
    with pytest.raises(ValueError, match=message) as err:
        parse_config(raw, source="cfg.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("cfg.yaml")


def test_zero_shot_is_planned_once_per_dataset_and_ablation_runs_are_separate(tmp_path):
    raw = small_config(["a", "b"], tmp_path / "o", tmp_path / "c",
                       ablation={"method": "clip_adapter", "param": "alpha", "values": [0.0, 0.5], "shots": [2]})
    runs = plan_runs(parse_config(raw), ["A", "B"])
    assert len(runs) == N_RUNS + 2 * 2 * len(SEEDS)
    assert [r.shots for r in runs if r.method == "zero_shot"] == [0, 0]
    ab = [r for r in runs if r.ablation]
    assert {r.variant for r in ab} == {"clip_adapter-alpha0", "clip_adapter-alpha0.5"}
    assert all(r.overrides["alpha"] == r.ablation["value"] and r.shots == 2 for r in ab)


@pytest.mark.parametrize("name", ["paper", "shared_lite", "alpha_ablation"])
def test_shipped_configs_are_valid(name, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "configs" / ("" if name == "paper" else "reproduce") / f"{name}.yaml")
    if name == "paper":
        assert len(cfg.datasets) == 11 and cfg.backbone.name == "RN50" and cfg.backbone.pretrained == "openai"
        assert [m.method for m in cfg.methods] == ["zero_shot", "linear_probe", "coop", "clip_adapter"]
    if name == "shared_lite":
        assert cfg.backbone.name == "lite" and [m.method for m in cfg.methods] == \
               ["zero_shot", "linear_probe", "clip_adapter"]
        assert all(Path(d.data).resolve().parent == (REPO.parent / "shared" / "datasets").resolve()
                   for d in cfg.datasets)
    assert cfg.shots == (1, 2, 4, 8, 16) or cfg.ablations
    assert cfg.seeds == (1, 2, 3)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_config_loads(path, monkeypatch):
    """A config in configs/ that no longer parses (a renamed key, a method gone) fails here, not in a user's run."""
    monkeypatch.chdir(REPO)
    cfg = load_config(path)
    assert cfg.methods or cfg.ablations
    assert cfg.datasets and cfg.seeds


def test_experiment_and_report_commands(small_run, datasets, tmp_path, capsys):
    from clip_adapter.cli import main
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(small_config(datasets, small_run.output, small_run.config.cache_dir)))
    assert main(["experiment", str(cfg), "--dry-run"]) == 0
    assert f"{N_RUNS} runs, {N_RUNS} done, 0 to go" in capsys.readouterr().out
    (small_run.output / "summary.md").unlink()
    assert main(["report", str(small_run.output)]) == 0
    assert "| colorsA" in capsys.readouterr().out and (small_run.output / "summary.md").is_file()


def test_config_reference_is_generated_from_the_key_table():
    from clip_adapter.experiment.schema import ExperimentConfig, reference_markdown
    doc = REPO / "docs" / "experiment-config.md"
    assert doc.read_text() == reference_markdown(), (
        "docs/experiment-config.md is stale; regenerate it: python -c \"from clip_adapter.experiment.schema import "
        "reference_markdown as r; print(r(), end='')\" > docs/experiment-config.md")
    yaml_keys = [f.metadata.get("key") or f.name for f in dataclasses.fields(ExperimentConfig) if f.metadata]
    assert all(f"| `{k}` |" in doc.read_text() for k in yaml_keys)
