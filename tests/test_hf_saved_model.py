"""A model saved with a Hugging Face folder backbone loads without ``backbone=`` (#21.4): the saved recipe names the
folder's absolute path and digests, and is rebuilt only while that folder is there and unchanged. A hub id, a moved,
changed or pickle-only folder, or a path that is not absolute is refused in one line that says to pass the backbone
(``--backbone hf:PATH`` on the command line, ``backbone=`` in Python: the #17 rule, a model folder never makes loading
open a hub repo or a path nobody approved); a backbone so given must have the saved id."""
from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_hf import save_tiny_hf

from clip_adapter.backbones import BackboneSpec, load_backbone
from clip_adapter.cli import main
from clip_adapter.methods import get_method
from clip_adapter.model import AdaptedClassifier
from clip_adapter.prompts import encode_class_texts

from conftest import make_color_images

CFG = "adapter_config.json"
NAMES = ["red", "green", "blue", "yellow"]
HINT = (r"load that backbone yourself and pass it: --backbone hf:PATH on the command line, "
        r"AdaptedClassifier\.from_pretrained\(dir, backbone=load_backbone\('hf:PATH'\)\) in Python\.$")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = make_color_images(tmp_path_factory.mktemp("hf_saved") / "colors", per_class=1, size=24)
    return sorted(root.rglob("*.png"))


def _saved(tmp_path: Path, kind: str = "clip", method: str = "coop") -> tuple[Path, Path, AdaptedClassifier]:
    """(the HF folder, the saved model folder, the model) for a tiny random-init model fitted on 8 features."""
    folder = save_tiny_hf(tmp_path / "weights" / f"tiny-{kind}", kind)
    bb = load_backbone(f"hf:{folder}")
    text = encode_class_texts(bb, NAMES, ["a photo of a {}."])
    feats = text.features.repeat(2, 1) + 0.1 * torch.randn(8, bb.embed_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4).repeat(2)
    kw = {"epochs": 2, "n_ctx": 2, "batch_size": 4} if method == "coop" else {}
    fitted = get_method(method, **kw, **({"backbone": bb} if method == "coop" else {})).fit(feats, labels, text=text)
    model = AdaptedClassifier(bb, fitted)
    return folder, model.save_pretrained(tmp_path / "model"), model


@pytest.mark.parametrize("kind,method", [("clip", "coop"), ("siglip", "coop"), ("siglip", "zero_shot")])
def test_round_trip_without_backbone(tmp_path, images, kind, method):
    folder, saved, model = _saved(tmp_path, kind, method)
    block = json.loads((saved / CFG).read_text())["backbone"]
    assert block["id"] == model.backbone.id and block["source"]["path"] == str(folder.resolve())
    assert len(block["source"]["files_sha256"]) == 64
    with warnings.catch_warnings():  # CoOp re-encodes its context with the rebuilt backbone: it must agree
        warnings.filterwarnings("error", message="CoOp context re-encoded")
        loaded = AdaptedClassifier.from_pretrained(saved)
    assert loaded.backbone is not model.backbone and loaded.backbone.id == model.backbone.id
    assert loaded.method.name == method and loaded.classes_ == NAMES
    assert torch.equal(loaded.predict_proba(images), model.predict_proba(images))
    assert loaded.predict(images) == model.predict(images)
    x = torch.stack([model.transform(Image.open(p)) for p in images])
    assert torch.equal(loaded.method.logits(loaded.features(x)), model.method.logits(model.features(x)))
    if kind == "siglip":  # SigLIP's bias travels with the model and is in its logits
        assert loaded.method.logit_bias_ == model.backbone.logit_bias == pytest.approx(-10.0)


def test_cli_predict_needs_no_backbone(tmp_path, images, capsys):
    _, saved, model = _saved(tmp_path)
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(saved), *map(str, images), "--out", str(out), "--top-k", "1", "--workers", "0",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prediction"] for r in sorted(rows, key=lambda r: r["path"])] == model.predict(images)


def _edit_block(saved: Path, **changes) -> None:
    meta = json.loads((saved / CFG).read_text())
    meta["backbone"] = {**meta["backbone"], **changes}
    (saved / CFG).write_text(json.dumps(meta))


def _refused(saved: Path, monkeypatch, message: str) -> None:
    monkeypatch.setattr(BackboneSpec, "load", lambda *a, **k: pytest.fail("opened a backbone it should refuse"))
    with pytest.raises(ValueError, match=message) as e:
        AdaptedClassifier.from_pretrained(saved)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(saved / CFG))
    assert "backbone=load_backbone('hf:PATH')" in str(e.value) and "--backbone hf:PATH" in str(e.value)


def test_hub_id_recorded_is_refused(tmp_path, monkeypatch):
    folder, saved, _ = _saved(tmp_path)
    _edit_block(saved, id="hf:openai/clip-vit-base-patch32@main")   # even with a good local source next to it
    _refused(saved, monkeypatch, r"backbone 'hf:openai/clip-vit-base-patch32@main' is a Hugging Face hub model; a "
                                 r"saved model never opens a hub repo; " + HINT)


@pytest.mark.parametrize("source", [None, {"path": "tiny-clip", "files_sha256": "0" * 64}, {"path": "/x"},
                                    "openai/clip-vit-base-patch32"])
def test_no_absolute_local_source_is_refused(tmp_path, monkeypatch, source):
    _, saved, _ = _saved(tmp_path)
    _edit_block(saved, source=source)
    _refused(saved, monkeypatch, r"records no local folder to rebuild it from \(an absolute path and its files' "
                                 r"digest; got .*\); " + HINT)


def test_missing_folder_is_refused_and_backbone_still_works(tmp_path, images, monkeypatch):
    folder, saved, model = _saved(tmp_path)
    moved = folder.rename(tmp_path / "elsewhere")
    _refused(saved, monkeypatch, rf"the folder '{folder.resolve()}' of backbone 'hf:tiny-clip/sha256:[0-9a-f]{{16}}' "
                                 r"no longer exists; " + HINT)
    monkeypatch.undo()
    copy = shutil.copytree(moved, tmp_path / "approved" / "tiny-clip")   # the user points at the weights: same id
    loaded = AdaptedClassifier.from_pretrained(saved, backbone=load_backbone(f"hf:{copy}"))
    assert torch.equal(loaded.predict_proba(images), model.predict_proba(images))


def test_changed_weights_are_refused(tmp_path, monkeypatch):
    folder, saved, _ = _saved(tmp_path)
    other = save_tiny_hf(tmp_path / "other" / "tiny-clip", "clip", seed=1)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    _refused(saved, monkeypatch, rf"the weights in '{folder.resolve()}' are not the ones the model was saved with "
                                 r"\(hf:tiny-clip/sha256:[0-9a-f]{16}, saved 'hf:tiny-clip/sha256:[0-9a-f]{16}'\); "
                                 + HINT)


def test_changed_processor_is_refused(tmp_path, monkeypatch):
    folder, saved, _ = _saved(tmp_path)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**cfg, "image_mean": [0.1, 0.2, 0.3]}))
    _refused(saved, monkeypatch, rf"the config, tokenizer or processor files in '{folder.resolve()}' changed since "
                                 r"the model was saved; " + HINT)


def test_pickle_only_folder_is_refused(tmp_path, monkeypatch):
    folder, saved, _ = _saved(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    _refused(saved, monkeypatch, r"holds no safetensors weights \(model.safetensors or model.safetensors.index.json\)"
                                 r"; a saved model never unpickles a backbone; " + HINT)


def _predict(saved: Path, images: list[Path], out: Path, *extra: str) -> list[dict]:
    code = main(["predict", str(saved), *map(str, images), "--out", str(out), "--workers", "0", "--no-progress",
                 *extra])
    return sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["path"]) \
        if code == 0 else code


def _error_line(capsys) -> str:
    """The command's error: one line (transformers' own loading progress bars may come before it)."""
    lines = [x for x in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error" in x.lower()]
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_backbone_loads_a_moved_folder(tmp_path, images, capsys):
    folder, saved, model = _saved(tmp_path)
    moved = tmp_path / "moved" / folder.name   # the id names the folder: the user moved it, name kept
    moved.parent.mkdir()
    folder.rename(moved)
    capsys.readouterr()   # what building the tiny model printed
    assert _predict(saved, images, tmp_path / "none.jsonl") == 1   # the recorded folder is gone: refused
    err = _error_line(capsys)
    assert "no longer exists" in err and "--backbone hf:PATH" in err
    rows = _predict(saved, images, tmp_path / "p.jsonl", "--backbone", f"hf:{moved}", "--top-k", "4")
    probs = model.predict_proba(images)
    assert [r["prediction"] for r in rows] == model.predict(images)
    for r, row in zip(rows, probs):
        got = {t["class"]: t["probability"] for t in r["top_k"]}
        assert [got[c] for c in NAMES] == pytest.approx(row.tolist(), abs=1e-6)
    loaded = AdaptedClassifier.from_pretrained(saved, backbone=f"hf:{moved}")   # the same choice in Python
    assert torch.equal(loaded.predict_proba(images), probs)


def test_cli_backbone_of_another_model_is_refused(tmp_path, images, capsys):
    folder, saved, model = _saved(tmp_path)
    other = save_tiny_hf(tmp_path / "other" / folder.name, "clip", seed=1)   # same name, other weights
    capsys.readouterr()
    assert _predict(saved, images, tmp_path / "p.jsonl", "--backbone", f"hf:{other}") == 1
    err = _error_line(capsys)
    assert re.fullmatch(rf"error: {re.escape(str(saved / CFG))}: the backbone given \('hf:{re.escape(str(other))}'\) "
                        r"is 'hf:tiny-clip/sha256:[0-9a-f]{16}', but the model was saved with "
                        r"'hf:tiny-clip/sha256:[0-9a-f]{16}'; pass the backbone it was trained on\.", err), err
    assert load_backbone(f"hf:{other}").id in err and model.backbone.id in err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("command", [["evaluate", "M", "--data", "D"], ["export", "M", "--onnx", "x.onnx"]])
def test_evaluate_and_export_take_backbone(command):
    from clip_adapter.cli import build_parser
    assert build_parser().parse_args([*command, "--backbone", "hf:/w/tiny-clip"]).backbone == "hf:/w/tiny-clip"
    assert build_parser().parse_args(command).backbone is None
