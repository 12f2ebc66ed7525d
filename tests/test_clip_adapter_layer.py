"""Adapter ablations: insertion after ViT block k (clip_adapter_layer, layers.py) and image/text/both placement."""
from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch

from clip_adapter import FeatureCache, RunSpec, load_dataset, run_one
from clip_adapter.ablations import layer_sweep, placement_specs
from clip_adapter.layers import ActivationCache, ViTTail, activation_shape, block_activations
from clip_adapter.methods import FewShotMethod, NotFittedError
from clip_adapter.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
from clip_adapter.methods.clip_adapter_layer import ClipAdapterLayer, ClipAdapterLayerConfig
from clip_adapter.prompts import ClassText

from conftest import clustered, seeded_backbone


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_backbone():
    return seeded_backbone("tiny-vit")


@pytest.fixture(scope="module")
def vit3(tmp_path_factory):
    """A 3-block tiny ViT (tiny-vit has 2), so 'blocks k+1..L' has a block before and after k=1."""
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    path = tmp_path_factory.mktemp("cfg") / "tiny-vit3-layers.json"
    path.write_text(json.dumps(cfg))
    return seeded_backbone(str(path))


def _text(n=4, dim=32, seed=0, scale=100.0) -> ClassText:
    g = torch.Generator().manual_seed(seed)
    return ClassText([f"class {i}" for i in range(n)], ["a photo of a {}."], torch.randn(n, dim, generator=g), scale)


def _acts(bb, layer, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    return images, block_activations(bb, images, layer), torch.arange(4).repeat(n // 4)


FAST = dict(epochs=3, batch_size=4)


# -- maths --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [1, 2, 3, -1, -3])
def test_tail_after_block_k_reproduces_encode_image(vit3, layer):
    images, acts, _ = _acts(vit3, layer)
    assert acts.shape[1:] == activation_shape(vit3, layer)
    assert acts.shape[1:] == ((17, 64) if layer not in (3, -1) else (32,))
    assert torch.allclose(ViTTail(vit3, layer)(acts), vit3.encode_images(images), atol=1e-5)


@pytest.mark.parametrize("layer", [1, 2])
def test_blocks_after_k_run_exactly_once_per_forward(vit3, layer):
    images, acts, labels = _acts(vit3, layer)
    m = ClipAdapterLayer(ClipAdapterLayerConfig(layer=layer, **FAST), backbone=vit3).fit(acts, labels, text=_text())
    blocks = vit3.model.visual.transformer.resblocks
    calls = [0] * len(blocks)
    hooks = [b.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)) for i, b in enumerate(blocks)]
    try:
        m.logits(acts)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0] * layer + [1] * (len(blocks) - layer)


def test_last_layer_equals_feature_level_clip_adapter(tiny_backbone):
    feats, labels, text = clustered(n_classes=4, per_class=6)  # dim 32 = tiny-vit's embed_dim
    text = ClassText([f"c{i}" for i in range(4)], ["{}"], text, 100.0)
    bb = tiny_backbone
    views = torch.stack([feats + 0.1 * torch.randn(feats.shape) for _ in range(2)])
    cfg = dict(alpha=0.4, epochs=5, reduction=4)
    ours = ClipAdapterLayer(ClipAdapterLayerConfig(layer=-1, **cfg), backbone=bb).fit(feats, labels, text=text, views=views)
    ref = ClipAdapter(ClipAdapterConfig(target="image", **cfg)).fit(feats, labels, text=text, views=views)
    assert torch.equal(ours.logits(feats), ref.logits(feats))  # same init, same loop -> same weights, same logits
    # Same weights loaded into a differently trained adapter -> same logits again.
    other = ClipAdapterLayer(ClipAdapterLayerConfig(layer=-1, alpha=0.4, epochs=1, seed=7), backbone=bb).fit(
        feats, labels, text=text)
    other.adapter_.load_state_dict(ref.image_adapter_.state_dict())
    assert torch.allclose(other.logits(feats), ref.logits(feats), atol=1e-6)
    assert ours.num_trainable_parameters() == ref.num_trainable_parameters() == 2 * 32 * 8


@pytest.mark.parametrize("tokens", ["cls", "all"])
def test_token_options(tiny_backbone, tokens):
    images, acts, labels = _acts(tiny_backbone, 1)
    m = ClipAdapterLayer(ClipAdapterLayerConfig(layer=1, tokens=tokens, alpha=0.5, **FAST), backbone=tiny_backbone)
    m.fit(acts, labels, text=_text())
    x = acts[:2]
    blended = m.adapter_(x) * 0.5 + x * 0.5
    if tokens == "cls":
        blended[:, 1:] = x[:, 1:]
    expected = torch.nn.functional.normalize(ViTTail(tiny_backbone, 1)(blended), dim=-1) @ \
        torch.nn.functional.normalize(m.text_features_, dim=-1).T * 100.0
    assert torch.allclose(m.logits(x), expected, atol=1e-4)


# -- the common checks (test_methods.py skips methods that need a backbone) ---------------------------------------
def test_fit_shapes_save_load_determinism_refit(tiny_backbone, tmp_path):
    images, acts, labels = _acts(tiny_backbone, 1)
    views = torch.stack([acts + 0.01 * torch.randn(acts.shape) for _ in range(2)])
    text = _text()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ClipAdapterLayer(ClipAdapterLayerConfig(layer=1), backbone=tiny_backbone).predict(acts)
    m = ClipAdapterLayer(ClipAdapterLayerConfig(layer=1, **FAST), backbone=tiny_backbone)
    assert m.fit(acts, labels, text=text, views=views) is m
    assert m.logits(acts).shape == (12, 4) and m.predict(acts).dtype == torch.long
    assert torch.allclose(m.predict_proba(acts).sum(-1), torch.ones(12), atol=1e-5)
    assert m.num_trainable_parameters() == 2 * 64 * 16

    m.save_pretrained(tmp_path / "m")
    loaded = FewShotMethod.from_pretrained(tmp_path / "m", backbone=tiny_backbone)
    assert type(loaded) is ClipAdapterLayer and loaded.config == m.config and loaded.layer_ == 1
    assert torch.equal(loaded.logits(acts), m.logits(acts))
    assert torch.equal(loaded.encode_images(images), acts)  # images -> this adapter's inputs
    with pytest.raises(ValueError, match="needs the ViT backbone"):
        FewShotMethod.from_pretrained(tmp_path / "m").logits(acts)

    again = ClipAdapterLayer(ClipAdapterLayerConfig(layer=1, **FAST), backbone=tiny_backbone).fit(
        acts, labels, text=text, views=views)
    assert torch.equal(again.logits(acts), m.logits(acts))
    perm = labels.flip(0)
    m.fit(acts, perm, text=text, views=views)
    fresh = ClipAdapterLayer(ClipAdapterLayerConfig(layer=1, **FAST), backbone=tiny_backbone).fit(
        acts, perm, text=text, views=views)
    assert torch.equal(m.logits(acts), fresh.logits(acts))


def test_learns_generated_task(tiny_backbone, color_dir, tmp_path):
    """layer_sweep on generated colour images: every insertion point learns the task far above chance (0.25)."""
    ds = load_dataset(color_dir)
    text = _text(scale=100.0)  # well separated class directions (random-init text features are near-collinear)
    text = ClassText(ds.classnames, text.templates, text.features, 100.0)
    rows = layer_sweep(ds, tiny_backbone, shots=4, seed=1, overrides={"epochs": 20, "batch_size": 4},
                       grid={"alpha": [0.6]},
                       text=text, root=tmp_path / "act", num_workers=0, output=tmp_path / "out")
    assert [r["layer"] for r in rows] == [1, 2] and all(r["num_blocks"] == 2 for r in rows)
    for r in rows:
        assert r["accuracy"] >= 0.75, r
        assert r["n_train"] == 16 and r["n_test"] == len(ds.split("test")) and r["chosen"] == {"alpha": 0.6}
        assert Path(r["result_file"]) == tmp_path / "out" / ds.name / f"clip_adapter_layer-layer{r['layer']}" / \
            "shots4-seed1.json" and Path(r["result_file"]).is_file()
    assert rows[0]["trainable_parameters"] == 2 * 64 * 16 and rows[1]["trainable_parameters"] == 2 * 32 * 8


# -- activation cache -------------------------------------------------------------------------------------------
def test_activation_cache_reuses_and_matches(tiny_backbone, color_dir, tmp_path):
    items = load_dataset(color_dir).split("train")[:6]
    cache = ActivationCache(tiny_backbone, 1, root=tmp_path, progress=False, num_workers=0)
    a = cache.features(items)
    assert a.shape == (6, 17, 64) and cache.encoded_images == 6
    again = ActivationCache(tiny_backbone, 1, root=tmp_path, progress=False, num_workers=0)
    assert torch.equal(again.features(items), a) and again.encoded_images == 0
    v = cache.views(items, 2)
    assert v.shape == (2, 6, 17, 64) and not torch.equal(v[0], v[1])
    # Layer L stores image features: the same numbers as the feature cache.
    last = ActivationCache(tiny_backbone, -1, root=tmp_path, progress=False, num_workers=0).features(items)
    ref = FeatureCache(tiny_backbone, root=tmp_path / "f", progress=False, num_workers=0).features(items)
    assert torch.allclose(last, ref, atol=1e-6)


# -- errors -----------------------------------------------------------------------------------------------------
def test_errors(tiny_backbone):
    rn = seeded_backbone("tiny-rn")
    with pytest.raises(ValueError, match=r"needs an open_clip ViT image tower; "
                                         r"'open_clip:tiny-rn/random-init[^']*' has ModifiedResNet"):
        ClipAdapterLayer(ClipAdapterLayerConfig(layer=1), backbone=rn).fit(torch.zeros(4, 32), torch.arange(4), text=_text())
    with pytest.raises(ValueError, match=r"Insertion layer must be in 1\.\.2 .* got 3"):
        ViTTail(tiny_backbone, 3)
    _, acts, labels = _acts(tiny_backbone, 1)
    with pytest.raises(ValueError, match=r"at layer 2 expects activations of shape \(n, 32\); got \(12, 17, 64\)"):
        ClipAdapterLayer(ClipAdapterLayerConfig(layer=2), backbone=tiny_backbone).fit(acts, labels, text=_text())
    with pytest.raises(ValueError, match=r"The 'layer' parameter of ClipAdapterLayerConfig must be a non-zero int"):
        ClipAdapterLayerConfig(layer=0)
    with pytest.raises(ValueError, match=r"'tokens' parameter .* one of 'cls', 'all'"):
        ClipAdapterLayerConfig(tokens="patch")
    with pytest.raises(ValueError, match="layer_sweep sets 'layer' itself"):
        layer_sweep(None, tiny_backbone, overrides={"layer": 1})


# -- placement ablation through the experiment runner -------------------------------------------------------------
def test_three_placements_run_through_run_one(tiny_backbone, color_dir, tmp_path):
    ds = load_dataset(color_dir)
    cache = FeatureCache(tiny_backbone, root=tmp_path, progress=False, num_workers=0)
    specs = placement_specs(shots=2, seed=1, alphas=[0.2, 0.6], overrides={"epochs": 3}, n_views=1)
    assert [s.overrides["target"] for s in specs] == ["image", "text", "both"]
    assert specs[1] == RunSpec("clip_adapter", shots=2, seed=1, overrides={"epochs": 3, "target": "text"},
                               grid={"alpha_text": [0.2, 0.6]}, n_views=1, variant="clip_adapter-text")
    rows = {s.overrides["target"]: run_one(ds, tiny_backbone, s, cache=cache) for s in specs}
    d = 32
    for target, n_adapters, n_points in (("image", 1, 2), ("text", 1, 2), ("both", 2, 4)):
        r = rows[target]
        assert r["config"]["target"] == target and len(r["candidates"]) == n_points
        assert r["trainable_parameters"] == n_adapters * 2 * d * (d // 4)
        assert 0.0 <= r["accuracy"] <= 1.0
    assert set(rows["text"]["chosen"]) == {"alpha_text"} and set(rows["both"]["chosen"]) == {"alpha", "alpha_text"}


def test_old_names_still_import_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"layer_adapter\.LayerAdapter is now clip_adapter\.methods\."
                                                r"clip_adapter_layer\.ClipAdapterLayer"):
        from clip_adapter.methods.layer_adapter import LayerAdapter
    with pytest.warns(DeprecationWarning, match="ClipAdapterLayerConfig"):
        from clip_adapter.methods.layer_adapter import LayerAdapterConfig
    assert LayerAdapter is ClipAdapterLayer and LayerAdapterConfig is ClipAdapterLayerConfig
    from clip_adapter.methods import get_method_class
    assert get_method_class("clip_adapter_layer") is ClipAdapterLayer
