"""One record builder: every producer (``clip-adapter run``, the experiment grid, both ablations, the demo) writes its
records through ``protocol.run_one``, so each carries exactly the documented fields (RECORD_FIELDS), plus only the
documented producer fields."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_adapter import RunSpec, load_dataset, run_experiment, run_one
from clip_adapter.ablations import layer_sweep, placement_table
from clip_adapter.cli import main
from clip_adapter.demo import run_demo
from clip_adapter.protocol import MEMORY_FIELDS, OPTIONAL_FIELDS, RECORD_FIELDS, resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"epochs": 2}


def _check(rec: dict, producer_fields: set[str]) -> None:
    assert set(RECORD_FIELDS) <= set(rec), sorted(set(RECORD_FIELDS) - set(rec))
    extra = set(rec) - set(RECORD_FIELDS) - set(MEMORY_FIELDS)
    assert extra == producer_fields and extra <= set(OPTIONAL_FIELDS), sorted(extra)
    json.dumps(rec, allow_nan=False)  # strict JSON: no NaN anywhere
    if "result_file" in rec:  # what is on disk is the record minus the in-memory fields
        on_disk = json.loads(Path(rec["result_file"]).read_text())
        assert set(on_disk) == set(rec) - set(MEMORY_FIELDS)


def test_run_one_and_the_run_command(tiny_backbone, color_dir, tmp_path):
    ds = load_dataset(color_dir)
    rec = run_one(ds, tiny_backbone, RunSpec("clip_adapter", shots=2, overrides=FAST, n_views=1), output=tmp_path)
    _check(rec, set())
    out = tmp_path / "cli"
    assert main(["run", "--data", str(color_dir), "--backbone", "tiny-vit", "--pretrained", "none", "--method",
                 "linear_probe", "--shots", "2", "--views", "0", "--output", str(out), "--no-progress",
                 "--workers", "0", "--cache-dir", str(tmp_path / "cache")]) == 0
    (path,) = out.rglob("shots2-seed1.json")
    _check({**json.loads(path.read_text()), "result_file": str(path)}, set())


def test_experiment_records(color_dir, tmp_path):
    cfg = {"datasets": [str(color_dir)], "shots": [2], "seeds": [1], "n_views": 1, "workers": 0,
           "backbone": {"name": "tiny-vit", "pretrained": None}, "methods": {"zero_shot": {}},
           "ablation": {"method": "clip_adapter", "param": "alpha", "values": [0.5], "shots": [2],
                        "overrides": FAST},
           "cache_dir": str(tmp_path / "cache"), "output": str(tmp_path / "out"), "report": False}
    result = run_experiment(cfg, progress=False)
    for rec in result.records:
        _check(rec, {"variant", "experiment", "run_settings"} | ({"ablation"} if rec.get("ablation") else set()))


def test_ablation_records(tiny_backbone, color_dir, tmp_path):
    ds = load_dataset(color_dir)
    for rec in placement_table(ds, tiny_backbone, shots=[2], alphas=[0.5], overrides=FAST, n_views=0,
                               output=tmp_path / "placement"):
        _check(rec, {"target"})
        assert f"clip_adapter-{rec['target']}" in rec["result_file"]
    for rec in layer_sweep(ds, tiny_backbone, layers=[1], shots=2, overrides=FAST, grid={}, root=tmp_path / "act",
                           num_workers=0, output=tmp_path / "layers"):
        _check(rec, {"layer", "num_blocks"})


def test_demo_records(tiny_backbone, tmp_path):
    result = run_demo(tiny_backbone, shots=[1], output=tmp_path / "demo", cache_dir=tmp_path / "cache",
                      progress=False)
    assert [r["method"] for r in result.records] == ["zero_shot", "linear_probe", "clip_adapter"]
    for rec in result.records:
        _check(rec, set())
    assert result.figure.is_file()


def test_resolve_config_checks_keys_and_injects_the_device():
    cls, cfg = resolve_config("clip_adapter", {"alpha": 0.4}, seed=3, device="cpu")
    assert (cfg.alpha, cfg.seed, cfg.device) == (0.4, 3, "cpu")
    _, lp = resolve_config("linear_probe", {}, device="cuda")   # no device field: nothing injected
    assert not hasattr(lp, "device")
    with pytest.raises(ValueError, match=r"method 'clip_adapter': Unknown ClipAdapterConfig key 'alpah' "
                                         r"\(did you mean 'alpha'\?\)"):
        resolve_config("clip_adapter", {"alpah": 0.4})
