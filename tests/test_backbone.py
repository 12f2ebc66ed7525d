"""open_clip backbone: loading, frozen encoders, raw features, transforms, clear errors."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from clip_adapter.backbones import BackboneLoadError, load_backbone


def test_tiny_backbone_interface(tiny_backbone):
    bb = tiny_backbone
    assert bb.id.startswith("open_clip:tiny-vit/random-init-") and bb.embed_dim == 32
    assert all(not p.requires_grad for p in bb.model.parameters()) and not bb.model.training
    img = bb.test_transform(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert img.shape == (3, 32, 32)
    f = bb.encode_images(img[None])
    assert f.shape == (1, 32) and f.dtype == torch.float32 and f.device.type == "cpu"
    assert not torch.allclose(f.norm(dim=-1), torch.ones(1))  # raw, not normalised
    t = bb.encode_texts(["a photo of a cat.", "a photo of a dog."])
    assert t.shape == (2, 32)
    assert bb.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)
    assert "RandomResizedCrop" in bb.transform_id("train") and "bicubic" in bb.transform_id("test")


def test_checkpoint_file_roundtrip(tiny_backbone, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), ckpt)
    bb = load_backbone("tiny-vit", checkpoint=str(ckpt))
    assert bb.id.startswith("open_clip:tiny-vit/sha256:")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(bb.encode_images(x), tiny_backbone.encode_images(x), atol=1e-6)


def test_config_json_path(tmp_path):
    from importlib.resources import files
    src = files("clip_adapter") / "backbones" / "model_configs" / "tiny-rn.json"
    cfg = tmp_path / "my-tiny.json"
    cfg.write_text(src.read_text())
    bb = load_backbone(str(cfg))
    assert bb.id.startswith("open_clip:my-tiny/random-init-") and bb.embed_dim == 32


def test_errors():
    with pytest.raises(BackboneLoadError, match=r"Unknown backbone 'RN5O'.*did you mean 'RN50'"):
        load_backbone("RN5O")
    with pytest.raises(BackboneLoadError, match=r"Unknown pretrained tag 'opnai' for open_clip model 'RN50'. "
                                                r"Available: .*openai"):
        load_backbone("RN50", pretrained="opnai")
    with pytest.raises(BackboneLoadError, match="Checkpoint file missing.pt not found"):
        load_backbone("tiny-vit", checkpoint="missing.pt")


def test_offline_download_error_says_what_to_do(monkeypatch):
    import open_clip

    def fail(*a, **k):
        raise RuntimeError("Failed to download weights for tag 'openai': no connection\nmore detail")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", fail)
    with pytest.raises(BackboneLoadError) as e:
        load_backbone("RN50", pretrained="openai")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'RN50'" in msg and "--checkpoint FILE" in msg and "--backbone lite" in msg


def test_random_inits_get_distinct_ids():
    import torch as t
    t.manual_seed(0)
    a = load_backbone("tiny-vit", pretrained=None)
    t.manual_seed(1)
    b = load_backbone("tiny-vit", pretrained=None)
    t.manual_seed(0)
    c = load_backbone("tiny-vit", pretrained=None)
    assert a.id != b.id and a.id == c.id  # feature caches of two random models never mix
