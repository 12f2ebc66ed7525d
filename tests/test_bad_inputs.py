"""Every bad input gets a one-line error naming the file/value and what was expected, exit code != 0, and nothing
half-written is left behind. One table: (a case builds its inputs under tmp_path and returns the CLI arguments,
the fragment the error must contain). It covers every input file format (split JSON, CSV, classnames.txt,
templates.txt, class folders, few-shot index, experiment YAML, saved model folder) and every numeric flag."""
from __future__ import annotations

import json
import shutil
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


def _yaml(tmp: Path, text: str) -> list[str]:
    f = tmp / "cfg.yaml"
    f.write_text(text.replace("DATA", str(_images(tmp))))
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


CASES: dict[str, tuple[Callable, str]] = {
    # -- split JSON (CoOp layout)
    "split_is_a_dict": (lambda t, s: run(t, data=_coop(t, lambda r: r.update(train={"a": 1}))),
                        "split 'train' must be a list of [relpath, label, classname] entries; got a dict"),
    "split_negative_label": (lambda t, s: run(t, data=_coop(t, lambda r: _set(r, "train", 0, 1, -1))),
                             "train[0]: the label must be an int >= 0. Got -1 instead"),
    "split_float_label": (lambda t, s: run(t, data=_coop(t, lambda r: _set(r, "val", 1, 1, 1.5))),
                          "val[1]: the label must be an int >= 0. Got 1.5 instead"),
    "split_label_two_names": (lambda t, s: run(t, data=_coop(t, lambda r: _set(r, "test", 0, 2, "azure"))),
                              "label 0 is 'blue' in train[0] but 'azure' in test[0]"),
    "split_name_two_labels": (lambda t, s: run(t, data=_coop(t, lambda r: _set(r, "test", 0, 1, 4))),
                              "class 'blue' has label 0 in train[0] but 4 in test[0]"),
    "split_leakage": (lambda t, s: run(t, data=_coop(t, lambda r: r["test"].append(list(r["train"][0])))),
                      "is listed in both 'train' and 'test' (train/test leakage)"),
    "split_duplicate": (lambda t, s: run(t, data=_coop(t, lambda r: r["train"].append(list(r["train"][0])))),
                        "is listed twice in 'train'"),
    "split_extra_key": (lambda t, s: run(t, data=_coop(t, lambda r: r.update(extra=[]))),
                        "unknown split key 'extra'; expected exactly train, val, test"),
    "split_missing_val": (lambda t, s: run(t, data=_coop(t, lambda r: r.pop("val"))), "lacks the 'val' split"),
    "split_not_a_triple": (lambda t, s: run(t, data=_coop(t, lambda r: r["train"].append(["x.png", 0]))),
                           "is not [relpath, label, classname]"),
    "split_label_gap": (lambda t, s: run(t, data=_coop(t, _relabel_yellow)),
                        "labels must be 0..7 without gaps; label 3 is unused"),
    "split_empty_classname": (lambda t, s: run(t, data=_coop(t, lambda r: _set(r, "train", 0, 2, " "))),
                              "the class name must be a non-empty string"),
    "split_leaves_folder": (lambda t, s: run(t, data=_coop(t, lambda r: _set(r, "train", 0, 0, "../../etc/passwd"))),
                            "the path '../../etc/passwd' leaves the dataset folder"),
    "split_absolute_path": (lambda t, s: run(t, data=_coop(t, lambda r: _set(r, "train", 0, 0, "/etc/passwd"))),
                            "the path '/etc/passwd' is absolute"),
    "split_not_json": (lambda t, s: run(t, data=_coop_text(t, "{oops")), "is not valid JSON"),
    "split_top_level_list": (lambda t, s: run(t, data=_coop_text(t, "[]")),
                             "must hold a JSON object with keys train, val, test"),
    # -- CSV
    "csv_mixed_labels": (lambda t, s: run(t, data=_csv(t, "path,label\nIMG,0\nIMH,red\n")),
                         "mixes integer labels ('0') and class-name labels ('red')"),
    "csv_header": (lambda t, s: run(t, data=_csv(t, "file,y\nIMG,0\n")),
                   "must have a header with 'path' and 'label' columns"),
    "csv_bad_split": (lambda t, s: run(t, data=_csv(t, "path,label,split\nIMG,0,training\n")),
                      "row 2: split 'training' of imgs/blue/blue_000.png is not one of train, val, test"),
    "csv_leaves_folder": (lambda t, s: run(t, data=_csv(t, "path,label\n../../secret.png,0\n")),
                          "row 2: the path '../../secret.png' leaves the dataset folder"),
    "csv_absolute": (lambda t, s: run(t, data=_csv(t, "path,label\n/etc/hosts,0\n")), "the path '/etc/hosts' is absolute"),
    "csv_empty_label": (lambda t, s: run(t, data=_csv(t, "path,label\nIMG,\n")), "row 2: the label is empty"),
    "csv_label_gap": (lambda t, s: run(t, data=_csv(t, "path,label\nIMG,0\nIMH,2\n")),
                      "labels must be 0..2 without gaps; label 1 is unused"),
    "csv_negative_label": (lambda t, s: run(t, data=_csv(t, "path,label\nIMG,-1\nIMH,0\n")),
                           "row 2: the label must be an int >= 0. Got -1 instead"),
    "csv_duplicate": (lambda t, s: run(t, data=_csv(t, "path,label,split\nIMG,0,train\nIMG,0,test\n")),
                      "in both 'train' and 'test' (train/test leakage)"),
    "csv_not_utf8": (lambda t, s: run(t, data=_csv(t, b"path,label\n\xff\xfe,0\n")), "is not UTF-8 text"),
    "csv_no_rows": (lambda t, s: run(t, data=_csv(t, "path,label\n")), "has no rows"),
    # -- classnames.txt / templates.txt / class folders
    "classnames_count": (lambda t, s: run(t, data=_folder(t, classnames_txt="a\nb\n")),
                         "classnames.txt has 2 names; the data has 4 classes"),
    "classnames_duplicate": (lambda t, s: run(t, data=_folder(t, classnames_txt="a\nb\na\nc\n")),
                             "class name 'a' is listed twice"),
    "templates_no_braces": (lambda t, s: run(t, data=_folder(t, templates_txt="a photo\n")),
                            "template 'a photo' must contain '{}' exactly once"),
    "templates_named_field": (lambda t, s: run(t, data=_folder(t, templates_txt="a {0} of {}\n")),
                              "template 'a {0} of {}' must contain '{}' exactly once"),
    "folder_empty_class": (lambda t, s: run(t, data=_with_empty_class(t)), "zzz contains no images"),
    "folder_no_classes": (lambda t, s: run(t, data=_mkdir_with(t / "nothing")), "has no class subfolders"),
    # -- few-shot index files
    "index_other_keys": (lambda t, s: run(t, *_index(t, {"train": {"data": [{"path": "x.png", "y": 0}]}})),
                         "train[0] must be an object with 'impath' and 'label' (and 'classname'); got ['path', 'y']"),
    "index_not_json": (lambda t, s: run(t, *_index(t, "{nope")), "could not be read as JSON"),
    "index_no_train": (lambda t, s: run(t, *_index(t, {"val": []})), "must be a JSON object with a 'train' entry"),
    "index_test_image": (lambda t, s: run(t, *_index(t, {"train": [_entry("red", 5)]})),
                         "red_005.png is in the dataset's 'test' split, not 'train'"),
    "index_wrong_label": (lambda t, s: run(t, *_index(t, {"train": [{**_entry("red", 0), "label": 0,
                                                                     "classname": "other"}]})),
                          "has label 0 (other) in the index but 2 (red) in the dataset"),
    "index_missing": (lambda t, s: ["run", "--data", str(_images(t)), "--fewshot-index", str(t / "none.json"), *TINY],
                      "Few-shot index file"),
    # -- numeric flags and values of `run`
    "views_negative": (lambda t, s: run(t, "--views", "-2"), "argument --views: must be an int >= 0. Got '-2'"),
    "batch_size_zero": (lambda t, s: run(t, "--batch-size", "0"), "argument --batch-size: must be an int >= 1"),
    "shots_zero": (lambda t, s: run(t, "--shots", "0"), "argument --shots: must be an int >= 1. Got '0'"),
    "seed_negative": (lambda t, s: run(t, "--seed", "-1"), "argument --seed: must be an int in [0, 4294967295]"),
    "seed_huge": (lambda t, s: run(t, "--seed", str(2**40)), "argument --seed: must be an int in [0, 4294967295]"),
    "epochs_zero": (lambda t, s: run(t, "--method", "clip_adapter", "--epochs", "0"), "argument --epochs: must be"),
    "workers_negative": (lambda t, s: run(t, "--workers", "-1"), "argument --workers: must be an int >= 0"),
    "alpha_above_one": (lambda t, s: run(t, "--method", "clip_adapter", "--alpha", "1.5"),
                        "The 'alpha' parameter of ClipAdapterConfig must be a float in [0, 1]. Got 1.5 instead"),
    "alpha_nan": (lambda t, s: run(t, "--method", "clip_adapter", "--alpha", "nan"), "Got nan instead"),
    "alpha_text_negative": (lambda t, s: run(t, "--method", "clip_adapter", "--alpha-text", "-0.1"),
                            "'alpha_text' parameter of ClipAdapterConfig must be a float in [0, 1]"),
    "alpha_not_a_number": (lambda t, s: run(t, "--alpha", "high"), "argument --alpha: invalid float value: 'high'"),
    "grid_no_values": (lambda t, s: run(t, "--method", "clip_adapter", "--grid", "alpha="),
                       "--grid 'alpha=' must look like key=v1,v2,... with at least one value"),
    "grid_bad_value": (lambda t, s: run(t, "--method", "clip_adapter", "--grid", "alpha=0.2,x"),
                       "'alpha' parameter of ClipAdapterConfig must be a float in [0, 1]. Got 'x'"),
    "set_not_int": (lambda t, s: run(t, "--method", "clip_adapter", "--set", "epochs=abc"),
                    "Override epochs='abc': expected an int"),
    "set_unknown": (lambda t, s: run(t, "--set", "CC=1"), "Unknown LinearProbeConfig key 'CC' (did you mean 'C'?)"),
    "set_bad_device": (lambda t, s: run(t, "--method", "clip_adapter", "--set", "device=gpu"),
                       "The 'device' parameter of ClipAdapterConfig must be a torch device"),
    "template_no_braces": (lambda t, s: run(t, "--template", "a photo"), "template 'a photo' must contain '{}'"),
    "template_two_braces": (lambda t, s: run(t, "--template", "{} and {}"), "template '{} and {}' must contain"),
    "save_model_is_a_file": (lambda t, s: run(t, "--save-model", str(_mkfile(t / "model.txt"))),
                             "model.txt: it is an existing file; expected a folder"),
    "save_model_other_folder": (lambda t, s: run(t, "--save-model", str(_mkdir_with(t / "mine"))),
                                "mine: it is a folder with other content"),
    "output_is_a_file": (lambda t, s: [*run(t)[:-len(TINY)], *TINY, "--output", str(_mkfile(t / "out.txt"))],
                         "The results folder"),
    "device_unknown": (lambda t, s: run(t, "--device", "foo"), "Unknown device 'foo'; expected cpu, cuda, cuda:N"),
    "device_missing_gpu": (lambda t, s: run(t, "--device", "cuda:99"), "CUDA GPU"),
    "data_missing": (lambda t, s: run(t, data=t / "no" / "where"), "not found"),
    "backbone_unknown": (lambda t, s: ["run", "--data", str(_images(t)), "--backbone", "RN5O"],
                         "Unknown backbone 'RN5O' (did you mean 'RN50'?)"),
    "method_unknown": (lambda t, s: run(t, "--method", "tip"), "Unknown method 'tip'"),
    "val_missing_for_a_grid": (lambda t, s: run(t, "--shots", "1", data=_csv(
        t, "path,label,split\nIMG,0,train\nIMH,1,train\nimgs/blue/blue_001.png,0,test\n")),
                               "Cannot choose C of 'linear_probe' on validation: there are no validation images"),
    "cache_dir_is_a_file": (lambda t, s: [*run(t)[:-len(TINY)], *TINY, "--cache-dir", str(_mkfile(t / "c.txt"))],
                            "The feature cache folder"),
    "checkpoint_garbage": (lambda t, s: ["run", "--data", str(_images(t)), "--backbone", "tiny-vit", "--checkpoint",
                                         str(_mkfile(t / "w.pt"))], "Could not load checkpoint"),
    "architecture_not_json": (lambda t, s: ["run", "--data", str(_images(t)), "--backbone", str(_mkfile(t / "a.json"))],
                              "Model config " + "TMP/a.json is not valid JSON"),
    "architecture_keys": (lambda t, s: ["run", "--data", str(_images(t)), "--backbone", str(_json(t / "b.json",
                                                                                               {"embed_dim": 8}))],
                          "is not an open_clip architecture: expected the keys embed_dim, vision_cfg and text_cfg"),
    "corrupt_image_in_a_worker": (lambda t, s: run(t, "--method", "zero_shot", "--workers", "2", "--batch-size", "1",
                                                   data=_csv(t, "path,label,split\nIMG,0,train\nIMH,1,train\n"
                                                                "imgs/red/bad.png,1,test\nimgs/blue/blue_001.png,0,"
                                                                "test\n", corrupt="imgs/red/bad.png")),
                                  "bad.png could not be read"),
    # -- demo
    "demo_shots": (lambda t, s: ["demo", "--shots", "1,x", "--backbone", "tiny-vit", "--pretrained", "none"],
                   "argument --shots: must be a comma-separated list of distinct ints >= 1. Got '1,x'"),
    "demo_seed": (lambda t, s: ["demo", "--seed", "-3"], "argument --seed: must be an int in [0, 4294967295]"),
    # -- predict / saved model folders
    "top_k_zero": (lambda t, s: predict(t, s, "--top-k", "0"), "argument --top-k: must be an int >= 1. Got '0'"),
    "predict_batch_size": (lambda t, s: predict(t, s, "--batch-size", "0"), "argument --batch-size: must be"),
    "predict_workers": (lambda t, s: predict(t, s, "--workers", "-2"), "argument --workers: must be an int >= 0"),
    "predict_out_is_a_folder": (lambda t, s: predict(t, s, "--out", str(_mkdir_with(t / "outdir"))),
                                "--out " + "OUTDIR is a folder; expected a file name"),
    "model_other_method_tensors": (lambda t, s: predict(t, s, model=_model(t, s, _other_tensors)),
                                   "lacks the tensor 'fixed.text_features' of a 'clip_adapter' model"),
    "model_bad_config_value": (lambda t, s: predict(t, s, model=_model(t, s, _edit_config("config", {"alpha": 5}))),
                               "adapter_config.json: The 'alpha' parameter of ClipAdapterConfig must be a float"),
    "model_bad_embed_dim": (lambda t, s: predict(t, s, model=_model(t, s, _edit_config("embed_dim", "32"))),
                            "'embed_dim' must be an int > 0. Got '32' instead"),
    "model_unknown_method": (lambda t, s: predict(t, s, model=_model(t, s, _edit_config("method", "magic"))),
                             "adapter_config.json: Unknown method 'magic'"),
    "model_wrong_shapes": (lambda t, s: predict(t, s, model=_model(t, s, _wrong_shapes)),
                           "does not fit a 'clip_adapter' model of dim 32"),
    "model_classes_vs_tensors": (lambda t, s: predict(t, s, model=_model(t, s, _edit_config("classnames", ["a"]))),
                                 "its class text features have shape (4, 32), but"),
    "model_missing": (lambda t, s: predict(t, s, model=t / "nope"), "Model directory"),
    # -- evaluate
    "evaluate_other_classes": (lambda t, s: evaluate(t, s, _subset(t)),
                               "have different classes (only in the dataset: ['purple']; only in the model: "
                               "['yellow'])"),
    "evaluate_class_map_syntax": (lambda t, s: evaluate(t, s, _subset(t), "--class-map", "purple"),
                                  "--class-map 'purple' must be 'by-name', FILE.json or"),
    "evaluate_class_map_target": (lambda t, s: evaluate(t, s, _subset(t), "--class-map", "purple=violet"),
                                  "Dataset class 'purple' maps to 'violet', which is not a class of the model"),
    "evaluate_by_name_not_subset": (lambda t, s: evaluate(t, s, _subset(t), "--class-map", "by-name"),
                                    "Dataset class 'purple' maps to 'purple'"),
    "evaluate_batch_size": (lambda t, s: evaluate(t, s, s["data"], "--batch-size", "0"), "argument --batch-size"),
    # -- experiment YAML
    "yaml_invalid": (lambda t, s: _yaml(t, "datasets: [DATA\nmethods: {"), "is not valid YAML"),
    "yaml_n_views": (lambda t, s: _yaml(t, "datasets: [DATA]\nmethods: {zero_shot: {}}\nn_views: -1\n"),
                     "'n_views' must be an int >= 0. Got -1 instead"),
    "yaml_unknown_key": (lambda t, s: _yaml(t, "datasets: [DATA]\nmethods: {zero_shot: {}}\nseed: [1]\n"),
                         "unknown key 'seed' (did you mean 'seeds'?)"),
    "yaml_batch_size": (lambda t, s: _yaml(t, "datasets: [DATA]\nmethods: {zero_shot: {}}\nbatch_size: 0\n"),
                        "'batch_size' must be an int >= 1. Got 0 instead"),
    "yaml_outside_flag": (lambda t, s: _yaml(t, "datasets: [{data: DATA, allow_outside_paths: yes please}]\n"
                                                "methods: {zero_shot: {}}\n"),
                          "'allow_outside_paths' must be a bool"),
    # -- datasets / report
    "verify_workers": (lambda t, s: ["datasets", "verify", str(_images(t)), "--workers", "0"],
                       "argument --workers: must be an int >= 1"),
    "verify_unknown": (lambda t, s: ["datasets", "verify", "dtdd"], "Unknown dataset 'dtdd'; did you mean 'dtd'?"),
    "report_missing": (lambda t, s: ["report", str(t / "none")], "Results folder"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_error(case, saved, tmp_path, capsys, one_thread):
    build, fragment = CASES[case]
    argv = build(tmp_path, saved)
    before = {p for p in tmp_path.rglob("*")}
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors (exit code 2)
        rc = e.code
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc != 0, f"{case}: exit code 0; stderr: {err}"
    assert len(errors) == 1 and "Traceback" not in err, f"{case}: not one error line:\n{err}"
    fragment = fragment.replace("OUTDIR", str(tmp_path / "outdir")).replace("TMP", str(tmp_path))
    assert fragment in errors[0], f"{case}: {fragment!r} not in {errors[0]!r}"
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
