"""The adapted model as an artefact: save/load round trip, bad inputs, predict/evaluate CLI, resumable streaming."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clip_adapter import FeatureCache, RunSpec, encode_class_texts, load_backbone, load_dataset, run_one
from clip_adapter.cli import main
from clip_adapter.methods import get_method
from clip_adapter.backbones import BackboneSpec
from clip_adapter.model import AdaptedClassifier, expand_images, predict_to_jsonl
from conftest import seeded_backbone


@pytest.fixture(scope="module")
def ckpt(tiny_backbone, tmp_path_factory) -> Path:
    """The tiny random backbone's weights as a local checkpoint, so a rebuilt backbone has the same weights."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-vit.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def backbone(ckpt):
    return load_backbone("tiny-vit", checkpoint=str(ckpt))


@pytest.fixture(scope="module")
def trained(backbone, color_dir, tmp_path_factory):
    """A CLIP-Adapter fitted by run_one and saved with save_model=..., plus its record and feature cache root."""
    tmp = tmp_path_factory.mktemp("trained")
    cache = FeatureCache(backbone, root=tmp / "cache", progress=False, num_workers=0)
    ds = load_dataset(color_dir)
    spec = RunSpec("clip_adapter", shots=4, seed=1, overrides={"epochs": 10, "alpha": 0.5}, grid={}, n_views=0)
    record = run_one(ds, backbone, spec, cache=cache, save_model=tmp / "model")
    return {"dir": tmp / "model", "record": record, "cache": tmp / "cache", "dataset": ds}


@pytest.fixture(scope="module")
def loaded(trained, ckpt) -> AdaptedClassifier:
    return AdaptedClassifier.from_pretrained(trained["dir"], checkpoint=ckpt)


@pytest.fixture
def images(color_dir, tmp_path) -> Path:
    """A nested folder of 6 good images and one corrupt one."""
    root = tmp_path / "imgs"
    for i, src in enumerate(sorted(color_dir.rglob("*.png"))[::8]):
        dst = root / ("sub" if i % 2 else "") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    (root / "sub" / "corrupt.png").write_bytes(b"not a png at all")
    return root


def test_round_trip_predictions_are_identical(backbone, ckpt, color_dir, tmp_path):
    ds = load_dataset(color_dir)
    cache = FeatureCache(backbone, root=tmp_path / "cache", progress=False, num_workers=0)
    items = ds.split("train")
    text = encode_class_texts(backbone, ds.classnames, ds.templates)
    method = get_method("clip_adapter", alpha=0.5, epochs=5).fit(cache.features(items),
                                                                  torch.tensor([it.label for it in items]), text=text)
    model = AdaptedClassifier(backbone, method)
    model.save_pretrained(tmp_path / "m", dataset=ds.name, shots=6)
    meta = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert meta["backbone"]["name"] == "tiny-vit" and meta["backbone"]["pretrained"] is None
    sha = meta["backbone"]["checkpoint_sha256"]   # the full digest; the id carries its first 16 hex digits
    assert len(sha) == 64 and backbone.id.endswith(sha[:16])
    assert meta["classnames"] == ds.classnames and meta["templates"] == ds.templates
    assert meta["method"] == "clip_adapter" and meta["config"]["alpha"] == 0.5 and "clip-adapter" in meta["versions"]
    assert "clip_adapter on colors" in (tmp_path / "m" / "README.md").read_text()

    loaded = AdaptedClassifier.from_pretrained(tmp_path / "m", checkpoint=ckpt)
    assert loaded.backbone is not backbone and loaded.classes_ == ds.classnames
    paths = [it.path for it in ds.split("test")]
    p0 = model.predict_proba(paths)
    assert torch.equal(p0, loaded.predict_proba(paths))
    assert loaded.predict(paths) == [ds.classnames[i] for i in p0.argmax(1).tolist()]
    # every input kind gives the same answer: paths, PIL images, preprocessed tensors, raw features
    pil = [Image.open(p) for p in paths]
    assert torch.equal(loaded.predict_proba(pil), p0)
    assert torch.equal(loaded.predict_proba(torch.stack([loaded.transform(im.convert("RGB")) for im in pil])), p0)
    feats = loaded.features(paths)
    assert feats.shape == (len(paths), backbone.embed_dim)
    assert torch.equal(loaded.predict_proba(feats), p0)
    assert loaded.predict(pil[0]) == [ds.classnames[int(p0[0].argmax())]]  # one image -> a list of one
    # re-saving a loaded model keeps the full checkpoint digest and the facts
    loaded.save_pretrained(tmp_path / "m2")
    meta2 = json.loads((tmp_path / "m2" / "adapter_config.json").read_text())
    assert len(meta2["backbone"]["checkpoint_sha256"]) == 64 and meta2["dataset"] == ds.name


def _zero_shot(backbone, classnames=("cat", "dog", "bird")) -> AdaptedClassifier:
    text = encode_class_texts(backbone, list(classnames), ["a photo of a {}."])
    return AdaptedClassifier(backbone, get_method("zero_shot").fit(text=text))


def test_random_init_backbone_is_passed_not_rebuilt(tiny_backbone, color_dir, tmp_path, caplog):
    model = _zero_shot(tiny_backbone)
    model.save_pretrained(tmp_path / "zs")
    paths = sorted(str(p) for p in color_dir.rglob("*.png"))[:5]
    same = AdaptedClassifier.from_pretrained(tmp_path / "zs", backbone=tiny_backbone)
    assert torch.equal(same.predict_proba(paths), model.predict_proba(paths))
    # A rebuilt random init would have other weights: refused, with the way out.
    with pytest.raises(ValueError, match=r"randomly initialised backbone .*Pass the original: --backbone NAME on the "
                                         r"command line \(checked by its weights' fingerprint\), "
                                         r"from_pretrained\(dir, backbone=bb\) in Python\.$"):
        AdaptedClassifier.from_pretrained(tmp_path / "zs")
    # Named (--backbone tiny-vit), it is built seeded as experiments build it: the saved fingerprint, accepted.
    named = AdaptedClassifier.from_pretrained(tmp_path / "zs", backbone="tiny-vit")
    assert named.backbone.id == tiny_backbone.id and torch.equal(named.predict_proba(paths), model.predict_proba(paths))
    _zero_shot(seeded_backbone("tiny-vit", seed=1)).save_pretrained(tmp_path / "zs1")   # other random weights
    with pytest.raises(ValueError, match=r"zs1/adapter_config.json: the backbone given \('tiny-vit'\) is "
                                         r"'open_clip:tiny-vit/random-init-[0-9a-f]+', but the model was saved with "
                                         r"'open_clip:tiny-vit/random-init-[0-9a-f]+'; pass the backbone it was "
                                         r"trained on\.$"):
        AdaptedClassifier.from_pretrained(tmp_path / "zs1", backbone="tiny-vit")
    with pytest.raises(ValueError, match="not on a local checkpoint"):
        AdaptedClassifier.from_pretrained(tmp_path / "zs", checkpoint=__file__)


def test_unregistered_architecture_is_rebuilt_from_the_saved_config(tmp_path):
    import open_clip
    from clip_adapter.backbones import PACKAGED_CONFIGS as _PACKAGED_CONFIGS
    arch = tmp_path / "my-arch.json"
    shutil.copy(_PACKAGED_CONFIGS / "tiny-vit.json", arch)
    ckpt = tmp_path / "w.pt"
    torch.save(load_backbone(str(arch)).model.state_dict(), ckpt)
    bb = load_backbone(str(arch), checkpoint=str(ckpt))
    _zero_shot(bb).save_pretrained(tmp_path / "m")
    open_clip.factory._MODEL_CONFIGS.pop("my-arch")  # as on another machine, where my-arch.json is unknown
    arch.unlink()
    loaded = AdaptedClassifier.from_pretrained(tmp_path / "m", checkpoint=str(ckpt))
    assert loaded.backbone.id == bb.id and bb.id.startswith("open_clip:my-arch/sha256:")


def test_run_one_saved_model_reproduces_its_accuracy(trained, loaded):
    model = loaded
    assert model.info["test_accuracy"] == trained["record"]["accuracy"]
    cache = FeatureCache(model.backbone, root=trained["cache"], progress=False, num_workers=0)
    result = model.evaluate(trained["dataset"], "test", cache)
    assert result["accuracy"] == trained["record"]["accuracy"]
    assert result["n"] == trained["record"]["n_test"]


def test_bad_model_dirs(trained, ckpt, tiny_backbone, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        AdaptedClassifier.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(trained["dir"], broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors not found"):
        AdaptedClassifier.from_pretrained(broken, checkpoint=ckpt)
    shutil.copy(trained["dir"] / "adapter_model.safetensors", broken)
    (broken / "adapter_config.json").write_text('{"method": "clip_adapter", ')
    with pytest.raises(ValueError, match="not valid JSON"):
        AdaptedClassifier.from_pretrained(broken, checkpoint=ckpt)
    (broken / "adapter_config.json").write_text((trained["dir"] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="could not be read as safetensors"):
        AdaptedClassifier.from_pretrained(broken, checkpoint=ckpt)


def test_backbone_mismatch_and_checkpoint_checks(trained, ckpt, loaded, tiny_backbone, tmp_path):
    # an existing backbone with another id (the same architecture, random init)
    with pytest.raises(ValueError, match="was trained on 'open_clip:tiny-vit/sha256:.*features come from "
                                         "'open_clip:tiny-vit/random-init-[0-9a-f]{12}'"):
        AdaptedClassifier.from_pretrained(trained["dir"], backbone=tiny_backbone)
    with pytest.raises(ValueError, match="pass that file with checkpoint=FILE"):
        AdaptedClassifier.from_pretrained(trained["dir"])
    wrong = tmp_path / "other.safetensors"
    wrong.write_bytes(ckpt.read_bytes() + b" ")
    with pytest.raises(ValueError, match="wrong file"):
        AdaptedClassifier.from_pretrained(trained["dir"], checkpoint=wrong)
    with pytest.raises(FileNotFoundError, match="Checkpoint file"):
        AdaptedClassifier.from_pretrained(trained["dir"], checkpoint=tmp_path / "missing.pt")

    class OtherDim:  # a backbone of another width
        id, embed_dim = "open_clip:other/openai", 64
    model = loaded
    with pytest.raises(ValueError, match=r"\(dim 32\); features come from 'open_clip:other/openai' \(dim 64\)"):
        AdaptedClassifier(OtherDim(), model.method)
    with pytest.raises(ValueError, match=r"raw features \(n, 32\)"):
        model.predict(torch.zeros(2, 7))


@pytest.mark.parametrize("bid, name, pretrained, sha", [
    ("open_clip:RN50/openai", "RN50", "openai", None),
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", "ViT-B-32", "laion2b_s34b_b79k", None),
    ("open_clip:tiny-vit/random-init-0123456789ab", "tiny-vit", None, None),
    ("open_clip:RN50/sha256:0123456789abcdef", "RN50", None, "0123456789abcdef"),
    ("lite:efficientnet-lite0+minilm-l6", "lite", None, None),
    ("test:bb", None, None, None),   # an unregistered family: the id does not say how to rebuild it (#21.3)
])
def test_backbone_spec_parses_and_builds_ids(bid, name, pretrained, sha):
    spec = BackboneSpec.parse(bid, 32)
    assert (spec.name, spec.pretrained, spec.checkpoint_sha256) == (name, pretrained, sha)
    assert spec.id == bid                                              # built back, the same string
    d = spec.to_dict()
    assert (d["name"], d["pretrained"], d["checkpoint_sha256"], d["id"]) == (name, pretrained, sha, bid)
    assert BackboneSpec.from_dict(d) == spec


def test_backbone_spec_stores_architecture(backbone):
    spec = backbone.spec.to_dict()
    assert spec["model_config"]["embed_dim"] == 32 and spec["id"] == backbone.id


def test_stream_skips_unreadable_images(loaded, images, caplog):
    model = loaded
    paths, errors = expand_images([images, images / "missing.png", str(images / "*.jpg")])
    assert len(paths) == 7 and str(images / "sub" / "corrupt.png") in paths  # recursive
    assert [e["path"] for e in errors] == [str(images / "missing.png"), str(images / "*.jpg")]
    recs = list(model.predict_stream([*paths, images / "gone.png"], top_k=2, batch_size=3, num_workers=1))
    assert [r["path"] for r in recs] == [*paths, str(images / "gone.png")]  # input order kept
    bad = {r["path"]: r["error"] for r in recs if "error" in r}
    assert set(bad) == {str(images / "sub" / "corrupt.png"), str(images / "gone.png")}
    assert "could not be read" in bad[str(images / "sub" / "corrupt.png")] and "not found" in bad[str(images / "gone.png")]
    assert "corrupt.png" in caplog.text
    good = [r for r in recs if "error" not in r]
    assert len(good) == 6 and all(len(r["top_k"]) == 2 and r["prediction"] == r["top_k"][0]["class"] for r in good)
    with pytest.raises(OSError, match="corrupt.png could not be read"):
        model.predict([images / "sub" / "corrupt.png"])


def test_cli_predict_formats(trained, ckpt, images, tmp_path, capsys, caplog):
    base = ["predict", str(trained["dir"]), str(images), str(images / "missing.png"), "--checkpoint", str(ckpt),
            "--no-progress"]
    assert main([*base, "--format", "json"]) == 1  # some images failed, the others are predicted
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["classes"] == trained["dataset"].classnames and doc["top_k"] == 4  # min(5, 4 classes)
    assert doc["n_images"] == 8 and doc["n_errors"] == 2
    preds = [r for r in doc["predictions"] if "error" not in r]
    assert len(preds) == 6
    for r in preds:
        assert set(r) == {"path", "prediction", "probability", "top_k"} and len(r["top_k"]) == 4
        assert abs(sum(t["probability"] for t in r["top_k"]) - 1) < 1e-5
    assert {Path(r["path"]).name for r in doc["predictions"] if "error" in r} == {"corrupt.png", "missing.png"}
    assert "2 of 8 images could not be read" in out.err and "corrupt.png" in out.err and "missing.png" in out.err
    assert "corrupt.png could not be read" in caplog.text  # the logged warning (stderr outside pytest)

    assert main([*base, "--top-k", "2", "--out", str(tmp_path / "p.csv")]) == 1
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert len(rows) == 6 * 2 + 2 and set(rows[0]) == {"path", "rank", "class", "probability", "error"}
    assert main(["predict", str(trained["dir"]), str(images / "sub"), "--checkpoint", str(ckpt), "--top-k", "1"]) == 1
    table = capsys.readouterr().out
    assert "| image" in table and "top-1" in table and "(error)" in table


def test_cli_predict_errors(trained, ckpt, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "no-model"), str(tmp_path)]) == 1
    assert "Model directory" in capsys.readouterr().err
    assert main(["predict", str(trained["dir"]), str(tmp_path / "none.png"), "--checkpoint", str(ckpt)]) == 1
    assert "No images found" in capsys.readouterr().err


def test_cli_evaluate(trained, ckpt, color_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(trained["dir"]), "--data", str(color_dir), "--checkpoint", str(ckpt),
                 "--cache-dir", str(trained["cache"]), "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] == trained["record"]["accuracy"] and result["split"] == "test"
    assert {"macro_f1", "per_class_accuracy", "n", "backbone", "versions"} <= set(result)
    assert "accuracy" in capsys.readouterr().out


def test_jsonl_stream_resumes(trained, ckpt, loaded, images, tmp_path, monkeypatch):
    model = loaded
    paths, _ = expand_images([images])
    out = tmp_path / "res" / "results.jsonl"
    first = predict_to_jsonl(model, paths[:3], out, num_workers=0)
    assert first == {"written": 3, "errors": 0, "skipped": 0}
    with open(out, "a") as f:
        f.write('{"path": "' + paths[3])  # an interrupted write
    encoded = []
    real = model.backbone.encode_images
    monkeypatch.setattr(model.backbone, "encode_images", lambda x: encoded.append(len(x)) or real(x))
    second = predict_to_jsonl(model, paths, out, num_workers=0)
    assert second["skipped"] == 3 and second["written"] == len(paths) - 3 and second["errors"] == 1
    assert sum(encoded) == len(paths) - 3 - 1  # only the new readable images went through the encoder
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in lines] == paths  # each once, in order, the partial line gone

    # the CLI appends to the same file: only the failed image is tried again (it fails again: exit 1, one record)
    assert main(["predict", str(trained["dir"]), str(images), "--checkpoint", str(ckpt), "--out", str(out)]) == 1
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(again) == len(paths) and sum("error" in r for r in again) == 1 and "error" in again[-1]
