"""The generalisation protocols: base-to-new (CoCoOp's split and order, nothing of the new classes in training or
selection, transfer vs zero-shot fallback), domain shift through the wnid mapping (a generated shifted copy of
Imagenette, and a synthetic one without ../shared), cross-dataset transfer, and their report tables."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from safetensors.torch import load_file

from clip_adapter import RunSpec, load_dataset, run_experiment, run_one
from clip_adapter.cli import main
from clip_adapter.datasets.base_new import base_new_labels, class_subset
from clip_adapter.datasets.class_ids import class_ids
from clip_adapter.datasets.types import Dataset, Item
from clip_adapter.features import FeatureCache
from clip_adapter.generalisation import base_to_new_split, harmonic_mean, run_base_to_new, score_on
from clip_adapter.methods import get_method, get_method_class, list_methods
from clip_adapter.model import AdaptedClassifier
from clip_adapter.prompts import ClassText
from clip_adapter.protocol import MEMORY_FIELDS, OPTIONAL_FIELDS, RECORD_FIELDS

from conftest import SHARED, clustered, needs_shared

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 2}
# Four real ImageNet wnids as class folders: the generated model knows its classes by wnid.
WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684"]
RGB = {"n01440764": (200, 30, 30), "n02102040": (30, 200, 30), "n02979186": (30, 30, 200),
       "n03000684": (200, 200, 30)}


def cocoop_subsample(train, *splits, subsample):
    """CoCoOp's ``OxfordPets.subsample_classes`` (KaiyangZhou/CoOp datasets/oxford_pets.py), re-stated on
    (path, label) pairs: labels of the first split, sorted, cut at ceil(n/2), relabelled in order."""
    labels = sorted({y for _, y in train})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: i for i, y in enumerate(selected)}
    return [[(p, relabeler[y]) for p, y in s if y in selected] for s in (train, *splits)]


def _pairs(items):
    return [(it.path, it.label) for it in items]


def _wnid_images(root: Path, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for w, rgb in RGB.items():
        (root / w).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / w / f"{w}_{i:03d}.png")
    return root


def _shift(src_items, out: Path, per_class: int = 3) -> Path:
    """The shifted copy: grayscale + edge map of a few images per class, in <wnid>/ folders."""
    count: dict[str, int] = {}
    for it in src_items:
        w = Path(it.path).parent.name
        if count.get(w, 0) >= per_class:
            continue
        count[w] = count.get(w, 0) + 1
        img = ImageOps.grayscale(Image.open(it.path).convert("RGB")).filter(ImageFilter.FIND_EDGES)
        (out / w).mkdir(parents=True, exist_ok=True)
        ImageOps.invert(img).convert("RGB").save(out / w / f"{Path(it.path).stem}.png")
    return out


# -- the base/new split ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [0, 1, 2, 3, 4], [4, 2, 9, 7, 2, 4, 11], [3]])
def test_split_rule_is_cocoops(labels):
    train = [(f"x{i}", y) for i, y in enumerate(labels)]
    base, new = base_new_labels(labels)
    assert base + new == sorted(set(labels)) and len(base) == math.ceil(len(set(labels)) / 2)
    items = [Item(p, y) for p, y in train]
    ds = Dataset("d", [f"c{i}" for i in range(12)], {"train": items, "val": [], "test": items})
    for half in ("base", "new"):
        (want,) = cocoop_subsample(train, subsample=half)
        assert _pairs(class_subset(ds, half, labels).split("train")) == want


@needs_shared
@pytest.mark.parametrize("folder,n_base", [("dtd10", 5), ("flowers89", 45)])
def test_shared_split_and_order_are_cocoops(folder, n_base):
    """CoCoOp samples 16-shot train / 4-shot val from all classes, then cuts each split to the base half."""
    ds = load_dataset(SHARED / folder)
    spec = RunSpec("linear_probe", shots=16, seed=1, repeat_shots=True)
    base_ds, new_ds, base_spec = base_to_new_split(ds, spec)
    from clip_adapter.protocol import fewshot_items
    train, val = fewshot_items(ds, spec)
    want_train, want_val, want_test = cocoop_subsample(_pairs(train), _pairs(val), _pairs(ds.split("test")),
                                                       subsample="base")
    assert _pairs(base_spec.train_items) == want_train and _pairs(base_spec.val_items) == want_val
    assert _pairs(base_ds.split("test")) == want_test
    (_, _, want_new_test) = cocoop_subsample(_pairs(train), _pairs(val), _pairs(ds.split("test")), subsample="new")
    assert _pairs(new_ds.split("test")) == want_new_test
    assert len(base_ds.classnames) == n_base and base_ds.classnames + new_ds.classnames == ds.classnames
    assert len(new_ds.classnames) == ds.num_classes - n_base


def _permute_new(ds: Dataset) -> Dataset:
    """The new classes' images shuffled among themselves (labels of new-class items rotated)."""
    _, new = base_new_labels(range(ds.num_classes))
    rot = {y: new[(i + 1) % len(new)] for i, y in enumerate(new)}
    return Dataset(ds.name, list(ds.classnames),
                   {s: [Item(it.path, rot.get(it.label, it.label), it.rel) for it in items]
                    for s, items in ds.splits.items()}, list(ds.templates), ds.source)


@pytest.mark.parametrize("method", ["clip_adapter", "linear_probe"])
def test_new_classes_never_reach_training_or_selection(tiny_backbone, color_dir, tmp_path, method):
    ds = load_dataset(color_dir)
    spec = RunSpec(method, shots=2, seed=1, n_views=1, overrides=FAST if method == "clip_adapter" else {})
    base_ds, new_ds, base_spec = base_to_new_split(ds, spec)
    base_paths = {it.path for it in base_ds.split("train") + base_ds.split("val")}
    assert {it.path for it in base_spec.train_items + base_spec.val_items} <= base_paths
    cache = FeatureCache(tiny_backbone, root=tmp_path / "f")
    recs, weights = [], []
    for i, d in enumerate((ds, _permute_new(ds))):
        rec = run_base_to_new(d, tiny_backbone, spec, cache=cache, save_model=tmp_path / f"m{i}")
        recs.append(rec)
        weights.append(load_file(str(tmp_path / f"m{i}" / "adapter_model.safetensors")))
    same = ("accuracy", "base_accuracy", "val_accuracy", "chosen", "candidates", "per_class_accuracy", "n_train",
            "n_val", "base_classes", "new_classes")
    assert {k: recs[0][k] for k in same} == {k: recs[1][k] for k in same}
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert recs[0]["base_classes"] == ["blue", "green"] and recs[0]["new_classes"] == ["red", "yellow"]
    assert recs[0]["harmonic_mean"] == pytest.approx(harmonic_mean(recs[0]["base_accuracy"],
                                                                   recs[0]["new_accuracy"]))


def test_unseen_class_modes_and_fallback_is_zero_shot(tiny_backbone, color_dir, tmp_path):
    modes = {m: get_method_class(m).unseen_classes for m in list_methods()}
    assert set(modes.values()) <= {"transfer", "zero_shot_fallback"}
    assert modes["clip_adapter"] == modes["coop"] == modes["zero_shot"] == "transfer"
    assert modes["linear_probe"] == modes["tip_adapter"] == "zero_shot_fallback"
    assert get_method("coop", class_specific=True).unseen_mode() == "zero_shot_fallback"
    ds, cache = load_dataset(color_dir), FeatureCache(tiny_backbone, root=tmp_path / "f")
    recs = {m: run_base_to_new(ds, tiny_backbone, RunSpec(m, shots=2, n_views=0), cache=cache)
            for m in ("zero_shot", "tip_adapter")}
    assert recs["tip_adapter"]["unseen_classes"] == "zero_shot_fallback"
    assert recs["tip_adapter"]["new_accuracy"] == recs["zero_shot"]["new_accuracy"]
    assert recs["zero_shot"]["n_test_new"] == len(class_subset(ds, "new").split("test"))


def test_for_classes_keeps_the_adapter_and_swaps_the_text():
    feats, labels, text = clustered(n_classes=4, dim=16)
    ct = ClassText([f"c{i}" for i in range(4)], ["{}"], text)
    model = get_method("clip_adapter", epochs=2).fit(feats, labels, text=ct)
    new_text = ClassText(["x", "y", "z"], ["{}"], torch.randn(3, 16))
    moved = model.for_classes(new_text)
    img = 0.2 * model.image_adapter_(feats) + 0.8 * feats
    want = model.logit_scale_ * torch.nn.functional.normalize(img, dim=-1) @ \
        torch.nn.functional.normalize(new_text.features, dim=-1).t()
    assert torch.allclose(moved.logits(feats), want, atol=1e-5) and moved.classes_ == ["x", "y", "z"]
    assert model.logits(feats).shape == (len(feats), 4)  # the original is untouched
    probe = get_method("linear_probe").fit(feats, labels, text=ct)
    with pytest.raises(ValueError, match="LinearProbe cannot score classes it never saw"):
        probe.for_classes(new_text)


def test_run_base_to_new_cli_says_zero_shot_fallback(color_dir, tmp_path, capsys):
    args = ["run", "--data", str(color_dir), "--backbone", "tiny-vit", "--pretrained", "none", "--method",
            "linear_probe", "--shots", "2", "--views", "0", "--base-to-new", "--output", str(tmp_path / "o"),
            "--no-progress", "--workers", "0", "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "linear_probe is class-specific: its new-class accuracy is zero-shot CLIP's (zero-shot fallback)." in out
    (path,) = (tmp_path / "o").rglob("shots2-seed1.json")
    rec = json.loads(path.read_text())
    assert path.parent.name == "linear_probe-base_to_new" and rec["unseen_classes"] == "zero_shot_fallback"


def test_base_to_new_experiment_and_report(color_dir, tmp_path):
    cfg = {"datasets": [{"data": str(color_dir), "label": "a"}, {"data": str(color_dir), "label": "b"}],
           "protocol": "base_to_new", "shots": [2], "seeds": [1], "n_views": 0, "workers": 0,
           "backbone": {"name": "tiny-vit", "pretrained": None},
           "methods": {"zero_shot": {}, "linear_probe": {}, "clip_adapter": {"overrides": FAST}},
           "cache_dir": str(tmp_path / "cache"), "output": str(tmp_path / "out")}
    result = run_experiment(cfg, progress=False)
    assert len(result.records) == 2 * (1 + 2)
    assert all(r["protocol"] == "base_to_new" and r["run_settings"]["protocol"] == "base_to_new"
               for r in result.records)
    assert all(set(r) - set(RECORD_FIELDS) - set(MEMORY_FIELDS) <= set(OPTIONAL_FIELDS) for r in result.records)
    md = Path(result.report["base_to_new_markdown"]).read_text()
    assert "| linear_probe |" in md and "zero-shot fallback" in md and "Average" in md
    assert not (tmp_path / "out" / "summary.md").exists()  # base-to-new records stay out of the few-shot table
    rows = {(r["dataset"], r["method"]): r for r in
            __import__("csv").DictReader(Path(result.report["base_to_new_csv"]).read_text().splitlines())}
    lp = [r for r in result.records if r["method"] == "linear_probe"]
    a = [r for r in lp if r["dataset"] == "a"]
    assert float(rows[("a", "linear_probe")]["new_mean_pct"]) == pytest.approx(
        100 * sum(r["new_accuracy"] for r in a) / len(a))
    avg = rows[("Average", "linear_probe")]
    base, new = float(avg["base_mean_pct"]), float(avg["new_mean_pct"])
    assert float(avg["hm_mean_pct"]) == pytest.approx(2 * base * new / (base + new))
    assert any(p.endswith("base_to_new.png") for p in result.report["figures"])


# -- domain shift and transfer ---------------------------------------------------------------------------------
def test_domain_shift_synthetic_wnid_mapping(tiny_backbone, tmp_path, capsys):
    """A model trained on wnid folders, evaluated on a grayscale+edge copy of 3 of its 4 classes: classes are mapped
    by wnid and only those 3 logits are scored (the ImageNet-A/-R rule)."""
    src = _wnid_images(tmp_path / "src")
    ds = load_dataset(src)
    assert class_ids(ds) == WNIDS
    run_one(ds, tiny_backbone, RunSpec("linear_probe", shots=2, n_views=0), save_model=tmp_path / "model")
    shifted = _shift(ds.split("train") + ds.split("val"), tmp_path / "shifted" / "x", per_class=5)
    shutil.rmtree(shifted / WNIDS[0])
    target = load_dataset(shifted)
    model = AdaptedClassifier.from_pretrained(tmp_path / "model", backbone=tiny_backbone)
    res = model.evaluate(target, "test", FeatureCache(tiny_backbone, root=tmp_path / "f"))
    items = target.split("test")
    logits = model.method.logits(FeatureCache(tiny_backbone, root=tmp_path / "f").features(items))
    keep = torch.tensor([WNIDS.index(w) for w in class_ids(target)])
    want = (keep[logits[:, keep].argmax(-1)] == keep[torch.tensor([it.label for it in items])]).float().mean()
    assert res["n"] == len(items) and res["accuracy"] == pytest.approx(float(want))
    # a class the model does not know is named, in one line
    (shifted / "n09999999").mkdir()
    for f in sorted((shifted / WNIDS[1]).iterdir()):
        shutil.copy(f, shifted / "n09999999" / f.name)
    with pytest.raises(ValueError, match=r"1 of 4 classes have no class of the model \(matched by wnid\): "
                                         r"n09999999"):
        model.label_map(load_dataset(shifted))


@needs_shared
def test_domain_shift_imagenette_vs_shifted_copy(tiny_backbone, tmp_path):
    """Imagenette (a handful of images per class) vs its grayscale+edge copy, through the wnid mapping."""
    full = load_dataset(SHARED / "imagenette")
    classes = json.loads((SHARED / "imagenette" / "classes.json").read_text())
    per = {s: [it for y in range(full.num_classes) for it in [i for i in full.split(s) if i.label == y][:n]]
           for s, n in (("train", 2), ("val", 1), ("test", 2))}
    small = Dataset("imagenette", full.classnames, per, full.templates, full.source)
    assert class_ids(small) == [c["wnid"] for c in classes]
    cache = FeatureCache(tiny_backbone, root=tmp_path / "f")
    rec = run_one(small, tiny_backbone, RunSpec("clip_adapter", shots=2, n_views=0, overrides=FAST), cache=cache,
                  save_model=tmp_path / "model")
    shifted = _shift(per["test"], tmp_path / "shifted" / "x", per_class=2)
    for w in [c["wnid"] for c in classes][5:]:
        shutil.rmtree(shifted / w)                   # a 5-class subset, as ImageNet-A/-R are of ImageNet
    target = load_dataset(shifted)
    assert sorted(class_ids(target)) == sorted(c["wnid"] for c in classes[:5])
    model = AdaptedClassifier.from_pretrained(tmp_path / "model", backbone=tiny_backbone)
    res = model.evaluate(target, "test", cache)
    assert res["n"] == len(target.split("test")) and 0.0 <= res["accuracy"] <= 1.0
    assert model.info["class_ids"] == [c["wnid"] for c in classes] and rec["n_test"] == 20
    # the same through score_on (the experiment's transfer path)
    out = score_on(model.method, target, tiny_backbone, cache, model_ids=class_ids(small))
    assert out["matched"] == "wnid" and out["classes"] == 5


def test_transfer_experiment_table(tiny_backbone, tmp_path):
    """Source: wnid folders; targets: a shifted wnid subset (every method) and other classes (transfer only)."""
    src = _wnid_images(tmp_path / "src")
    shifted = _shift(load_dataset(src).split("train"), tmp_path / "shifted" / "x", per_class=4)
    other = tmp_path / "other"
    for name, w in (("dark", WNIDS[0]), ("light", WNIDS[1])):
        shutil.copytree(src / w, other / name)
    cfg = {"datasets": [{"data": str(src), "label": "src"}], "shots": [2], "seeds": [1], "n_views": 0,
           "workers": 0, "backbone": {"name": "tiny-vit", "pretrained": None},
           "methods": {"linear_probe": {}, "clip_adapter": {"overrides": FAST}},
           "transfer": {"source": "src", "targets": [{"data": str(shifted), "label": "shifted"},
                                                      {"data": str(other), "label": "other"}]},
           "cache_dir": str(tmp_path / "cache"), "output": str(tmp_path / "out")}
    result = run_experiment(cfg, progress=False)
    by = {r["method"]: {t["dataset"]: t for t in r["transfer"]} for r in result.records}
    assert by["linear_probe"]["shifted"]["applicable"] and by["linear_probe"]["shifted"]["matched"] == "wnid"
    assert not by["linear_probe"]["other"]["applicable"]
    assert "no class of the model" in by["linear_probe"]["other"]["reason"]
    assert by["clip_adapter"]["other"]["applicable"] and by["clip_adapter"]["other"]["matched"].startswith("transfer")
    md = Path(result.report["transfer_markdown"]).read_text()
    assert "| linear_probe |" in md and "n/a" in md and "Not applicable:" in md
    assert result.records[0]["run_settings"]["transfer"] == ["shifted", "other"]
    assert all(set(r) - set(RECORD_FIELDS) - set(MEMORY_FIELDS) <= set(OPTIONAL_FIELDS) for r in result.records)


@pytest.mark.parametrize("change,fragment", [
    ({"transfer": {"source": "nope", "targets": ["x/y"]}}, "transfer.source 'nope' is not one of the datasets"),
    ({"transfer": {"source": "a", "targets": []}}, "transfer.targets must be a non-empty list"),
    ({"transfer": {"source": "a", "target": ["x/y"]}}, "unknown key 'target'"),
    ({"protocol": "base2new"}, "'protocol' must be one of 'few_shot', 'base_to_new'. Got 'base2new'"),
    ({"protocol": "base_to_new", "ablation": {"method": "clip_adapter", "param": "alpha", "values": [0.2]}},
     "protocol 'base_to_new' cannot be combined with an ablation"),
])
def test_config_errors_are_one_line(change, fragment):
    from clip_adapter.experiment.schema import parse_config
    raw = {"datasets": [{"data": "some/dir", "label": "a"}], "methods": ["zero_shot"], **change}
    with pytest.raises(ValueError) as e:
        parse_config(raw, source="exp.yaml")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_variant_subset_of_a_model_without_wnids_maps_by_name(tiny_backbone, tmp_path):
    """An ImageNet-A/-R-like subset (wnid folders, CLIP names) of a model saved without wnids: mapped by name."""
    imgs = _wnid_images(tmp_path / "imgs", per_class=6)
    names = dict(zip(WNIDS[:3], ["tench", "goldfish", "great white shark"]))
    for w, name in names.items():
        shutil.copytree(imgs / w, tmp_path / "src" / name)
    ds = load_dataset(tmp_path / "src")
    assert class_ids(ds) is None
    run_one(ds, tiny_backbone, RunSpec("zero_shot"), save_model=tmp_path / "m")
    model = AdaptedClassifier.from_pretrained(tmp_path / "m", backbone=tiny_backbone)
    assert "class_ids" not in model.info
    subset = [WNIDS[1], WNIDS[0]]
    items = [Item(str(p), y) for y, w in enumerate(subset) for p in sorted((imgs / w).glob("*.png"))]
    target = Dataset("variant", [names[w] for w in subset], {"train": [], "val": [], "test": items})
    assert class_ids(target) == subset
    assert model.label_map(target).tolist() == [model.classes_.index("goldfish"), model.classes_.index("tench")]
