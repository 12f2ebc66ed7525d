"""The selection protocol: hp_selection regimes, grid-edge flags, refinement, and what records say about them."""
from __future__ import annotations

import logging

import pytest
import torch

from clip_adapter import RunSpec, load_dataset, run_one
from clip_adapter.experiment.schema import parse_config
from clip_adapter.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
from clip_adapter.methods.linear_probe import LinearProbe, LinearProbeConfig
from clip_adapter.methods.tip_adapter import TipAdapterConfig
from clip_adapter.prompts import ClassText
from clip_adapter.protocol import fewshot_items
from clip_adapter.selection import FeatureSplit, grid_edges, select

from conftest import clustered

pytestmark = pytest.mark.usefixtures("one_thread")


def _text(t: torch.Tensor) -> ClassText:
    return ClassText([f"class {i}" for i in range(len(t))], ["a photo of a {}."], t, 100.0)


def test_grid_edges():
    grid = {"alpha": [0.1, 1.0, 10.0], "beta": [1, 2, 3], "target": ["image", "text"], "one": [5]}
    assert grid_edges(grid, {"alpha": 0.1, "beta": 2, "target": "image", "one": 5}) == ["alpha"]
    assert grid_edges(grid, {"alpha": 1.0, "beta": 3, "target": "text", "one": 5}) == ["beta"]
    # a refinement that chose past the first grid's end is on (beyond) the edge too
    assert grid_edges({"alpha": grid["alpha"]}, {"alpha": 0.05}) == ["alpha"]
    assert grid_edges({"alpha": grid["alpha"]}, {"alpha": 0.5}) == []


def test_a_grid_end_that_is_the_end_of_the_range_is_not_an_edge():
    """CLIP-Adapter's alpha lives in [0, 1]: choosing 1 (all adapter) misses nothing beyond the grid; 0.8 as the top
    of a narrower grid does. The limits are the config's own constraints."""
    limits = ClipAdapterConfig.all_constraints()
    grid = {"alpha": [0.2, 0.6, 1.0]}
    assert grid_edges(grid, {"alpha": 1.0}, limits) == []
    assert grid_edges(grid, {"alpha": 1.0}) == ["alpha"]                      # without limits: the old rule
    assert grid_edges(grid, {"alpha": 0.2}, limits) == ["alpha"]
    assert grid_edges({"alpha": [0.2, 0.8]}, {"alpha": 0.8}, limits) == ["alpha"]
    assert {0.0, 1.0} <= set(ClipAdapter.default_grid["alpha"])
    # Tip-Adapter's alpha >= 0: 0 (zero-shot, the cache unused) is the end of its range; its grid's top is not
    tip = TipAdapterConfig.all_constraints()
    assert grid_edges({"alpha": [0.0, 1.0], "beta": [1.0, 2.0]}, {"alpha": 0.0, "beta": 1.5}, tip) == []
    assert grid_edges({"alpha": [0.0, 1.0], "beta": [1.0, 2.0]}, {"alpha": 1.0, "beta": 2.0}, tip) == \
        ["alpha", "beta"]


def test_linear_probe_search_refines_and_flags_its_edge(caplog):
    feats, labels, text = clustered(n_classes=4, per_class=6, dim=16, seed=4)
    val_f, val_l, _ = clustered(n_classes=4, per_class=4, dim=16, seed=4, noise=1.5)
    train, val = FeatureSplit(feats, labels), FeatureSplit(val_f, val_l)
    sel = select("linear_probe", LinearProbeConfig(), LinearProbe.default_grid, train, val, _text(text))
    tried = [c["C"] for c in sel.candidates]
    assert tried[:13] == [10.0 ** k for k in range(6, -7, -1)]               # CoOp's lpclip range, decades
    best_coarse = max(sel.candidates[:13], key=lambda c: c["val_accuracy"])["C"]
    assert sorted(tried[13:]) == pytest.approx(sorted(best_coarse * 10 ** (j / 4) for j in (-3, -2, -1, 1, 2, 3)))
    assert sel.val_accuracy == max(c["val_accuracy"] for c in sel.candidates)
    # a grid whose best value is its end is flagged, and logged as a warning (ties keep the first point: 0)
    with caplog.at_level(logging.WARNING, logger="clip_adapter.selection"):
        low = select("tip_adapter", TipAdapterConfig(), {"alpha": [1e-9, 2e-9], "beta": [1.0]}, train, val,
                     _text(text))
    assert low.chosen == {"alpha": 1e-9, "beta": 1.0} and low.at_grid_edge == ["alpha"]
    assert "lies on the edge of the values searched on validation" in caplog.text


def test_hp_selection_regimes_and_records(tiny_backbone, color_dir, tmp_path):
    ds = load_dataset(color_dir)
    spec = RunSpec("tip_adapter", shots=2, n_views=1, grid={"alpha": [0.5, 1.0], "beta": [1.0, 5.0]})
    train, few = fewshot_items(ds, spec)
    assert len(few) == 2 * len(ds.classnames)                              # min(K, 4) per class
    _, full = fewshot_items(ds, RunSpec("tip_adapter", shots=2, hp_selection="full_val"))
    assert sorted(it.path for it in full) == sorted(it.path for it in ds.split("val"))
    assert fewshot_items(ds, RunSpec("tip_adapter", shots=2, hp_selection="none"))[1] == []

    rec = run_one(ds, tiny_backbone, spec)
    assert rec["hp_selection"] == "few_shot_val" and rec["n_val"] == len(few)
    assert isinstance(rec["at_grid_edge"], list) and len(rec["candidates"]) == 4
    full_rec = run_one(ds, tiny_backbone, RunSpec("tip_adapter", shots=2, n_views=1, grid=spec.grid,
                                                   hp_selection="full_val"))
    assert full_rec["hp_selection"] == "full_val" and full_rec["n_val"] == len(ds.split("val"))
    none = run_one(ds, tiny_backbone, RunSpec("tip_adapter", shots=2, n_views=1, grid=spec.grid,
                                              hp_selection="none"))
    assert none["hp_selection"] == "none" and none["n_val"] == 0 and none["candidates"] == [{"val_accuracy": None}]
    assert none["chosen"] == {} and none["config"]["alpha"] == 1.0                 # the config's default
    # methods with nothing to choose say none, whatever was asked
    assert run_one(ds, tiny_backbone, RunSpec("zero_shot"))["hp_selection"] == "none"
    fixed = run_one(ds, tiny_backbone, RunSpec("taskres", shots=2, n_views=1, overrides={"epochs": 2}))
    assert fixed["hp_selection"] == "none" and fixed["at_grid_edge"] == []


def test_hp_selection_in_the_experiment_yaml_and_the_spec(color_dir):
    cfg = parse_config({"datasets": [str(color_dir)], "methods": ["gda"], "hp_selection": "full_val"})
    assert cfg.hp_selection == "full_val"
    with pytest.raises(ValueError, match=r"'hp_selection' must be one of 'few_shot_val', 'full_val', 'none'\. "
                                         r"Got 'test' instead\."):
        parse_config({"datasets": [str(color_dir)], "methods": ["gda"], "hp_selection": "test"})
    with pytest.raises(ValueError, match=r"The 'hp_selection' parameter of RunSpec must be one of"):
        RunSpec("gda", hp_selection="val")


def test_cli_refuses_training_settings_for_a_training_free_method(color_dir, capsys):
    from clip_adapter.cli import main
    rc = main(["run", "--data", str(color_dir), "--backbone", "tiny-vit", "--pretrained", "none", "--method", "gda",
               "--set", "epochs=5"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert "Method 'gda' is training-free (closed form): it takes no 'epochs'" in err
