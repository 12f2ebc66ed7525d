"""Every bad input gets a one-line error naming the file/value and what was expected, exit code != 0, and nothing
half-written is left behind. One table: (a case builds its inputs under tmp_path and returns the CLI arguments,
the fragment the error must contain). It covers every input file format (split JSON, CSV, classnames.txt,
templates.txt, class folders, few-shot index, experiment YAML, saved model folder) and every numeric flag."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

from clip_adapter import FeatureCache, RunSpec, load_backbone, load_dataset, run_one
from clip_adapter.cli import main

from conftest import COLORS, make_color_images

TINY = ["--backbone", "tiny-vit", "--pretrained", "none", "--workers", "0", "--no-progress"]
CLASSES = sorted(COLORS)  # blue, green, red, yellow


# -- inputs ----------------------------------------------------------------------------------------------------
def _images(tmp: Path) -> Path:
    return make_color_images(tmp / "imgs", per_class=6, size=16)


def _coop(tmp: Path, change: Callable[[dict], None] | None = None) -> Path:
    """A CoOp-layout dataset over the generated images (images/<class>/*.png); ``change`` edits the split JSON."""
    folder = tmp / "coop"
    shutil.copytree(_images(tmp), folder / "images")
    raw: dict = {s: [] for s in ("train", "val", "test")}
    for y, c in enumerate(CLASSES):
        for i, p in enumerate(sorted((folder / "images" / c).glob("*.png"))):
            raw["train" if i < 3 else "val" if i < 4 else "test"].append([f"{c}/{p.name}", y, c])
    if change:
        change(raw)
    (folder / "split_zhou_Coop.json").write_text(json.dumps(raw))
    return folder


def _json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _csv(tmp: Path, body: str | bytes, corrupt: str | None = None) -> Path:
    images = _images(tmp)
    if corrupt:
        (images.parent / corrupt).write_bytes(b"not an image")
    path = images.parent / "d.csv"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body.replace("IMG", "imgs/blue/blue_000.png").replace("IMH", "imgs/red/red_000.png"))
    return path


def _folder(tmp: Path, **files: str) -> Path:
    """The generated class folders plus extra files (classnames.txt, templates.txt)."""
    folder = _images(tmp)
    for name, text in files.items():
        (folder / name.replace("_txt", ".txt")).write_text(text)
    return folder


def _index(tmp: Path, body) -> list[str]:
    data = _coop(tmp)
    f = tmp / "index.json"
    f.write_text(body if isinstance(body, str) else json.dumps(body))
    return ["--data", str(data), "--fewshot-index", str(f)]


def _entry(c: str, i: int, label: int | None = None) -> dict:
    return {"impath": f"/orig/machine/images/{c}/{c}_{i:03d}.png", "label": CLASSES.index(c) if label is None
            else label, "classname": c}


def run(tmp: Path, *extra: str, data: Path | None = None) -> list[str]:
    data = data if data is not None else _images(tmp)
    return ["run", "--data", str(data), "--method", "linear_probe", "--shots", "2", "--output", str(tmp / "runs"),
            "--cache-dir", str(tmp / "cache"), *TINY, *extra]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A saved CLIP-Adapter on a checkpoint of the tiny ViT (a checkpoint, so the CLI can rebuild the backbone)."""
    tmp = tmp_path_factory.mktemp("saved")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb = load_backbone("tiny-vit", pretrained=None)
    ckpt = tmp / "tiny.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in bb.model.state_dict().items()}, str(ckpt))
    bb = load_backbone("tiny-vit", checkpoint=str(ckpt))
    ds = load_dataset(make_color_images(tmp / "colors", per_class=6, size=16))
    run_one(ds, bb, RunSpec("clip_adapter", shots=2, overrides={"epochs": 2}, grid={}, n_views=0),
            cache=FeatureCache(bb, root=tmp / "cache", progress=False, num_workers=0), save_model=tmp / "model")
    return {"dir": tmp / "model", "ckpt": ckpt, "data": tmp / "colors"}


def _model(tmp: Path, saved: dict, change: Callable[[Path], None]) -> Path:
    d = tmp / "model"
    shutil.copytree(saved["dir"], d)
    change(d)
    return d


def _edit_config(key: str, value) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        meta = json.loads((d / "adapter_config.json").read_text())
        if isinstance(value, dict):
            meta[key] = {**meta[key], **value}
        else:
            meta[key] = value
        (d / "adapter_config.json").write_text(json.dumps(meta))
    return change


def _other_tensors(d: Path) -> None:
    save_file({"coef": torch.zeros(4, 32), "intercept": torch.zeros(4)}, str(d / "adapter_model.safetensors"))


def _wrong_shapes(d: Path) -> None:
    from safetensors.torch import load_file
    t = load_file(str(d / "adapter_model.safetensors"))
    t["image_adapter.fc.0.weight"] = torch.zeros(3, 7)
    save_file(t, str(d / "adapter_model.safetensors"))


def predict(tmp: Path, saved: dict, *extra: str, model: Path | None = None) -> list[str]:
    return ["predict", str(model or saved["dir"]), str(saved["data"] / "red"), "--checkpoint", str(saved["ckpt"]),
            "--workers", "0", "--no-progress", *extra]


def evaluate(tmp: Path, saved: dict, data: Path, *extra: str) -> list[str]:
    return ["evaluate", str(saved["dir"]), "--data", str(data), "--checkpoint", str(saved["ckpt"]), "--workers", "0",
            "--no-progress", "--cache-dir", str(tmp / "cache"), *extra]


def _subset(tmp: Path) -> Path:
    """The saved model's classes minus yellow, plus purple: classes that differ."""
    d = make_color_images(tmp / "other", per_class=6, size=16)
    (d / "yellow").rename(d / "purple")
    return d


def _yaml(tmp: Path, text: str, make: Callable[[Path], Path] = _images) -> list[str]:
    f = tmp / "cfg.yaml"
    f.write_text(text.replace("DATA", str(make(tmp))) if "DATA" in text else text)
    return ["experiment", str(f), "--dry-run", "--no-progress"]


def _mkfile(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("not a folder")
    return p


def _mkdir_with(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "notes.txt").write_text("mine")
    return p


def _set(raw: dict, split: str, i: int, pos: int, value) -> None:
    raw[split][i][pos] = value


def _relabel_yellow(raw: dict) -> None:
    """Class 'yellow' (label 3) becomes class 'new' with label 7: labels 3..6 are unused."""
    for entries in raw.values():
        for e in entries:
            if e[2] == "yellow":
                e[1:] = [7, "new"]


def _coop_text(tmp: Path, text: str) -> Path:
    folder = _coop(tmp)
    (folder / "split_zhou_Coop.json").write_text(text)
    return folder


def _with_empty_class(tmp: Path) -> Path:
    folder = _images(tmp)
    (folder / "zzz").mkdir()
    return folder


def _split_tree(tmp: Path, splits=("train", "val", "test"), only_in_test: str | None = "yellow",
                extra: str | None = None) -> Path:
    """``<tmp>/tree/<split>/<class>/`` from the generated images (2 per class per split); ``only_in_test``: a class
    with no train/val images; ``extra``: a class folder next to the split folders."""
    images, root = _images(tmp), tmp / "tree"
    for s in splits:
        for c in CLASSES:
            if c == only_in_test and s != "test":
                continue
            (root / s / c).mkdir(parents=True)
            for p in sorted((images / c).glob("*.png"))[:2]:
                shutil.copy(p, root / s / c / p.name)
    if extra:
        shutil.copytree(images / "blue", root / extra)
    return root


def _rename(folder: Path, old: str, new: str) -> Path:
    (folder / old).rename(folder / new)
    return folder


def _one_class(tmp: Path) -> Path:
    images = _images(tmp)
    for c in CLASSES[1:]:
        shutil.rmtree(images / c)
    return images


def _not_in_train(name: str) -> Callable[[dict], None]:
    """A split-JSON change: the train entries of class ``name`` move to test."""
    def change(raw: dict) -> None:
        raw["test"] += [e for e in raw["train"] if e[2] == name]
        raw["train"] = [e for e in raw["train"] if e[2] != name]
    return change


BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9)}]\n" for b, a in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB + "datasets: *i\n"
YAML_OK = "datasets: [DATA]\nmethods: {zero_shot: {}}\n"
TRAINED = "datasets: [DATA]\nmethods: {linear_probe: {}}\n"


# -- the table: one row per bad input (name, how to build its command line, the fragment its error must contain) --
Build = Callable[[Path, dict], list]


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    fragment: str


def _args(t: Path, args) -> list[str]:
    """Arguments; a callable one is called with the test's tmp folder (e.g. to create a file there)."""
    return [a(t) if callable(a) else a for a in args]


def tmp(make: Callable[[Path], Path], name: str) -> Callable[[Path], str]:
    """An argument made under the test's tmp folder: ``tmp(_mkfile, "x.txt")`` -> ``str(_mkfile(tmp / "x.txt"))``."""
    return lambda t: str(make(t / name))


def IMAGES(t: Path) -> str:  # noqa: N802 - an argument: the generated images' folder
    return str(_images(t))


def flags(*args) -> Build:                        # `run` on the generated images with these flags
    return lambda t, s: run(t, *_args(t, args))


def data(make: Callable[[Path], Path], *args) -> Build:   # `run` on the dataset make(tmp)
    return lambda t, s: run(t, *_args(t, args), data=make(t))


def split(change: Callable[[dict], None]) -> Build:       # a CoOp split JSON, edited by change(raw)
    return data(lambda t: _coop(t, change))


def split_text(text: str) -> Build:
    return data(lambda t: _coop_text(t, text))


def csv(body: str | bytes, *args, corrupt: str | None = None) -> Build:
    return data(lambda t: _csv(t, body, corrupt), *args)


def folder(**files: str) -> Build:
    return data(lambda t: _folder(t, **files))


def index(body, *args) -> Build:                  # a few-shot index file (a JSON value or raw text)
    return lambda t, s: run(t, *_index(t, body), *_args(t, args))


def yaml(text: str, make: Callable[[Path], Path] = _images) -> Build:   # an experiment YAML (DATA: make(tmp))
    return lambda t, s: _yaml(t, text, make)


def argv(*args) -> Build:                         # any command line
    return lambda t, s: _args(t, args)


def pred(*args, change: Callable[[Path], None] | None = None) -> Build:   # predict (with an edited model folder)
    return lambda t, s: predict(t, s, *_args(t, args), model=_model(t, s, change) if change else None)


def evaluate_on(make: Callable[[Path], Path] | None, *args) -> Build:
    return lambda t, s: evaluate(t, s, make(t) if make else s["data"], *args)


CASES: list[Case] = [
    # -- split JSON (CoOp layout)
    Case("split_is_a_dict", split(lambda r: r.update(train={"a": 1})),
         "split 'train' must be a list of [relpath, label, classname] entries; got a dict"),
    Case("split_negative_label", split(lambda r: _set(r, "train", 0, 1, -1)),
         "train[0]: the label must be an int >= 0. Got -1 instead"),
    Case("split_float_label", split(lambda r: _set(r, "val", 1, 1, 1.5)),
         "val[1]: the label must be an int >= 0. Got 1.5 instead"),
    Case("split_label_two_names", split(lambda r: _set(r, "test", 0, 2, "azure")),
         "label 0 is 'blue' in train[0] but 'azure' in test[0]"),
    Case("split_name_two_labels", split(lambda r: _set(r, "test", 0, 1, 4)),
         "class 'blue' has label 0 in train[0] but 4 in test[0]"),
    Case("split_leakage", split(lambda r: r["test"].append(list(r["train"][0]))),
         "is listed in both 'train' and 'test' (train/test leakage)"),
    Case("split_duplicate", split(lambda r: r["train"].append(list(r["train"][0]))), "is listed twice in 'train'"),
    Case("split_extra_key", split(lambda r: r.update(extra=[])),
         "unknown split key 'extra'; expected exactly train, val, test"),
    Case("split_missing_val", split(lambda r: r.pop("val")), "lacks the 'val' split"),
    Case("split_not_a_triple", split(lambda r: r["train"].append(["x.png", 0])), "is not [relpath, label, classname]"),
    Case("split_label_gap", split(_relabel_yellow), "labels must be 0..7 without gaps; label 3 is unused"),
    Case("split_empty_classname", split(lambda r: _set(r, "train", 0, 2, " ")),
         "the class name must be a non-empty string"),
    Case("split_leaves_folder", split(lambda r: _set(r, "train", 0, 0, "../../etc/passwd")),
         "the path '../../etc/passwd' leaves the dataset folder"),
    Case("split_absolute_path", split(lambda r: _set(r, "train", 0, 0, "/etc/passwd")),
         "the path '/etc/passwd' is absolute"),
    Case("split_not_json", split_text("{oops"), "is not valid JSON"),
    Case("split_top_level_list", split_text("[]"), "must hold a JSON object with keys train, val, test"),
    Case("split_duplicate_key", split_text('{"train": [], "train": [], "val": [], "test": []}'),
         "the key 'train' appears twice in one object (JSON would keep only the last one)"),
    Case("split_class_only_in_test", split(_not_in_train("yellow")),
         "1 of 4 classes has no training images ('yellow'; e.g. a class only in val/ or test/)"),
    # -- CSV
    Case("csv_mixed_labels", csv("path,label\nIMG,0\nIMH,red\n"),
         "mixes integer labels ('0') and class-name labels ('red')"),
    Case("csv_header", csv("file,y\nIMG,0\n"), "must have a header with 'path' and 'label' columns"),
    Case("csv_bad_split", csv("path,label,split\nIMG,0,training\n"),
         "row 2: split 'training' of imgs/blue/blue_000.png is not one of train, val, test"),
    Case("csv_leaves_folder", csv("path,label\n../../secret.png,0\n"),
         "row 2: the path '../../secret.png' leaves the dataset folder"),
    Case("csv_absolute", csv("path,label\n/etc/hosts,0\n"), "the path '/etc/hosts' is absolute"),
    Case("csv_empty_label", csv("path,label\nIMG,\n"), "row 2: the label is empty"),
    Case("csv_label_gap", csv("path,label\nIMG,0\nIMH,2\n"), "labels must be 0..2 without gaps; label 1 is unused"),
    Case("csv_negative_label", csv("path,label\nIMG,-1\nIMH,0\n"), "row 2: the label must be an int >= 0. Got -1"),
    Case("csv_duplicate", csv("path,label,split\nIMG,0,train\nIMG,0,test\n"),
         "in both 'train' and 'test' (train/test leakage)"),
    Case("csv_not_utf8", csv(b"path,label\n\xff\xfe,0\n"), "is not UTF-8 text"),
    Case("csv_no_rows", csv("path,label\n"), "has no rows"),
    Case("csv_extra_field", csv("path,label\nIMG,0,train\n"), "row 2: 3 fields; the header has 2 (path, label)"),
    Case("csv_duplicate_column", csv("path,label,label\nIMG,0,1\n"), "the column 'label' appears twice in the header"),
    Case("csv_misspelt_column", csv("path,label,spilt\nIMG,0,test\n"), "unknown column 'spilt' (did you mean 'split'?)"),
    Case("csv_class_only_in_test", csv("path,label,split\nIMG,blue,train\nimgs/blue/blue_001.png,blue,val\nIMH,red,"
                                       "test\n"), "1 of 2 classes has no training images ('red'"),
    Case("csv_train_split_empty", csv("path,label,split\nIMG,0,val\nIMH,1,test\n"),
         "the 'train' split is empty; 2 training images per class are needed"),
    # -- classnames.txt / templates.txt / class folders
    Case("classnames_count", folder(classnames_txt="a\nb\n"), "classnames.txt has 2 names; the data has 4 classes"),
    Case("classnames_duplicate", folder(classnames_txt="a\nb\na\nc\n"), "class name 'a' is listed twice"),
    Case("templates_no_braces", folder(templates_txt="a photo\n"), "template 'a photo' must contain '{}' exactly once"),
    Case("templates_named_field", folder(templates_txt="a {0} of {}\n"),
         "template 'a {0} of {}' must contain '{}' exactly once"),
    Case("folder_empty_class", data(_with_empty_class), "zzz contains no images"),
    Case("folder_no_classes", data(lambda t: _mkdir_with(t / "nothing")), "has no class subfolders"),
    Case("folder_class_only_in_test", data(_split_tree),
         "tree): 1 of 4 classes has no training images ('yellow'; e.g. a class only in val/ or test/)"),
    Case("folder_two_classes_one_name", data(lambda t: _rename(_images(t), "green", "blue_")),
         "classes 'blue' and 'blue_' both read as 'blue'"),
    Case("csv_two_labels_one_name", csv("path,label\nIMG,red\nIMH,red_\n"), "classes 'red' and 'red_' both read as"),
    Case("folder_one_class", data(_one_class), "has one class ('blue'); a few-shot classifier needs at least 2"),
    Case("folder_train_val_no_test", data(lambda t: _split_tree(t, ("train", "val"), None)),
         "has train/, val/ but no test/"),
    Case("folder_splits_and_classes", data(lambda t: _split_tree(t, only_in_test=None, extra="purple")),
         "mixes split folders (train, val, test) with other folders (purple)"),
    # -- few-shot index files
    Case("index_other_keys", index({"train": {"data": [{"path": "x.png", "y": 0}]}}),
         "train[0] must be an object with 'impath' and 'label' (and 'classname'); got ['path', 'y']"),
    Case("index_not_json", index("{nope"), "could not be read as JSON"),
    Case("index_no_train", index({"val": []}), "must be a JSON object with a 'train' entry"),
    Case("index_test_image", index({"train": [_entry("red", 5)]}), "red_005.png is in the dataset's 'test' split"),
    Case("index_wrong_label", index({"train": [{**_entry("red", 0), "label": 0, "classname": "other"}]}),
         "has label 0 (other) in the index but 2 (red) in the dataset"),
    Case("index_missing", argv("run", "--data", IMAGES, "--fewshot-index",
                               lambda t: str(t / "none.json"), *TINY), "Few-shot index file"),
    Case("index_some_classes", index({"train": [_entry(c, i) for c in ("blue", "red") for i in range(2)]}),
         "covers 2 of the dataset's 4 classes; no 'train' entries for 'green', 'yellow'"),
    Case("index_fewer_shots", index({"train": [_entry(c, 0) for c in CLASSES]}),
         "has 1 train image per class; 2 shots were asked. Pass --shots 1"),
    Case("index_uneven_shots", index({"train": [_entry(c, i) for c in CLASSES for i in range(2)][:-1]}),
         "has 1 to 2 train images per class ('yellow': 1); 2 shots were asked"),
    Case("index_same_image_twice", index({"train": [_entry(c, i % 2) for c in CLASSES for i in range(3)]}),
         "blue_000.png is listed twice in 'train'"),
    Case("index_unknown_key", index({"train": [_entry(c, i) for c in CLASSES for i in range(2)], "test": []}),
         "has the unknown key 'test'; expected 'train' and 'val'"),
    Case("index_duplicate_key", index('{"train": [], "train": []}'), "the key 'train' appears twice in one object"),
    # -- numeric flags and values of `run`
    Case("views_negative", flags("--views", "-2"), "argument --views: must be an int >= 0. Got '-2'"),
    Case("batch_size_zero", flags("--batch-size", "0"), "argument --batch-size: must be an int >= 1"),
    Case("shots_zero", flags("--shots", "0"), "argument --shots: must be an int >= 1. Got '0'"),
    Case("seed_negative", flags("--seed", "-1"), "argument --seed: must be an int in [0, 4294967295]"),
    Case("seed_huge", flags("--seed", str(2**40)), "argument --seed: must be an int in [0, 4294967295]"),
    Case("epochs_zero", flags("--method", "clip_adapter", "--epochs", "0"),
         "The 'epochs' parameter of ClipAdapterConfig must be an int >= 1. Got 0 instead"),
    Case("epochs_not_int", flags("--method", "clip_adapter", "--epochs", "x"), "argument --epochs: invalid int value"),
    Case("workers_negative", flags("--workers", "-1"), "argument --workers: must be an int >= 0"),
    Case("alpha_above_one", flags("--method", "clip_adapter", "--alpha", "1.5"),
         "The 'alpha' parameter of ClipAdapterConfig must be a float in [0, 1]. Got 1.5 instead"),
    Case("alpha_nan", flags("--method", "clip_adapter", "--alpha", "nan"), "Got nan instead"),
    Case("alpha_text_negative", flags("--method", "clip_adapter", "--alpha-text", "-0.1"),
         "'alpha_text' parameter of ClipAdapterConfig must be a float in [0, 1]"),
    Case("alpha_not_a_number", flags("--alpha", "high"), "argument --alpha: invalid float value: 'high'"),
    Case("grid_no_values", flags("--method", "clip_adapter", "--grid", "alpha="),
         "--grid 'alpha=' must look like key=v1,v2,... with at least one value"),
    Case("grid_bad_value", flags("--method", "clip_adapter", "--grid", "alpha=0.2,x"),
         "'alpha' parameter of ClipAdapterConfig must be a float in [0, 1]. Got 'x'"),
    Case("set_not_int", flags("--method", "clip_adapter", "--set", "epochs=abc"), "Override epochs='abc': expected an int"),
    Case("set_unknown", flags("--set", "CC=1"), "Unknown LinearProbeConfig key 'CC' (did you mean 'C'?)"),
    Case("set_bad_device", flags("--method", "clip_adapter", "--set", "device=gpu"),
         "The 'device' parameter of ClipAdapterConfig must be a torch device"),
    Case("template_no_braces", flags("--template", "a photo"), "template 'a photo' must contain '{}'"),
    Case("template_two_braces", flags("--template", "{} and {}"), "template '{} and {}' must contain"),
    Case("save_model_is_a_file", flags("--save-model", tmp(_mkfile, "model.txt")),
         "model.txt: it is an existing file; expected a folder"),
    Case("save_model_other_folder", flags("--save-model", tmp(_mkdir_with, "mine")),
         "mine: it is a folder with other content"),
    Case("output_is_a_file", flags("--output", tmp(_mkfile, "out.txt")), "The results folder"),
    Case("device_unknown", flags("--device", "foo"), "Unknown device 'foo'; expected cpu, cuda, cuda:N"),
    Case("device_missing_gpu", flags("--device", "cuda:99"), "CUDA GPU"),
    Case("data_missing", data(lambda t: t / "no" / "where"), "not found"),
    Case("backbone_unknown", argv("run", "--data", IMAGES, "--backbone", "RN5O"),
         "Unknown backbone 'RN5O' (did you mean 'RN50'?)"),
    Case("fixed_and_searched", flags("--method", "clip_adapter", "--alpha", "0.3", "--grid", "alpha=0.2,0.4"),
         "'alpha' is both fixed (--set or its own flag) and searched (--grid); keep one"),
    Case("method_unknown", flags("--method", "tip"), "Unknown method 'tip'"),
    Case("val_missing_for_a_grid", csv("path,label,split\nIMG,0,train\nIMH,1,train\nimgs/blue/blue_001.png,0,test\n",
                                       "--shots", "1"),
         "Cannot choose C of 'linear_probe' on validation: there are no validation images"),
    Case("cache_dir_is_a_file", flags("--cache-dir", tmp(_mkfile, "c.txt")), "The feature cache folder"),
    Case("checkpoint_garbage", argv("run", "--data", IMAGES, "--backbone", "tiny-vit",
                                    "--checkpoint", tmp(_mkfile, "w.pt")), "Could not load checkpoint"),
    Case("architecture_not_json", argv("run", "--data", IMAGES, "--backbone",
                                       tmp(_mkfile, "a.json")), "Model config " + "TMP/a.json is not valid JSON"),
    Case("architecture_keys", argv("run", "--data", IMAGES, "--backbone",
                                   tmp(lambda p: _json(p, {"embed_dim": 8}), "b.json")),
         "is not an open_clip architecture: expected the keys embed_dim, vision_cfg and text_cfg"),
    Case("corrupt_image_in_a_worker", csv("path,label,split\nIMG,0,train\nIMH,1,train\nimgs/red/bad.png,1,test\n"
                                          "imgs/blue/blue_001.png,0,test\n", "--method", "zero_shot", "--workers", "2",
                                          "--batch-size", "1", corrupt="imgs/red/bad.png"), "bad.png could not be read"),
    Case("shots_more_than_the_classes_have", flags("--shots", "50"),
         "4 classes have fewer than 50 training images: 'blue' (3), 'green' (3), 'red' (3), 'yellow' (3); 50 shots"),
    # -- demo
    Case("demo_shots", argv("demo", "--shots", "1,x", "--backbone", "tiny-vit", "--pretrained", "none"),
         "argument --shots: must be a comma-separated list of distinct ints >= 1. Got '1,x'"),
    Case("demo_seed", argv("demo", "--seed", "-3"), "argument --seed: must be an int in [0, 4294967295]"),
    # -- predict / saved model folders
    Case("top_k_zero", pred("--top-k", "0"), "argument --top-k: must be an int >= 1. Got '0'"),
    Case("predict_batch_size", pred("--batch-size", "0"), "argument --batch-size: must be"),
    Case("predict_workers", pred("--workers", "-2"), "argument --workers: must be an int >= 0"),
    Case("predict_out_is_a_folder", pred("--out", tmp(_mkdir_with, "outdir")),
         "--out " + "OUTDIR is a folder; expected a file name"),
    Case("model_other_method_tensors", pred(change=_other_tensors),
         "lacks the tensor 'fixed.text_features' of a 'clip_adapter' model"),
    Case("model_bad_config_value", pred(change=_edit_config("config", {"alpha": 5})),
         "adapter_config.json: The 'alpha' parameter of ClipAdapterConfig must be a float"),
    Case("model_bad_embed_dim", pred(change=_edit_config("embed_dim", "32")),
         "'embed_dim' must be an int > 0. Got '32' instead"),
    Case("model_unknown_method", pred(change=_edit_config("method", "magic")),
         "adapter_config.json: Unknown method 'magic'"),
    Case("model_wrong_shapes", pred(change=_wrong_shapes), "does not fit a 'clip_adapter' model of dim 32"),
    Case("model_classes_vs_tensors", pred(change=_edit_config("classnames", ["a"])),
         "its class text features have shape (4, 32), but"),
    Case("model_missing", lambda t, s: predict(t, s, model=t / "nope"), "Model directory"),
    # -- evaluate
    Case("evaluate_other_classes", evaluate_on(_subset),
         "have different classes (only in the dataset: ['purple']; only in the model: ['yellow'])"),
    Case("evaluate_class_map_syntax", evaluate_on(_subset, "--class-map", "purple"),
         "--class-map 'purple' must be 'by-name', 'shared', FILE.json or"),
    Case("evaluate_class_map_target", evaluate_on(_subset, "--class-map", "purple=violet"),
         "Dataset class 'purple' maps to 'violet', which is not a class of the model"),
    Case("evaluate_by_name_not_subset", evaluate_on(_subset, "--class-map", "by-name"),
         "Dataset class 'purple' maps to 'purple'"),
    Case("evaluate_batch_size", evaluate_on(None, "--batch-size", "0"), "argument --batch-size"),
    # -- experiment YAML
    Case("yaml_invalid", yaml("datasets: [DATA\nmethods: {"), "is not valid YAML"),
    Case("yaml_n_views", yaml(YAML_OK + "n_views: -1\n"), "'n_views' must be an int >= 0. Got -1 instead"),
    Case("yaml_unknown_key", yaml(YAML_OK + "seed: [1]\n"), "unknown key 'seed' (did you mean 'seeds'?)"),
    Case("yaml_batch_size", yaml(YAML_OK + "batch_size: 0\n"), "'batch_size' must be an int >= 1. Got 0 instead"),
    Case("yaml_outside_flag", yaml("datasets: [{data: DATA, allow_outside_paths: yes please}]\nmethods: {zero_shot: {}}\n"),
         "'allow_outside_paths' must be a bool"),
    Case("yaml_alias_bomb", yaml(BOMB), "its aliases (*name) expand to 926,177,115 values, more than the 100,000"),
    Case("yaml_recursive_alias", yaml("datasets: &a [*a]\n"), "an alias refers to a value that contains it"),
    Case("yaml_too_deep", yaml("datasets: " + "[" * 5000 + "]" * 5000 + "\n"), "is nested too deeply"),
    Case("yaml_huge_value_in_error", yaml(YAML_OK + "n_views: [" + "xxxxxxxx, " * 5_000 + "]\n"),
         "'n_views' must be an int >= 0. Got ['xxxxxxxx', 'xxxxxxxx', 'xxxxxxxx', 'xxxxxxxx', 'xxxxxxxx', 'xxxxxxxx', "
         "...] instead"),
    Case("yaml_duplicate_key", yaml(YAML_OK + "shots: [1]\nshots: [2]\n"),
         "line 4 is not valid YAML (duplicate key 'shots' (first on line 3); YAML would keep only the last value"),
    Case("yaml_duplicate_nested_key", yaml("datasets: [DATA]\nmethods: {linear_probe: {grid: {C: [1]}, grid: {}}}\n"),
         "duplicate key 'grid' (first on line 2)"),
    Case("yaml_merge_key", yaml("base: &b {n_views: 2}\n<<: *b\n" + YAML_OK),
         "line 2 is not valid YAML (merge keys ('<<') are not supported"),
    Case("yaml_two_documents", yaml(YAML_OK + "---\nshots: [1]\n"), "line 3 is not valid YAML (but found another document)"),
    Case("yaml_fixed_and_searched", yaml("datasets: [DATA]\nmethods: {clip_adapter: {overrides: {alpha: 0.2}, grid: "
                                         "{alpha: [0.4, 0.6]}}}\n"), "'alpha' is both fixed (overrides, or an "
                                                                     "ablation's param) and searched (grid)"),
    Case("ablation_param_in_grid", yaml(YAML_OK + "ablation: {method: clip_adapter, param: alpha, values: [0.2], "
                                        "grid: {alpha: [0.5]}}\n"), "'alpha' is both fixed"),
    Case("yaml_class_only_in_test", yaml(TRAINED, _split_tree),
         "1 of 4 classes has no training images ('yellow'; e.g. a class only in val/ or test/)"),
    Case("yaml_shots_above_a_class", yaml(TRAINED + "shots: [50]\n"),
         "4 classes have fewer than 50 training images: 'blue' (3), 'green' (3), 'red' (3), 'yellow' (3)"),
    Case("yaml_one_class", yaml(TRAINED, _one_class), "has one class ('blue'); a few-shot classifier needs at least 2"),
    # -- datasets / report
    Case("verify_workers", argv("datasets", "verify", IMAGES, "--workers", "0"),
         "argument --workers: must be an int >= 1"),
    Case("verify_unknown", argv("datasets", "verify", "dtdd"), "Unknown dataset 'dtdd'; did you mean 'dtd'?"),
    Case("report_missing", argv("report", lambda t: str(t / "none")), "Results folder"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_one_line_error(case, saved, tmp_path, capsys, one_thread):
    argv = case.build(tmp_path, saved)
    before = {p for p in tmp_path.rglob("*")}
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors (exit code 2)
        rc = e.code
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc != 0, f"{case}: exit code 0; stderr: {err}"
    assert len(errors) == 1 and "Traceback" not in err, f"{case}: not one error line:\n{err}"
    fragment = case.fragment.replace("OUTDIR", str(tmp_path / "outdir")).replace("TMP", str(tmp_path))
    assert fragment in errors[0], f"{case}: {fragment!r} not in {errors[0]!r}"
    assert len(errors[0]) < 2100, f"{case}: the error line is {len(errors[0])} characters long"
    # Nothing half-written: no result record, no model folder, no temporary file appeared.
    new = {p for p in tmp_path.rglob("*")} - before
    leftovers = [p for p in new if p.suffix in (".tmp", ".part") or p.name.endswith(".json") and "runs" in p.parts
                 or p.name == "adapter_config.json"]
    assert not leftovers, f"{case}: left behind {leftovers}"


def test_opt_in_reads_entries_outside_the_folder(tmp_path):
    data = _coop(tmp_path, lambda r: _set(r, "train", 0, 0, str(tmp_path / "coop" / "images" / "blue" /
                                                               "blue_000.png")))
    with pytest.raises(ValueError, match="is absolute"):
        load_dataset(data)
    ds = load_dataset(data, allow_outside_paths=True)
    assert ds.split("train")[0].path == str(tmp_path / "coop" / "images" / "blue" / "blue_000.png")


def test_evaluate_maps_classes_explicitly(saved, tmp_path, capsys):
    data = _subset(tmp_path)
    out = tmp_path / "eval.json"
    assert main([*evaluate(tmp_path, saved, data, "--class-map", "purple=yellow"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["class_map"] == {"purple": "yellow"} and result["n"] == len(load_dataset(data).split("test"))
    reordered = make_color_images(tmp_path / "same", per_class=6, size=16)   # the same classes: no map needed
    assert main([*evaluate(tmp_path, saved, reordered), "--out", str(tmp_path / "e2.json")]) == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_an_error(bad):
    from clip_adapter import ClassText, get_method
    feats, labels = torch.randn(8, 4), torch.arange(4).repeat(2)
    text = ClassText(["a", "b", "c", "d"], ["{}"], torch.randn(4, 4))
    broken = feats.clone()
    broken[3, 1] = bad
    for name in ("linear_probe", "clip_adapter", "tip_adapter", "zero_shot"):
        method = get_method(name, **({"epochs": 1} if name == "clip_adapter" else {}))
        if name != "zero_shot":
            with pytest.raises(ValueError, match=r"features contain 1 non-finite values \(NaN or inf\), in rows \[3\]"):
                method.fit(broken, labels, text=text)
        method.fit(feats, labels, text=text)
        with pytest.raises(ValueError, match=r"in rows \[3\]"):
            method.predict_proba(broken)
    with pytest.raises(ValueError, match="ClassText features contain NaN or inf"):
        ClassText(["a"], ["{}"], torch.tensor([[float("nan")] * 4]))


def test_progress_is_one_line_per_stage_when_stderr_is_not_a_terminal(capsys):
    from clip_adapter.io import progress_bar
    with progress_bar(10, "encode 10 images", "img") as bar:   # pytest's captured stderr is not a terminal
        for _ in range(10):
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1 and err.startswith("encode 10 images: 10 img in ")
