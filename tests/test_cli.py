"""CLI end to end on a small generated dataset with the tiny random-init backbone."""
from __future__ import annotations

import json

import pytest

from clip_adapter.cli import build_parser, main

BASE = ["--backbone", "tiny-vit", "--pretrained", "none", "--workers", "0", "--no-progress"]


def test_run_end_to_end(color_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["run", "--data", str(color_dir), "--method", "clip_adapter", "--shots", "2", "--seed", "3",
               "--epochs", "3", "--views", "2", "--grid", "alpha=0.2,0.6", "--output", str(out),
               "--cache-dir", str(tmp_path / "c"), "--save-model", str(tmp_path / "model"), *BASE])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| colors" in printed and "clip_adapter" in printed
    f = out / "colors" / "clip_adapter" / "shots2-seed3.json"
    assert f"results: {f}" in printed
    rec = json.loads(f.read_text())
    assert rec["shots"] == 2 and rec["seed"] == 3 and rec["n_train"] == 8 and rec["n_val"] == 8
    assert rec["chosen"]["alpha"] in (0.2, 0.6) and len(rec["candidates"]) == 2
    assert rec["config"]["epochs"] == 3 and rec["backbone"].startswith("open_clip:tiny-vit/random-init-")
    assert 0 <= rec["accuracy"] <= 1 and "torch" in rec["versions"] and rec["n_test"] == 16
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert "test accuracy" in (tmp_path / "model" / "README.md").read_text()


def test_zero_shot_and_linear_probe(color_dir, tmp_path, capsys):
    for m in ("zero-shot", "linear_probe"):
        assert main(["run", "--data", str(color_dir), "--method", m, "--shots", "2", "--output", str(tmp_path),
                     "--cache-dir", str(tmp_path / "c"), *BASE]) == 0
    assert json.loads((tmp_path / "colors/zero_shot/shots0-seed1.json").read_text())["shots"] == 0
    lp = json.loads((tmp_path / "colors/linear_probe/shots2-seed1.json").read_text())
    assert "C" in lp["chosen"]


def test_cli_errors(color_dir, tmp_path, capsys):
    rc = main(["run", "--data", str(color_dir), "--method", "zero_shot", "--alpha", "0.3", *BASE])
    assert rc == 1
    assert "--alpha does not apply to method 'zero_shot'" in capsys.readouterr().err
    rc = main(["run", "--data", str(color_dir), "--method", "clip_adaptr", *BASE])
    assert "did you mean 'clip_adapter'" in capsys.readouterr().err and rc == 1
    rc = main(["run", "--data", str(color_dir), "--set", "alpah=0.1", *BASE])
    assert "did you mean 'alpha'" in capsys.readouterr().err and rc == 1
    rc = main(["run", "--data", str(color_dir), "--shots", "50", "--output", str(tmp_path), *BASE])
    assert "4 classes have fewer than 50 training images: 'blue' (6), 'green' (6)" in capsys.readouterr().err and rc == 1


def test_help_explains_every_option(capsys):
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    for action in run._actions:
        assert action.help, f"option {action.option_strings} has no help"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--adapter" in capsys.readouterr().out


@pytest.mark.parametrize("old, new, name", [
    ("clip_adapter.backbone", "clip_adapter.backbones", "load_backbone"),
    ("clip_adapter.data", "clip_adapter.datasets", "load_dataset"),
    ("clip_adapter.predict", "clip_adapter.model", "AdaptedClassifier"),
    ("clip_adapter.grid", "clip_adapter.experiment", "run_experiment"),
])
def test_old_import_paths_still_work_with_a_deprecation_warning(old, new, name):
    import importlib
    import sys
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        mod = importlib.import_module(old)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)
