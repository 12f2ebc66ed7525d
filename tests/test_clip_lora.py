"""CLIP-LoRA: LoRA (through peft) on the attention projections of the tiny random-init open_clip ViT, on the CPU."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from clip_adapter import AdaptedClassifier, RunSpec, load_backbone, load_dataset, run_one
from clip_adapter.imageset import ImageSet
from clip_adapter.methods import FewShotMethod, get_method
from clip_adapter.methods.clip_lora import (ClipLora, ClipLoraConfig, SplitAttention, check_adaptable, lora_model,
                                           lora_state)
from clip_adapter.prompts import encode_class_texts

from conftest import make_color_images, seeded_backbone

# A schedule that learns the colour toy in a few dozen steps (the paper's lr 2e-4 x 500N iterations is for CLIP).
FAST = {"iters": 24, "batch_size": 8, "lr": 2e-2}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def toy(tiny_backbone, tmp_path_factory):
    """16 noisy solid-colour images (4 classes), their labels, and the zero-shot class texts."""
    root = make_color_images(tmp_path_factory.mktemp("lora") / "colors", per_class=4, size=32)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    names = sorted({p.split("/")[-2] for p in paths})
    labels = torch.tensor([names.index(p.split("/")[-2]) for p in paths])
    text = encode_class_texts(tiny_backbone, names, ["a photo of a {}."])
    return ImageSet.of(paths, tiny_backbone), labels, text


@pytest.fixture(scope="module")
def fitted(tiny_backbone, toy):
    images, labels, text = toy
    return ClipLora(ClipLoraConfig(**FAST), backbone=tiny_backbone).fit(images, labels, text=text)


def _lora_modules(model: nn.Module) -> list[str]:
    return sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A"))


def test_split_attention_equals_multihead_attention():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        split = SplitAttention(mha)
        x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
        causal = torch.full((5, 5), float("-inf")).triu(1)
        pad = torch.tensor([[False] * 5, [False] * 4 + [True], [False] * 3 + [True] * 2])
        for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": causal.isinf()}, {"key_padding_mask": pad}):
            ref = mha(x, x, x, need_weights=False, **kwargs)[0]
            out, weights = split(x, x, x, need_weights=False, **kwargs)
            assert weights is None
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_lora_only_where_declared(tiny_backbone):
    model, targets = lora_model(tiny_backbone, ClipLoraConfig())
    # Paper default: q, k, v of every block of both towers (tiny-vit: 2 + 2 blocks).
    expected = sorted(f"{tower}transformer.resblocks.{b}.attn.{p}_proj"
                      for tower in ("visual.", "") for b in (0, 1) for p in "qkv")
    assert sorted(targets) == expected and _lora_modules(model) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"{t}.lora_{ab}.default.weight" for t in expected for ab in "AB"}
    # rank 2, alpha 1, rank-stabilised scale 1/sqrt(2), dropout 0.25 (the authors' values)
    q = model.visual.transformer.resblocks[0].attn.q_proj
    assert q.lora_A["default"].weight.shape == (2, 64) and q.lora_B["default"].weight.shape == (64, 2)
    assert q.scaling["default"] == pytest.approx(1 / 2 ** 0.5) and q.lora_dropout["default"].p == 0.25
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 12 * 2 * 2 * 64

    model, targets = lora_model(tiny_backbone, ClipLoraConfig(params="vo", encoder="vision"))
    assert _lora_modules(model) == sorted(targets) == sorted(f"visual.transformer.resblocks.{b}.attn.{p}"
                                                             for b in (0, 1) for p in ("v_proj", "out_proj"))
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in model.transformer.resblocks)  # text untouched
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in tiny_backbone.model.visual.transformer.resblocks)


def test_zero_init_b_gives_the_frozen_model(tiny_backbone, toy):
    """B = 0 at init: the adapted towers (even in training mode, with LoRA dropout) are CLIP's own, so the first
    training logits are zero-shot CLIP's."""
    images, _, _ = toy
    model, _ = lora_model(tiny_backbone, ClipLoraConfig())
    x = next(images.batches(16))
    tokens = tiny_backbone.tokenizer(["a photo of a red.", "a photo of a blue."])
    with torch.no_grad():
        for mode in (True, False):
            model.train(mode)
            torch.testing.assert_close(model.encode_image(x), tiny_backbone.model.encode_image(x), rtol=1e-5,
                                       atol=1e-5)
            torch.testing.assert_close(model.encode_text(tokens), tiny_backbone.model.encode_text(tokens), rtol=1e-5,
                                       atol=1e-5)


def test_adapted_projection_is_the_published_formula(tiny_backbone):
    """h = W x + b + (alpha / sqrt(r)) B A x, computed by hand from the weights (evaluation mode: no dropout)."""
    cfg = ClipLoraConfig(r=3, alpha=2.0)
    model, _ = lora_model(tiny_backbone, cfg)
    v = model.eval().transformer.resblocks[1].attn.v_proj
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 64, generator=g), torch.randn(64, 3, generator=g)
    with torch.no_grad():
        v.lora_A["default"].weight.copy_(a)
        v.lora_B["default"].weight.copy_(b)
        x = torch.randn(5, 64, generator=g)
        ref = tiny_backbone.model.transformer.resblocks[1].attn
        w, bias = ref.in_proj_weight[128:], ref.in_proj_bias[128:]
        torch.testing.assert_close(v(x), x @ w.T + bias + (2.0 / 3 ** 0.5) * x @ a.T @ b.T, rtol=1e-5, atol=1e-5)


def test_first_step_is_adamw_from_zero_b(tiny_backbone, toy):
    """The first AdamW step by hand (lr 2e-4, weight decay 1e-2, the paper's): B = 0 gives A no gradient, so A only
    decays, A1 = (1 - lr wd) A0; each entry of B moves by lr g / (|g| + eps) (Adam's first step), i.e. by lr
    against its gradient's sign unless the gradient is as small as eps."""
    images, labels, text = toy
    cfg = ClipLoraConfig(iters=1, batch_size=16)
    a0 = {k: v for k, v in lora_state(lora_model(tiny_backbone, cfg)[0]).items() if "lora_A" in k}
    m = ClipLora(cfg, backbone=tiny_backbone).fit(images, labels, text=text)
    lr, wd = 2e-4, 1e-2
    for k, v in a0.items():
        torch.testing.assert_close(m.lora_[k], (1 - lr * wd) * v, rtol=1e-6, atol=1e-9)
    b1 = torch.cat([v.flatten() for k, v in m.lora_.items() if "lora_B" in k])
    moved = b1[b1 != 0]
    assert moved.numel() > 0.9 * b1.numel()
    assert bool((moved.abs() <= lr * (1 + 1e-5)).all())  # never more than lr; less only where |g| ~ eps = 1e-8
    assert float(((moved.abs() - lr).abs() < 1e-3 * lr).float().mean()) > 0.95


def test_only_lora_trains_and_the_backbone_is_untouched(tiny_backbone, toy):
    images, labels, text = toy
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    m = ClipLora(ClipLoraConfig(iters=3, batch_size=8, lr=1e-2), backbone=tiny_backbone).fit(images, labels, text=text)
    after = tiny_backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical shared backbone
    # The adapted copy's base weights are the backbone's (the split q/k/v are slices of the fused in_proj_weight).
    blk, ref = m.model_.visual.transformer.resblocks[1].attn, tiny_backbone.model.visual.transformer.resblocks[1].attn
    d = ref.embed_dim
    for i, p in enumerate("qkv"):
        assert torch.equal(getattr(blk, f"{p}_proj").base_layer.weight, ref.in_proj_weight[i * d:(i + 1) * d])
    assert torch.equal(blk.out_proj.weight, ref.out_proj.weight)
    # Only the LoRA tensors changed: B left zero; the saved tensors are exactly those.
    assert all(m.lora_[k].abs().sum() > 0 for k in m.lora_ if "lora_B" in k)
    assert set(m.state_tensors()) == {"lora." + k for k in m.lora_} | {"fixed.text_features"}
    assert m.num_trainable_parameters() == 12 * 2 * 2 * 64
    assert m.iters_ == 3 and m.history_["steps"] == 3


def test_learns_a_separable_toy(fitted, toy):
    images, labels, _ = toy
    loss = fitted.history_["loss"]
    assert sum(loss[-5:]) / 5 < 0.5 * sum(loss[:5]) / 5
    assert (fitted.predict(images) == labels).float().mean() >= 0.9
    # The paper's schedule: 500 iterations per shot unless fixed.
    assert ClipLoraConfig().iters_per_shot == 500 and ClipLoraConfig().lr == 2e-4 and ClipLoraConfig().batch_size == 32


def test_logits_inputs_agree(fitted, toy):
    images, _, _ = toy
    x = torch.cat(list(images.batches(5)))
    ref = fitted.logits(images)
    torch.testing.assert_close(fitted.logits(x), ref)
    torch.testing.assert_close(fitted.logits(fitted.encode_images(x)), ref)
    assert fitted.predict_proba(images).sum(1).allclose(torch.ones(len(images)))


def test_fit_and_predict_leave_the_global_rng_alone(tiny_backbone, toy):
    images, labels, text = toy
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ClipLora(ClipLoraConfig(iters=2, batch_size=8), backbone=tiny_backbone).fit(images, labels, text=text).predict(
        images)
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_same_model(tiny_backbone, toy):
    images, labels, text = toy
    cfg = ClipLoraConfig(iters=4, batch_size=8, lr=1e-2, seed=3)

    def fit(c):
        return ClipLora(c, backbone=tiny_backbone).fit(images, labels, text=text)

    a, b, other = fit(cfg), fit(cfg), fit(ClipLoraConfig(iters=4, batch_size=8, lr=1e-2, seed=4))
    assert a.history_["loss"] == b.history_["loss"]
    assert all(torch.equal(a.lora_[k], b.lora_[k]) for k in a.lora_)
    assert not all(torch.equal(a.lora_[k], other.lora_[k]) for k in a.lora_)


def test_save_load_round_trip(fitted, tiny_backbone, toy, tmp_path):
    images, _, _ = toy
    fitted.save_pretrained(tmp_path / "m")
    saved = load_file(str(tmp_path / "m" / "adapter_model.safetensors"))
    assert set(saved) == set(fitted.state_tensors())
    loaded = FewShotMethod.from_pretrained(tmp_path / "m", backbone=tiny_backbone)
    assert isinstance(loaded, ClipLora) and loaded.config == fitted.config
    assert torch.equal(loaded.logits(images), fitted.logits(images))
    # Without the backbone it still scores adapted features, but cannot encode images.
    bare = FewShotMethod.from_pretrained(tmp_path / "m")
    feats = fitted.encode_images(next(images.batches(4)))
    assert torch.equal(bare.logits(feats), fitted.logits(feats))
    with pytest.raises(ValueError, match=r"^clip_lora needs the backbone it adapted to encode images"):
        bare.logits(images)


def test_saved_model_predicts_on_image_files(tiny_backbone, toy, tmp_path):
    """A CLIP-LoRA model saved by AdaptedClassifier rebuilds its backbone from the recorded recipe (a local
    checkpoint here) and predicts on image paths like every other model."""
    images, labels, text = toy
    ckpt = tmp_path / "tiny-vit.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(ckpt))
    bb = load_backbone("tiny-vit", checkpoint=str(ckpt))
    method = ClipLora(ClipLoraConfig(iters=4, batch_size=8), backbone=bb).fit(images, labels, text=text)
    AdaptedClassifier(bb, method).save_pretrained(tmp_path / "model", dataset="colors")
    meta = json.loads((tmp_path / "model" / "adapter_config.json").read_text())
    assert meta["method"] == "clip_lora" and meta["backbone"]["checkpoint_sha256"]
    model = AdaptedClassifier.from_pretrained(tmp_path / "model", checkpoint=ckpt)
    paths = list(images.paths)
    assert model.predict(paths) == [method.classes_[i] for i in method.predict(images).tolist()]
    torch.testing.assert_close(model.predict_proba(paths), method.predict_proba(images))
    recs = list(model.predict_stream(paths[:3], top_k=2))
    assert [r["prediction"] for r in recs] == model.predict(paths[:3])


def test_run_one_trains_on_images(tiny_backbone, color_dir, tmp_path):
    """The protocol hands an image-trained method ImageSets (inputs = "images"), whatever cache it was given."""
    ds = load_dataset(color_dir)
    rec = run_one(ds, tiny_backbone, RunSpec("clip_lora", shots=2, overrides={"iters": 2, "batch_size": 4}),
                  save_model=tmp_path / "m")
    assert rec["method"] == "clip_lora" and rec["n_train"] == 8 and rec["n_views"] == 0
    assert rec["trainable_parameters"] == 12 * 2 * 2 * 64 and 0 <= rec["accuracy"] <= 1
    assert rec["candidates"] == [{"val_accuracy": rec["val_accuracy"]}] and rec["grid"] == {}
    assert rec["hp_selection"] == "none"  # the authors' fixed schedule: nothing is chosen on validation
    loaded = FewShotMethod.from_pretrained(tmp_path / "m", backbone=tiny_backbone)
    assert loaded.config.iters == 2
    # Evaluating the saved model scores images through its adapted encoder (never the backbone's cached features).
    model = AdaptedClassifier.from_pretrained(tmp_path / "m", backbone=tiny_backbone)
    assert model.evaluate(ds)["accuracy"] == rec["accuracy"]


def test_backbones_it_cannot_adapt(lite_backbone):
    with pytest.raises(ValueError, match=r"^clip_lora needs an open_clip backbone whose vision and text towers are "
                                         r"transformers .*'lite:[^']*' has no such tower \(use a ViT CLIP"):
        get_method("clip_lora", backbone=lite_backbone).fit(
            ImageSet(("a.png",), lite_backbone.test_transform, lite_backbone.train_transform), torch.tensor([0]),
            text=encode_class_texts(lite_backbone, ["a"], ["a photo of a {}."]))


def test_resnet_tower_is_refused_but_its_text_tower_adapts():
    rn = seeded_backbone("tiny-rn")
    with pytest.raises(ValueError, match=r"^clip_lora needs an open_clip backbone whose vision tower is a transformer "
                                         r".* has attention only in its text tower .*or encoder='text'\)\.$"):
        check_adaptable(rn, "both")
    check_adaptable(rn, "text")
    model, targets = lora_model(rn, ClipLoraConfig(encoder="text"))
    assert targets and all(t.startswith("transformer.resblocks.") for t in targets)


def test_bad_inputs_are_one_line_errors(tiny_backbone, toy):
    images, labels, text = toy
    m = ClipLora(ClipLoraConfig(**FAST), backbone=tiny_backbone)
    with pytest.raises(ValueError, match=r"^clip_lora trains on images, not features: pass an ImageSet .*got "
                                         r"Tensor\(16, 32\)\.$"):
        m.fit(torch.zeros(16, 32), labels, text=text)
    with pytest.raises(ValueError, match=r"^clip_lora needs the backbone it adapts"):
        ClipLora(ClipLoraConfig(**FAST)).fit(images, labels, text=text)
    with pytest.raises(ValueError, match=r"^The 'params' parameter of ClipLoraConfig must be a non-empty string of "
                                         r"distinct letters among 'q', 'k', 'v', 'o'\. Got 'qx' instead\.$"):
        ClipLoraConfig(params="qx")
    with pytest.raises(ValueError, match=r"^The 'template' parameter of ClipLoraConfig must be a string with one "
                                         r"'\{\}'\. Got 'a photo' instead\.$"):
        ClipLoraConfig(template="a photo")
