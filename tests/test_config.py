"""One config style: fields declared with ``setting(...)`` (default, doc, constraint together), validated in one
``__post_init__``, changed with a validated ``replace``; the generated references stay current."""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from clip_adapter.config import Config, Interval, MethodConfig, SettingError, invalid_examples, setting
from clip_adapter.experiment.schema import (AblationEntry, BackboneKeys, DatasetEntry, ExecutorEntry,
                                            ExperimentConfig, MethodEntry, RayEntry, TransferEntry, parse_config)
from clip_adapter.methods import get_method, get_method_class, list_methods
from clip_adapter.methods.reference import field_table, flags_module, reference_markdown
from clip_adapter.methods.taskres import TaskResConfig
from clip_adapter.methods.tip_adapter import TipAdapterFConfig
from clip_adapter.protocol import RunSpec
from clip_adapter.training import TrainingConfig

REPO = Path(__file__).resolve().parents[1]


def test_method_config_reference_is_current():
    assert (REPO / "docs" / "method-config.md").read_text() == reference_markdown(), \
        "docs/method-config.md is stale: run `python -m clip_adapter.methods.reference`"


def test_cli_flag_table_is_current():
    assert (REPO / "src" / "clip_adapter" / "cli" / "method_flags.py").read_text() == flags_module(), \
        "cli/method_flags.py is stale: run `python -m clip_adapter.methods.reference`"


@pytest.mark.parametrize("name", list_methods())
def test_every_field_is_declared_with_doc_and_constraint(name):
    cfg = get_method_class(name).config_cls
    for s in cfg.settings():
        assert s.doc, f"{cfg.__name__}.{s.name} has no doc"
        assert s.check is not None and s.check.ok(s.default), f"{cfg.__name__}.{s.name}: default fails its check"
    assert f"## `{name}` (`{cfg.__name__}`)" in reference_markdown()


def test_reference_lists_each_field_with_type_default_and_grid():
    doc = reference_markdown()
    section = doc.split("## `clip_adapter` (")[1].split("\n## ")[0]
    assert ("| `alpha` | `float` | 0.2 | a float in [0, 1] | residual ratio of the image adapter: alpha * A(f) + "
            "(1 - alpha) * f |") in section
    assert "Searched on validation by default: `alpha` in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]." in section
    coop = doc.split("## `coop` (")[1].split("\n## ")[0]
    assert "| `epochs` | `int \\| None` | null | an int >= 1 or None (by shots per class) |" in coop


def test_an_override_of_a_default_keeps_its_base_doc_and_constraint():
    base = {s.name: s for s in TrainingConfig.settings()}
    tip = {s.name: s for s in TipAdapterFConfig.settings()}
    assert tip["lr"].default == 1e-3 and tip["lr"].doc == base["lr"].doc and tip["lr"].check == base["lr"].check
    assert tip["warmup_epochs"].doc != base["warmup_epochs"].doc   # its own doc, the base's check
    assert tip["warmup_epochs"].check == base["warmup_epochs"].check
    with pytest.raises(ValueError, match=r"^The 'batch_size' parameter of TaskResConfig must be an int >= 1\. "
                                         r"Got 0 instead\.$"):
        TaskResConfig(batch_size=0)


def test_replace_validates_and_suggests():
    cfg = get_method_class("clip_adapter").config_cls()
    assert cfg.replace(alpha=0.6).alpha == 0.6 and cfg.alpha == 0.2
    with pytest.raises(ValueError, match=r"^The 'alpha' parameter of ClipAdapterConfig must be a float in \[0, 1\]\. "
                                         r"Got 1\.5 instead\.$"):
        cfg.replace(alpha=1.5)
    with pytest.raises(ValueError, match=r"^Unknown ClipAdapterConfig key 'alpah' \(did you mean 'alpha'\?\)\. "
                                         r"Valid: "):
        cfg.replace(alpah=0.1)
    with pytest.raises(ValueError, match="did you mean 'alpha'"):
        get_method("clip_adapter", cfg, alpah=0.1)
    assert get_method("clip_adapter", cfg, alpha=0.4).config.alpha == 0.4


def test_run_spec_shares_the_validation():
    assert isinstance(RunSpec("zero_shot"), Config)
    with pytest.raises(ValueError, match=r"^The 'shots' parameter of RunSpec must be an int >= 0\. Got -1 instead\.$"):
        RunSpec("clip_adapter", shots=-1)
    with pytest.raises(ValueError, match=r"^The 'overrides' parameter of RunSpec must be a mapping of config fields\. "
                                         r"Got \[\] instead\.$"):
        RunSpec("clip_adapter", overrides=[])
    spec = RunSpec("clip_adapter", shots=2)
    with pytest.raises(ValueError, match="'variant' parameter of RunSpec must be a non-empty string without '/'"):
        spec.replace(variant="a/b")
    with pytest.raises(ValueError, match=r"Unknown RunSpec key 'shot' \(did you mean 'shots'\?\)"):
        spec.replace(shot=4)
    assert spec.replace(seed=3).seed == 3


def test_a_new_config_is_one_declaration():
    @dataclasses.dataclass(frozen=True)
    class Toy(MethodConfig):
        width: int = setting(8, "hidden width", Interval(int, 1))

    assert [s.name for s in Toy.settings()] == ["seed", "width"] and Toy.all_constraints()["width"] == Interval(int, 1)
    with pytest.raises(ValueError, match=r"^The 'width' parameter of Toy must be an int >= 1\. Got 0 instead\.$"):
        Toy(width=0)


def test_the_old_constraints_dict_is_refused_not_ignored():
    with pytest.raises(TypeError, match="'constraints' dict is no longer read; declare each field as"):
        @dataclasses.dataclass(frozen=True)
        class Old(MethodConfig):
            width: int = 8
            constraints = {"width": Interval(int, 1)}


def _raw(*order):
    parts = {"root": "/data/here", "datasets": ["eurosat", {"data": "dtd", "root": "/elsewhere"}],
             "methods": ["zero_shot"]}
    return {k: parts[k] for k in order}


def test_the_data_root_reaches_the_datasets_whatever_the_key_order():
    a = parse_config(_raw("root", "datasets", "methods"))
    b = parse_config(_raw("datasets", "methods", "root"))
    assert a == b
    assert [d.root for d in b.datasets] == ["/data/here", "/elsewhere"]
    with pytest.raises(ValueError, match=r"^config: 'root' must be a string or null\. Got 3 instead\.$"):
        parse_config({**_raw("datasets", "methods"), "root": 3})


def test_experiment_replace_is_validated(tmp_path):
    cfg = parse_config(_raw("root", "datasets", "methods"), base_dir=tmp_path)
    new = cfg.replace(output=str(tmp_path / "out"), n_views=2)
    assert new.output == str(tmp_path / "out") and new.n_views == 2 and new.datasets == cfg.datasets
    with pytest.raises(ValueError, match=r"config: 'n_views' must be an int >= 0\. Got -1 instead\."):
        cfg.replace(n_views=-1)
    with pytest.raises(ValueError, match=r"unknown key 'outptu' \(did you mean 'output'\?\)"):
        cfg.replace(outptu="x")


_ENTRIES = {DatasetEntry: {"data": "dtd"}, MethodEntry: {"label": "m", "method": "zero_shot"}, BackboneKeys: {},
            AblationEntry: {"method": "clip_adapter", "param": "alpha", "values": (0.2,)}, RayEntry: {},
            ExecutorEntry: {}, TransferEntry: {"source": "dtd", "targets": (DatasetEntry("x"),)}}


@pytest.mark.parametrize("cls", [*_ENTRIES, ExperimentConfig], ids=lambda c: c.__name__)
def test_experiment_schema_entries_check_every_value_on_construction(cls, tmp_path):
    """The experiment schema's entries are Configs: each value is checked by the one __post_init__, from Python as
    from a file; every constraint rejects each of its invalid examples in the one message shape."""
    assert issubclass(cls, Config)
    entry = cls(**_ENTRIES[cls]) if cls in _ENTRIES else parse_config(_raw("datasets", "methods"), base_dir=tmp_path)
    checked = 0
    for s in cls.settings():
        for bad in invalid_examples(s.check) if s.check is not None else []:
            with pytest.raises(SettingError, match=rf"^The {s.name!r} parameter of {cls.__name__} must be "
                                                   rf"{re.escape(s.accepts)}\. Got .* instead\.$"):
                cls(**{**{f.name: getattr(entry, f.name) for f in dataclasses.fields(cls)}, s.name: bad})
            checked += 1
    assert checked >= len([s for s in cls.settings() if s.check is not None])


@pytest.mark.parametrize("change, message", [
    ({"datasets": [{"data": "dtd", "label": "a/b"}]},
     r"cfg\.yaml: datasets\[0\]: 'label' must be a non-empty name without '/' or null\. Got 'a/b' instead\."),
    ({"datasets": [{"label": "x"}]}, r"cfg\.yaml: datasets\[0\]: 'data' is required \(a path .*\)\. Keys: data, "
                                      r"root, label, allow_outside_paths\."),
    ({"ablation": {"method": "clip_adapter", "param": "alpha", "values": [0.2], "shots": [0]}},
     r"cfg\.yaml: ablation: 'shots' must be a non-empty list of distinct ints >= 1\. Got \[0\] instead\."),
    ({"ablation": {"method": "clip_adapter", "values": [0.2]}}, r"cfg\.yaml: ablation: 'param' is required "
                                                                 r"\(the config field to fix\)\. Keys: method, param, .*"),
    ({"executor": {"ray": {"cpus_per_run": 0}}},
     r"cfg\.yaml: executor\.ray: 'cpus_per_run' must be a float in \(0, inf\)\. Got 0 instead\."),
    ({"methods": {"clip_adapter": {"overrides": [1]}}},
     r"cfg\.yaml: methods\.clip_adapter: 'overrides' must be a mapping of method config fields\. Got \[1\] "
     r"instead\."),
    ({"templates": ["no slot"]},
     r"cfg\.yaml: 'templates' must be a list of strings with \{\} once, or null\. Got \['no slot'\] instead\."),
    ({"backbone": {"name": "lite", "device": 3}}, r"cfg\.yaml: backbone: 'device' must be a non-empty string\. Got 3 "
                                                  r"instead\."),
    ({"cache_dir": ""}, r"cfg\.yaml: 'cache_dir' must be a non-empty string or null\. Got '' instead\."),
    ({"name": ""}, r"cfg\.yaml: 'name' must be a non-empty string without '/' or null\. Got '' instead\."),
    ({"output": None}, r"cfg\.yaml: 'output' must be a non-empty string\. Got None instead\."),
    ({"transfer": {"source": "dtd"}}, r"cfg\.yaml: transfer: 'targets' is required \(target datasets .*\)\. Keys: "
                                      r"source, targets\."),
])
def test_a_file_value_is_checked_by_its_entry_and_said_in_the_files_terms(change, message):
    with pytest.raises(ValueError, match=rf"^{message}$"):
        parse_config({**_raw("datasets", "methods"), **change}, source="cfg.yaml")


def test_a_file_may_write_a_value_shortly():
    """The hand parsers only convert how a file may write a value; the entry's check judges the result."""
    cfg = parse_config({"datasets": ["dtd"], "shots": 4, "seeds": [7], "templates": "a {}.",
                        "methods": {"clip_adapter": {"overrides": None, "grid": {"alpha": (0.2, 0.4)}}},
                        "ablation": {"method": "clip-adapter", "param": "alpha", "values": [0.2], "seeds": 2}})
    assert cfg.shots == (4,) and cfg.seeds == (7,) and cfg.templates == ("a {}.",)
    assert cfg.methods[0].overrides == {} and cfg.methods[0].grid == {"alpha": [0.2, 0.4]}
    assert cfg.ablations[0].method == "clip_adapter" and cfg.ablations[0].seeds == (2,)
    assert cfg.datasets == (DatasetEntry("dtd"),) and cfg.replace(n_views=3).datasets == cfg.datasets


def _run_parser():
    from clip_adapter.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_run_has_a_flag_per_config_field():
    run = _run_parser()
    own = {"seed", "device", "batch_size", "template", "views"}   # run's own flags of these names
    for name, row in field_table().items():
        flag = "--" + name.replace("_", "-")
        assert flag in run._option_string_actions, flag
        action = run._option_string_actions[flag]
        assert (action.dest == f"config_{name}") == (name not in own), flag
    assert run._option_string_actions["--adapter"].dest == "config_target"   # the old spelling still works


def test_run_flags_become_typed_overrides():
    from clip_adapter.cli.run import _overrides
    run = _run_parser()
    args = run.parse_args(["--data", "x", "--lr", "1e-3", "--adapter", "both", "--no-final-relu", "--epochs", "5",
                           "--set", "batch_size=8"])
    cls = get_method_class("clip_adapter")
    assert _overrides(args, cls) == {"lr": 1e-3, "target": "both", "final_relu": False, "epochs": 5,
                                     "batch_size": 8}
    args = run.parse_args(["--data", "x", "--method", "coop", "--epochs", "none", "--init", "a photo of a"])
    assert _overrides(args, get_method_class("coop")) == {"epochs": None, "init": "a photo of a"}
    coop = get_method_class("coop").config_cls
    assert coop.parse_overrides(["epochs=null", "n_ctx=4", "init=a photo of a", "class_specific=yes"]) == \
        {"epochs": None, "n_ctx": 4, "init": "a photo of a", "class_specific": True}
    assert coop.parse_overrides(["epochs=none"]) == {"epochs": None} and coop.parse_overrides(["epochs=7"]) == \
        {"epochs": 7}
    with pytest.raises(ValueError, match=r"^Override n_ctx='4.5': expected an int\.$"):
        coop.parse_overrides(["n_ctx=4.5"])
    with pytest.raises(ValueError, match=r"^--n-ctx does not apply to method 'clip_adapter' \(its config has no "
                                         r"'n_ctx'\)\.$"):
        _overrides(run.parse_args(["--data", "x", "--n-ctx", "4"]), cls)


def test_training_settings_asked_of_a_training_free_method_are_the_training_configs_fields():
    """TRAINING_KEYS is derived from TrainingConfig: each field it adds (a new one included) is explained, not just
    unknown, when asked of a method that does not train."""
    from clip_adapter.methods.base import TRAINING_KEYS
    added = [s.name for s in TrainingConfig.settings() if s.name not in MethodConfig.field_names()]
    assert sorted(TRAINING_KEYS) == sorted(added) and {"epochs", "lr", "warmup_lr", "device"} <= set(added)
    for name in added:
        with pytest.raises(ValueError, match=rf"^Method 'gda' is training-free \(closed form\): it takes no "
                                             rf"'{name}' \(no epochs, lr or batch size\)\. Its settings: "):
            get_method("gda", **{name: 1})
