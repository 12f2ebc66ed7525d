"""Feature cache: hits re-encode nothing, keys follow what changes features, corrupt files are rebuilt."""
from __future__ import annotations

import torch

from clip_adapter.datasets import load_dataset
from clip_adapter.features import FeatureCache


def _cache(bb, tmp_path, **kw):
    return FeatureCache(bb, root=tmp_path / "fc", num_workers=0, progress=False, **kw)


def test_second_run_encodes_nothing(tiny_backbone, color_dir, tmp_path, monkeypatch):
    items = load_dataset(color_dir).split("test")
    first = _cache(tiny_backbone, tmp_path).features(items)
    assert first.shape == (len(items), tiny_backbone.embed_dim) and first.dtype == torch.float32

    calls = []
    monkeypatch.setattr(tiny_backbone, "encode_images", lambda x: calls.append(x) or torch.zeros(len(x), 32))
    again = _cache(tiny_backbone, tmp_path)
    assert torch.equal(again.features(items), first)
    assert calls == [] and again.encoded_images == 0


def test_overlapping_requests_reuse_per_image(tiny_backbone, color_dir, tmp_path):
    items = load_dataset(color_dir).split("train")
    c = _cache(tiny_backbone, tmp_path)
    part = c.features(items[:5])
    full = c.features(items)
    assert c.encoded_images == len(items)  # the first 5 were not encoded twice
    assert torch.allclose(full[:5], part)
    # A subset, reordered, with a duplicate: served from the cache.
    sub = [items[7], items[2], items[7]]
    out = c.features(sub)
    assert c.encoded_images == len(items)
    assert torch.equal(out[0], out[2]) and torch.allclose(out[1], full[2])


def test_views_are_seeded_distinct_and_cached(tiny_backbone, color_dir, tmp_path):
    items = load_dataset(color_dir).split("train")[:6]
    c = _cache(tiny_backbone, tmp_path)
    v = c.views(items, 3)
    assert v.shape == (3, 6, 32)
    assert not torch.allclose(v[0], v[1])  # different augmentations
    # Same views in a fresh cache elsewhere: view v of an image is reproducible.
    other = FeatureCache(tiny_backbone, root=tmp_path / "other", num_workers=0, progress=False)
    assert torch.allclose(other.views(items, 3), v, atol=1e-5)
    n = c.encoded_images
    assert torch.equal(c.views(items, [2, 0]), v[[2, 0]]) and c.encoded_images == n
    c.views(items, 4)  # only view 3 is new... but encoding is per image for all requested views
    assert c.encoded_images == n + 4 * 6
    # A global RNG draw is not disturbed by the seeded augmentation.
    torch.manual_seed(0)
    a = torch.rand(1)
    torch.manual_seed(0)
    FeatureCache(tiny_backbone, root=tmp_path / "third", num_workers=0, progress=False).views(items[:1], 1)
    assert torch.equal(torch.rand(1), a)


def test_key_changes_with_backbone_and_transform(tiny_backbone, tmp_path):
    from clip_adapter import load_backbone
    rn = load_backbone("tiny-rn", pretrained=None)
    c1, c2 = _cache(tiny_backbone, tmp_path), _cache(rn, tmp_path)
    assert c1.folder("test") != c2.folder("test")
    assert c1.folder("test") != c1.folder("train", 0) != c1.folder("train", 1)


def test_corrupt_shard_is_rebuilt(tiny_backbone, color_dir, tmp_path):
    items = load_dataset(color_dir).split("val")
    c = _cache(tiny_backbone, tmp_path)
    good = c.features(items)
    shard = next(c.folder("test").glob("shard-*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    fresh = _cache(tiny_backbone, tmp_path)
    out = fresh.features(items)
    assert fresh.encoded_images == len(items)
    assert torch.allclose(out, good, atol=1e-5)
    shards = list(c.folder("test").glob("shard-*.safetensors"))
    assert len(shards) == 1  # the broken one was replaced (possibly under the same name), not kept beside
    from safetensors.torch import load_file
    assert load_file(str(shards[0]))["features"].shape == good.shape


def test_changed_file_is_re_encoded(tiny_backbone, color_dir, tmp_path):
    import shutil
    src = load_dataset(color_dir).split("val")[0].path
    img = tmp_path / "img.png"
    shutil.copy(src, img)
    c = _cache(tiny_backbone, tmp_path)
    c.features([str(img)])
    from PIL import Image
    Image.new("RGB", (50, 50), (1, 2, 3)).save(img)  # different size on disk -> different key
    c.features([str(img)])
    assert c.encoded_images == 2


def test_unreadable_image_names_the_file(tiny_backbone, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    import pytest
    with pytest.raises(OSError, match=r"Image .*bad.jpg could not be read"):
        _cache(tiny_backbone, tmp_path).features([str(bad)])
    assert not list((tmp_path / "fc").rglob("*.safetensors"))  # nothing half-written
