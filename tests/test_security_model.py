"""Model folders and output files as untrusted input and as targets (#17, #19): each test builds the crafted input
and shows that nothing happens outside where the user pointed, and that every bad folder is a one-line error."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import pathlib
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clip_adapter import FeatureCache, RunSpec, encode_class_texts, load_backbone, load_dataset, run_one
from clip_adapter.backbones import BackboneSpec
from clip_adapter.cli import main
from clip_adapter.io import atomic_dir
from clip_adapter.methods import FewShotMethod, get_method
from clip_adapter.model import AdaptedClassifier, predict_to_jsonl
from clip_adapter.model.stream import open_append
from clip_adapter.prompts import ClassText

from conftest import clustered, make_color_images

CFG, W = "adapter_config.json", "adapter_model.safetensors"


def _text(text_feats: torch.Tensor, names=None) -> ClassText:
    names = names or [f"class {i}" for i in range(len(text_feats))]
    return ClassText(list(names), ["a photo of a {}."], text_feats, 100.0)


@pytest.fixture(scope="module")
def fitted():
    """A CLIP-Adapter fitted on synthetic features (5 classes, dim 32): a model folder's worth, in well under 1 s."""
    feats, labels, text = clustered()
    return get_method("clip_adapter", epochs=5).fit(feats, labels, text=_text(text)), feats


def _save(fitted, d: Path, **kw) -> Path:
    return fitted[0].save_pretrained(d, backbone_id="test:bb", **kw)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# -- 1. --save-model replaces only a folder this tool wrote, and only with --overwrite ------------------------------
def test_hf_peft_folder_is_never_replaced(fitted, tmp_path):
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / CFG).write_text(json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": "x"}))
    save_file({"base_model.lora_A.weight": torch.zeros(2, 2)}, str(peft / W))
    (peft / "notes.md").write_text("my notes")
    before = _files(peft)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"peft: it is a folder with other content, not a model saved by "
                                             r"clip-adapter \(it holds adapter_config.json, adapter_model"):
            _save(fitted, peft, overwrite=overwrite)
    assert _files(peft) == before


def test_own_model_needs_overwrite_and_never_takes_user_files(fitted, tmp_path):
    d = _save(fitted, tmp_path / "m")
    meta = json.loads((d / CFG).read_text())
    assert meta["library"] == "clip-adapter" and meta["format_version"] == 1
    with pytest.raises(ValueError, match=r"m: it already holds a saved model; pass --overwrite"):
        _save(fitted, d)
    (d / "eval-colors-test.json").write_text("{}")  # evaluate's default output counts as ours
    _save(fitted, d, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == [CFG, W]  # replaced as a whole: the old eval scored the old model
    (d / "notes.txt").write_text("mine")
    (d / "checkpoints").mkdir()
    with pytest.raises(ValueError, match=r"besides a saved model it holds files clip-adapter did not write "
                                         r"\(checkpoints, notes.txt\)"):
        _save(fitted, d, overwrite=True)
    assert (d / "notes.txt").read_text() == "mine" and (d / "checkpoints").is_dir()


def test_legacy_folder_without_marker_is_still_ours(fitted, tmp_path):
    d = _save(fitted, tmp_path / "m")
    meta = json.loads((d / CFG).read_text())
    del meta["library"], meta["format_version"]
    (d / CFG).write_text(json.dumps(meta))
    assert FewShotMethod.from_pretrained(d).classes_ == fitted[0].classes_
    with pytest.raises(ValueError, match="already holds a saved model"):
        _save(fitted, d)
    _save(fitted, d, overwrite=True)


def test_symlinked_target_is_refused(fitted, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ValueError, match="link: it is a symbolic link"):
        _save(fitted, tmp_path / "link")
    assert not any(real.iterdir())


def test_run_refuses_before_training_and_cli_overwrite(tiny_backbone, tmp_path, monkeypatch):
    ds = load_dataset(make_color_images(tmp_path / "colors", per_class=4, size=16))
    spec = RunSpec("zero_shot", shots=0, grid={}, n_views=0)
    cache = FeatureCache(tiny_backbone, root=tmp_path / "cache", progress=False, num_workers=0)
    model = tmp_path / "model"
    run_one(ds, tiny_backbone, spec, cache=cache, save_model=model)
    import clip_adapter.protocol as protocol
    monkeypatch.setattr(protocol, "_select", lambda *a, **k: pytest.fail("trained before checking the target"))
    with pytest.raises(ValueError, match="already holds a saved model; pass --overwrite"):
        run_one(ds, tiny_backbone, spec, cache=cache, save_model=model, output=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    monkeypatch.undo()
    rec = run_one(ds, tiny_backbone, spec, cache=cache, save_model=model, overwrite=True)
    assert rec["model_dir"] == str(model)


# -- atomic_dir: stale temporaries cleaned, the old model kept until the new one is in place -------------------------
def test_stale_temporaries_are_cleaned_on_the_next_save(fitted, tmp_path):
    d = _save(fitted, tmp_path / "m")
    stale = [tmp_path / ".m.999999999-abc.tmp", tmp_path / ".m.xyz.tmp"]  # a dead pid, an older name
    for s in stale:
        s.mkdir()
        (s / W).write_bytes(b"half")
    _save(fitted, d, overwrite=True)
    assert not any(s.exists() for s in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_kill_between_the_two_renames_keeps_the_old_model(fitted, tmp_path, monkeypatch):
    d = _save(fitted, tmp_path / "m")
    good = _files(d)
    real_replace, calls = os.replace, []

    def killed(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder never moves in
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(fitted, d, overwrite=True)
    monkeypatch.undo()
    assert not d.exists() and (tmp_path / ".m.old").is_dir()  # what a kill at that point leaves
    loaded = FewShotMethod.from_pretrained(d)  # loading recovers the set-aside model
    assert _files(d) == good and not (tmp_path / ".m.old").exists()
    assert torch.equal(loaded.logits(fitted[1]), fitted[0].logits(fitted[1]))
    # and a save after such a kill sees (and protects) the recovered model
    (tmp_path / "m").rename(tmp_path / ".m.old")
    with pytest.raises(ValueError, match="already holds a saved model"):
        _save(fitted, d)
    assert _files(d) == good


# -- 2. the same permissions for every file of a model ---------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_gets_the_umask_permissions(fitted, tmp_path, umask):
    old = os.umask(umask)
    try:
        d = _save(fitted, tmp_path / "m", extra={"model_card": "# card"})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
    assert set(modes) == {CFG, W, "README.md"}
    assert set(modes.values()) == {0o666 & ~umask}
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask


# -- 3. a failed save: one line naming the user's path, and no record left behind -----------------------------------
def _disk_full(self, data):
    raise OSError(errno.ENOSPC, "No space left on device", str(self))


def test_full_disk_leaves_no_record_and_names_the_folder(tiny_backbone, tmp_path, monkeypatch, capsys):
    data = make_color_images(tmp_path / "colors", per_class=4, size=16)
    monkeypatch.setattr(pathlib.Path, "write_bytes", _disk_full)
    rc = main(["run", "--data", str(data), "--method", "zero_shot", "--backbone", "tiny-vit", "--pretrained", "none",
               "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
               "--workers", "0", "--save-model", str(tmp_path / "model")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1] == (f"error: Cannot write the model folder {tmp_path / 'model'}: the disk is full; free some space "
                       f"or choose another place (No space left on device).")
    assert not list((tmp_path / "runs").rglob("*.json")) if (tmp_path / "runs").exists() else True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "colors"] + (
        ["runs"] if (tmp_path / "runs").exists() else [])


def test_read_only_target_names_the_users_path(fitted, tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **k):  # root ignores mode bits: simulate the file system's answer
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".m.123-abcd.tmp"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(OSError) as e:
        _save(fitted, tmp_path / "m")
    assert str(e.value) == (f"Cannot write the model folder {tmp_path / 'm'}: the file system is read-only; choose a "
                            f"writable place (Read-only file system).") and e.value.errno == errno.EROFS
    assert ".tmp" not in str(e.value)


def test_atomic_dir_error_names_the_target_not_the_temp(tmp_path, monkeypatch):
    with pytest.raises(OSError, match=rf"^Cannot write the folder {tmp_path / 'out'}: permission denied"):
        with atomic_dir(tmp_path / "out") as tmp:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp / "x"))
    assert list(tmp_path.iterdir()) == []


# -- 4. loading checks everything before building anything -----------------------------------------------------------
def _edit(d: Path, **changes) -> None:
    meta = json.loads((d / CFG).read_text())
    meta.update(changes)
    (d / CFG).write_text(json.dumps(meta))


def _edit_tensors(d: Path, fn) -> None:
    t = load_file(str(d / W))
    fn(t)
    save_file(t, str(d / W))


def test_declared_shapes_cannot_make_loading_allocate(fitted, tmp_path):
    # text features of dim 100,000 (1.2 MB) with the adapter's real small tensors: building the adapter the config
    # asks for would allocate 100,000 x 25,000 floats (10 GB); the meta-device dry run refuses it at no cost.
    d = _save(fitted, tmp_path / "m")
    _edit(d, embed_dim=100_000)
    _edit_tensors(d, lambda t: t.update({"fixed.text_features": torch.zeros(5, 100_000)}))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors does not fit a 'clip_adapter' model of dim "
                                         r"100000 \(.*size mismatch"):
        FewShotMethod.from_pretrained(d)
    # the config alone cannot declare what the tensors do not hold
    d2 = _save(fitted, tmp_path / "m2")
    _edit(d2, embed_dim=10**12)
    with pytest.raises(ValueError, match=r"class text features have shape \(5, 32\), but .*adapter_config.json lists "
                                         r"5 classes of dim 1000000000000"):
        FewShotMethod.from_pretrained(d2)


@pytest.mark.parametrize("dtype,name", [(torch.float16, "F16"), (torch.int64, "I64")])
def test_tensor_dtype_is_a_one_line_error_naming_file_and_tensor(fitted, tmp_path, dtype, name):
    d = _save(fitted, tmp_path / "m")
    _edit_tensors(d, lambda t: t.update({"fixed.text_features": t["fixed.text_features"].to(dtype)}))
    with pytest.raises(ValueError, match=rf"m/adapter_model.safetensors: tensor 'fixed.text_features' has dtype "
                                         rf"{name}; clip-adapter saves float32 \(F32\) only"):
        FewShotMethod.from_pretrained(d)


def test_nan_weights_and_config_values_are_refused(fitted, tmp_path):
    d = _save(fitted, tmp_path / "m")
    _edit_tensors(d, lambda t: t["image_adapter.fc.0.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(ValueError, match=r"tensor 'image_adapter.fc.0.weight' holds 1 non-finite values"):
        FewShotMethod.from_pretrained(d)
    d2 = _save(fitted, tmp_path / "m2")
    (d2 / CFG).write_text((d2 / CFG).read_text().replace('"logit_scale": 100.0', '"logit_scale": NaN'))
    with pytest.raises(ValueError, match=r"m2/adapter_config.json is not valid JSON \(the non-finite number NaN\)"):
        FewShotMethod.from_pretrained(d2)
    d3 = _save(fitted, tmp_path / "m3")
    meta = json.loads((d3 / CFG).read_text())
    (d3 / CFG).write_text(json.dumps({**meta, "config": {**meta["config"], "alpha": float("inf")}}))
    with pytest.raises(ValueError, match="non-finite number Infinity"):
        FewShotMethod.from_pretrained(d3)


def test_duplicate_classes_and_unused_tensors_are_refused(fitted, tmp_path):
    d = _save(fitted, tmp_path / "m")
    _edit(d, classnames=["a", "b", "a", "c", "d"])
    with pytest.raises(ValueError, match=r"adapter_config.json: the class name 'a' appears twice"):
        FewShotMethod.from_pretrained(d)
    d2 = _save(fitted, tmp_path / "m2")
    _edit_tensors(d2, lambda t: t.update({"payload": torch.zeros(3), "text_adapter.fc.0.weight": torch.zeros(8, 32)}))
    with pytest.raises(ValueError, match=r"m2/adapter_model.safetensors holds tensors that a 'clip_adapter' model does "
                                         r"not use \(payload, text_adapter.fc.0.weight\)"):
        FewShotMethod.from_pretrained(d2)


def test_every_feature_method_round_trips_through_the_checks(tmp_path):
    """The dry run must accept every method's own folder (a new method gets this for free)."""
    from clip_adapter.methods import get_method_class, list_methods
    feats, labels, text = clustered()
    views = feats[None] + 0.05
    for name in list_methods():
        cls = get_method_class(name)
        if getattr(cls, "needs_backbone", False) or name in ("coop", "clip_adapter_layer"):
            continue
        fields = {f for f in cls.config_cls.field_names()}
        kw = {k: v for k, v in {"epochs": 2}.items() if k in fields}
        m = get_method(name, **kw).fit(feats, labels, text=_text(text), views=views)
        m.save_pretrained(tmp_path / name, backbone_id="test:bb")
        loaded = FewShotMethod.from_pretrained(tmp_path / name)
        assert torch.equal(loaded.logits(feats), m.logits(feats)), name


# -- loading only the backbone recipes this tool writes ------------------------------------------------------------
@pytest.fixture
def zs_folder(tiny_backbone, tmp_path) -> Path:
    text = encode_class_texts(tiny_backbone, ["cat", "dog"], ["a photo of a {}."])
    return AdaptedClassifier(tiny_backbone, get_method("zero_shot").fit(text=text)).save_pretrained(tmp_path / "zs")


@pytest.mark.parametrize("block,message", [
    ({"id": "open_clip:hf-hub:evil/repo/openai"}, "is not a registered open_clip architecture name"),
    ({"id": "open_clip:/data/hf_model/openai"}, "is not a registered open_clip architecture name"),
    ({"id": "open_clip:my-arch.json/sha256:" + "0" * 16}, "is not a registered open_clip architecture name"),
    ({"id": "open_clip:unknown-arch/sha256:" + "0" * 16}, "no valid architecture config is saved with the model"),
    ({"id": "open_clip:mine/sha256:" + "0" * 16, "model_config": {
        "embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_model_name": "evil/bert"}}},
     r"names weights or code to fetch \(text_cfg.hf_model_name='evil/bert'\)"),
    ({"id": "transformers:some/folder"}, r"backbone 'transformers:some/folder' is not one this clip-adapter builds"),
])
def test_saved_backbone_recipe_is_never_a_path_or_hub_repo(zs_folder, monkeypatch, block, message):
    _edit(zs_folder, backbone={**block, "embed_dim": 64})
    monkeypatch.setattr(BackboneSpec, "load", lambda *a, **k: pytest.fail("opened a backbone the folder named"))
    with pytest.raises(ValueError, match=message):
        AdaptedClassifier.from_pretrained(zs_folder)


# -- 5. predict --out: no symlinks, only our own files, same model and settings, resolved paths, retries ---------------
@pytest.fixture
def zs(tiny_backbone) -> AdaptedClassifier:
    text = encode_class_texts(tiny_backbone, ["red", "green", "blue", "yellow"], ["a photo of a {}."])
    return AdaptedClassifier(tiny_backbone, get_method("zero_shot").fit(text=text))


@pytest.fixture
def pics(color_dir, tmp_path) -> list[str]:
    d = tmp_path / "pics"
    d.mkdir()
    for src in sorted(color_dir.rglob("*.png"))[::12][:3]:
        shutil.copy(src, d / src.name)
    return sorted(str(p) for p in d.iterdir())


def test_symlinked_output_is_refused(zs, pics, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "out.jsonl").symlink_to(victim)
    with pytest.raises(ValueError, match="out.jsonl is a symbolic link; refusing to write through it"):
        predict_to_jsonl(zs, pics, tmp_path / "out.jsonl", num_workers=0)
    assert victim.read_text() == "precious\n"
    with pytest.raises(ValueError, match="is a symbolic link"):  # a link planted after the check: O_NOFOLLOW
        open_append(tmp_path / "out.jsonl")
    for fmt in ("jsonl", "parquet", "csv"):  # refused before the model is even opened
        assert main(["predict", str(tmp_path / "no-model"), *pics, "--out", str(tmp_path / "out.jsonl"),
                     "--format", fmt]) == 1
        assert capsys.readouterr().err.strip() == (f"error: --out {tmp_path / 'out.jsonl'} is a symbolic link; "
                                                   f"refusing to write through it. Give the real path.")
    assert victim.read_text() == "precious\n"


def test_only_a_file_this_tool_wrote_is_resumed(zs, pics, tmp_path):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"path": "x", "mine": 1}\n')
    with pytest.raises(ValueError, match=r"notes.jsonl line 1 is not a prediction record written by clip-adapter "
                                         r"predict; refusing to append to this file: use another --out, or "
                                         r"--overwrite"):
        predict_to_jsonl(zs, pics, out, num_workers=0)
    assert out.read_text() == '{"path": "x", "mine": 1}\n'
    assert predict_to_jsonl(zs, pics, out, num_workers=0, overwrite=True)["written"] == 3


def test_resume_only_with_the_same_model_and_settings(zs, tiny_backbone, pics, tmp_path):
    out = tmp_path / "p.jsonl"
    first = predict_to_jsonl(zs, pics[:2], out, top_k=2, num_workers=0)
    assert first["written"] == 2
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["model"] == zs.fingerprint() and rec["settings"] == {"top_k": 2}
    assert rec["resolved_path"] == os.path.realpath(pics[0])
    assert predict_to_jsonl(zs, pics, out, top_k=2, num_workers=0) == {"written": 1, "errors": 0, "skipped": 2}
    with pytest.raises(ValueError, match=r"p.jsonl holds predictions made with other settings \(\{\"top_k\": 2\}; "
                                         r"now \{\"top_k\": 3\}\); use another --out, or --overwrite"):
        predict_to_jsonl(zs, pics, out, top_k=3, num_workers=0)
    text = encode_class_texts(tiny_backbone, ["red", "green", "blue", "purple"], ["a photo of a {}."])
    other = AdaptedClassifier(tiny_backbone, get_method("zero_shot").fit(text=text))
    assert other.fingerprint() != zs.fingerprint()
    with pytest.raises(ValueError, match=r"p.jsonl holds predictions of another model"):
        predict_to_jsonl(other, pics, out, top_k=2, num_workers=0)
    assert len(out.read_text().splitlines()) == 3  # untouched by the refusals
    assert predict_to_jsonl(other, pics, out, top_k=2, num_workers=0, overwrite=True)["written"] == 3


def test_resume_keys_on_the_resolved_path(zs, color_dir, tmp_path, monkeypatch):
    for name, pick in (("a", 0), ("b", 20)):  # same relative name, different images
        (tmp_path / name).mkdir()
        shutil.copy(sorted(color_dir.rglob("*.png"))[pick], tmp_path / name / "img.png")
    out = tmp_path / "p.jsonl"
    monkeypatch.chdir(tmp_path / "a")
    predict_to_jsonl(zs, ["img.png"], out, num_workers=0)
    monkeypatch.chdir(tmp_path / "b")
    assert predict_to_jsonl(zs, ["img.png"], out, num_workers=0) == {"written": 1, "errors": 0, "skipped": 0}
    assert predict_to_jsonl(zs, ["img.png"], out, num_workers=0)["skipped"] == 1


def test_failed_images_are_retried(zs, pics, tmp_path, color_dir):
    bad = Path(pics[0])
    good = bad.read_bytes()
    bad.write_bytes(b"not yet an image")
    out = tmp_path / "p.jsonl"
    assert predict_to_jsonl(zs, pics, out, num_workers=0)["errors"] == 1
    bad.write_bytes(good)  # the file is fixed: a rerun predicts it
    assert predict_to_jsonl(zs, pics, out, num_workers=0) == {"written": 1, "errors": 0, "skipped": 2}
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 3 and not any("error" in r for r in recs)


# -- 6. CSV cells that a spreadsheet would run as formulas; the CLI's one line for a damaged folder ----------------
NASTY = ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "\tTAB", "plain"]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, color_dir) -> dict:
    """A zero-shot model over class names that look like formulas, on a checkpoint the CLI can rebuild."""
    tmp = tmp_path_factory.mktemp("cli_model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb = load_backbone("tiny-vit", pretrained=None)
    ckpt = tmp / "w.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in bb.model.state_dict().items()}, str(ckpt))
    bb = load_backbone("tiny-vit", checkpoint=str(ckpt))
    text = encode_class_texts(bb, NASTY, ["a photo of a {}."])
    AdaptedClassifier(bb, get_method("zero_shot").fit(text=text)).save_pretrained(tmp / "m")
    img = tmp / "=cmd.png"
    shutil.copy(sorted(color_dir.rglob("*.png"))[0], img)
    return {"dir": tmp / "m", "ckpt": ckpt, "img": img}


def test_csv_output_neutralises_formulas(cli_model, capsys, monkeypatch):
    monkeypatch.chdir(cli_model["img"].parent)  # the image given as "=cmd.png": its path cell starts with "=" too
    assert main(["predict", str(cli_model["dir"]), "=cmd.png", "--checkpoint", str(cli_model["ckpt"]),
                 "--format", "csv", "--top-k", "6", "--workers", "0", "--no-progress"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "rank", "class", "probability", "error"] and len(rows) == 7
    assert sorted(r[2] for r in rows[1:]) == sorted("'" + n if n != "plain" else n for n in NASTY)
    assert {r[0] for r in rows[1:]} == {"'=cmd.png"}
    assert not any(cell[:1] in "=+-@\t\r" and cell for r in rows[1:] for cell in r[:3])


def test_nan_weights_are_one_line_on_the_command_line_not_nan_probabilities(cli_model, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(cli_model["dir"], d)
    _edit_tensors(d, lambda t: t["fixed.text_features"].__setitem__((1, 3), float("nan")))
    assert main(["predict", str(d), str(cli_model["img"]), "--checkpoint", str(cli_model["ckpt"]), "--format", "json",
                 "--workers", "0", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (f"error: {d / W}: tensor 'fixed.text_features' holds 1 non-finite values (NaN or "
                                    f"inf); the model is damaged.")


# -- 7. --class-map: two dataset classes onto one model class -------------------------------------------------------
def test_class_map_two_dataset_classes_onto_one_model_class(zs):
    class Data:
        name, classnames, splits, num_classes = "colors", ["red", "green", "blue", "crimson"], {}, 4
    with pytest.raises(ValueError, match=r"Dataset classes 'red' and 'crimson' both map to the model class 'red'"):
        zs.label_map(Data(), {"crimson": "red"})
    assert zs.label_map(Data(), {"crimson": "yellow"}).tolist() == [0, 1, 2, 3]
