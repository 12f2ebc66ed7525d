"""Dataset readers (CoOp layout, class folders, CSV), few-shot sampling and index files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_adapter.datasets import Item, load_dataset, read_coop
from clip_adapter.fewshot import read_index_file, sample_k_shot, val_shots
from clip_adapter.datasets.catalog import templates_for

from conftest import SHARED, make_color_images, needs_shared


def _coop(tmp_path: Path) -> Path:
    root = make_color_images(tmp_path / "ds" / "images", per_class=6)
    names = sorted(p.name for p in root.iterdir())
    split = {"train": [], "val": [], "test": []}
    for y, c in enumerate(names):
        files = sorted(p.name for p in (root / c).iterdir())
        for i, f in enumerate(files):
            s = "train" if i < 3 else "val" if i < 4 else "test"
            split[s].append([f"{c}/{f}", y, c.replace("e", "e_") if y == 0 else c])
    (tmp_path / "ds" / "split_zhou_MyColors.json").write_text(json.dumps(split))
    return tmp_path / "ds"


def test_coop_layout(tmp_path):
    ds = load_dataset(_coop(tmp_path))
    assert ds.name == "MyColors"
    assert ds.num_classes == 4 and ds.classnames[0] == "blue"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [12, 4, 8]
    assert all(Path(it.path).is_file() for it in ds.split("test"))
    assert ds.templates == ["a photo of a {}."]


def test_coop_errors(tmp_path):
    folder = _coop(tmp_path)
    f = folder / "split_zhou_MyColors.json"
    data = json.loads(f.read_text())
    data["train"][0][1:] = [9, "ninth"]  # a new class with label 9: labels 4..8 are unused
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"labels must be 0..9 without gaps; label 4 is unused"):
        read_coop(folder)
    del data["val"]
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks the 'val' split"):
        read_coop(folder)
    with pytest.raises(FileNotFoundError, match=r"Split file .*nope.json not found; expected the CoOp layout"):
        read_coop(folder, split_file="nope.json")


def test_class_folders_seeded_split(color_dir):
    a, b = load_dataset(color_dir), load_dataset(color_dir)
    assert a.classnames == ["blue", "green", "red", "yellow"]
    assert a.splits == b.splits
    assert [len(a.split(s)) for s in ("train", "val", "test")] == [24, 8, 16]  # 12/class: 6/2/4
    paths = [it.path for s in ("train", "val", "test") for it in a.split(s)]
    assert len(paths) == len(set(paths)) == 48
    assert load_dataset(color_dir, split_seed=5).splits != a.splits


def test_class_folders_with_split_dirs_and_extras(tmp_path):
    for s in ("train", "val", "test"):
        make_color_images(tmp_path / "d" / s, per_class=2)
    (tmp_path / "d" / "classnames.txt").write_text("navy\nlime\ncrimson\ngold\n")
    (tmp_path / "d" / "templates.txt").write_text("a {} thing.\na photo of {}.\n")
    ds = load_dataset(tmp_path / "d")
    assert ds.classnames == ["navy", "lime", "crimson", "gold"]
    assert ds.templates == ["a {} thing.", "a photo of {}."]
    assert len(ds.split("val")) == 8


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no class subfolders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "e2" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"Class folder .*cat contains no images"):
        load_dataset(tmp_path / "e2")
    with pytest.raises(FileNotFoundError, match="Dataset nowhere/x not found"):
        load_dataset("nowhere/x")


def test_csv_reader(color_dir, tmp_path):
    rows = ["path,label,split"]
    for i, p in enumerate(sorted(color_dir.rglob("*.png"))):
        rows.append(f"{p},{p.parent.name}_x,{['train', 'val', 'test'][i % 3]}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"d.csv row 2: the path '.*blue_000.png' is absolute; .*--allow-outside-paths"):
        load_dataset(tmp_path / "d.csv")   # absolute paths open files outside the CSV's folder: opt in
    ds = load_dataset(tmp_path / "d.csv", allow_outside_paths=True)
    assert ds.classnames == ["blue x", "green x", "red x", "yellow x"]
    assert len(ds.split("train")) == 16
    (tmp_path / "bad.csv").write_text("file,y\na.png,1\n")
    with pytest.raises(ValueError, match=r"must have a header with 'path' and 'label' columns; got \['file', 'y'\]"):
        load_dataset(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("path,label,split\na.png,0,training\n")
    with pytest.raises(ValueError, match=r"split 'training' of a.png is not one of train, val, test"):
        load_dataset(tmp_path / "bad2.csv")


def test_csv_without_split_column(tmp_path, color_dir):
    rows = ["path,label"] + [f"{p.relative_to(color_dir.parent)},{i % 4}"
                             for i, p in enumerate(sorted(color_dir.rglob("*.png")))]
    (color_dir.parent / "d.csv").write_text("\n".join(rows))
    ds = load_dataset(color_dir.parent / "d.csv")
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 48


def test_templates_lookup():
    assert templates_for("DescribableTextures10") == ["{} texture."]
    assert templates_for("OxfordFlowers89") == ["a photo of a {}, a type of flower."]
    assert templates_for("eurosat") == ["a centered satellite photo of {}."]
    assert templates_for("my_things") == ["a photo of a {}."]


# -- few-shot sampling -----------------------------------------------------------------------------------------
def _items(per_class=(5, 5, 2)):
    return [Item(f"/data/c{c}/img_{i}.jpg", c) for c, n in enumerate(per_class) for i in range(n)]


def test_sampler_deterministic_nested_and_seeded():
    items = _items()
    a = sample_k_shot(items, 2, seed=1)
    assert a == sample_k_shot(list(reversed(items)), 2, seed=1)  # order of input does not matter
    assert [it.label for it in a] == [0, 0, 1, 1, 2, 2]
    assert sample_k_shot(items, 2, seed=2) != a
    one = sample_k_shot(items, 1, seed=1)
    assert all(it in a for it in one)  # K-shot is inside 2K-shot: cached features are shared
    # Same files on any machine: only the last two path components are hashed.
    moved = [Item(it.path.replace("/data/", "/elsewhere/data/"), it.label) for it in items]
    assert [Path(it.path).name for it in sample_k_shot(moved, 2, 1)] == [Path(it.path).name for it in a]


def test_sampler_errors_and_repeat():
    with pytest.raises(ValueError,
                       match=r"The training split: class 'tiny' \(label 2\) has 2 training images; 4 shots asked"):
        sample_k_shot(_items(), 4, seed=1, classnames=["a", "b", "tiny"])
    out = sample_k_shot(_items(), 4, seed=1, repeat=True)
    assert len(out) == 12 and len({it.path for it in out if it.label == 2}) == 2
    with pytest.raises(ValueError, match="must be >= 1"):
        sample_k_shot(_items(), 0, seed=1)
    assert [val_shots(k) for k in (1, 2, 4, 8, 16)] == [1, 2, 4, 4, 4]


@needs_shared
def test_index_file_on_shared_dtd10():
    ds = load_dataset(SHARED / "dtd10")
    idx = read_index_file(SHARED / "coop_splits/indices/dtd/shot_4-seed_1.json",
                          {s: ds.split(s) for s in ("train", "val", "test")})
    assert len(idx["train"]) == 40  # the 10 DTD classes present here, 4 shots each
    assert {it.label for it in idx["train"]} == set(range(10))
    assert all(Path(it.path).is_file() for it in idx["train"])


@needs_shared
def test_shared_coop_datasets_read():
    flowers = load_dataset(SHARED / "flowers89")
    assert flowers.num_classes == 89 and len(flowers.split("test")) == 1671
    assert flowers.templates == ["a photo of a {}, a type of flower."]
    dtd = load_dataset(SHARED / "dtd10")
    assert dtd.summary() == {"name": "DescribableTextures10", "classes": 10, "train": 600, "val": 240, "test": 360}
