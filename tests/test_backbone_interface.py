"""One interface suite over every registered backbone (timm's test_models style): a factory registered without a
case here fails :func:`test_every_registered_backbone_has_a_case`, and each case gets every check.

Cases: open_clip (the tiny random-init ViT), lite (offline weights), and the Hugging Face family with each of its
model types (tiny random-init CLIPModel / SiglipModel built and saved in the test, loaded as ``hf:PATH``).
"""
from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image
from tiny_hf import save_tiny_hf

from clip_adapter.backbones import BackboneLoadError, BackboneSpec, load_backbone
from clip_adapter.backbones import base, hf

CASES = ["open_clip", "lite", "hf-clip", "hf-siglip"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_models")
    return {kind: save_tiny_hf(root / f"tiny-{kind}", kind) for kind in ("clip", "siglip")}


@pytest.fixture(scope="module")
def hf_backbones(hf_folders):
    return {f"hf-{kind}": load_backbone(f"hf:{folder}") for kind, folder in hf_folders.items()}


@pytest.fixture(params=CASES)
def backbone(request, hf_backbones, tiny_backbone):
    if request.param == "open_clip":
        return tiny_backbone
    if request.param == "lite":
        return request.getfixturevalue("lite_backbone")
    return hf_backbones[request.param]


def test_every_registered_backbone_has_a_case():
    families = {name.split("-")[0] for name in CASES}
    assert set(base._REGISTRY) == families, "a registered backbone has no case in CASES"
    assert {f"hf-{t}" for t in hf.model_types()} <= set(CASES), "a Hugging Face model type has no case in CASES"


# -- the contract --------------------------------------------------------------------------------------------------
def test_id_is_built_and_parsed_by_the_spec(backbone):
    spec = BackboneSpec.parse(backbone.id, backbone.embed_dim)
    assert spec.id == backbone.id and backbone.spec.id == backbone.id and backbone.spec.embed_dim == backbone.embed_dim


def test_transforms_give_normalised_tensors(backbone):
    img = Image.new("RGB", (50, 40), (10, 200, 30))
    test, train = backbone.test_transform(img), backbone.train_transform(img)
    assert test.ndim == 3 and test.shape[0] == 3 and test.dtype == torch.float32 and train.shape == test.shape
    assert backbone.transform_id("test") != backbone.transform_id("train")


def test_features_are_raw_float32_on_cpu_and_deterministic(backbone):
    img = backbone.test_transform(Image.new("RGB", (48, 48), (120, 30, 200)))
    x = torch.stack([img, img.flip(-1)])
    f = backbone.encode_images(x)
    assert f.shape == (2, backbone.embed_dim) and f.dtype == torch.float32 and f.device.type == "cpu"
    assert torch.isfinite(f).all() and torch.equal(f, backbone.encode_images(x))
    t = backbone.encode_texts(["a photo of a cat.", "a photo of a dog."])
    assert t.shape == (2, backbone.embed_dim) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert torch.isfinite(t).all() and not torch.allclose(t[0], t[1])


def test_encoders_are_frozen_and_the_scale_is_positive(backbone):
    modules = [m for m in vars(backbone).values() if isinstance(m, torch.nn.Module)]
    assert modules and all(not p.requires_grad for m in modules for p in m.parameters())
    assert backbone.logit_scale > 0 and isinstance(backbone.logit_bias, float)


def has_prompt_encoder(backbone) -> bool:
    """Whether the backbone's class implements the prompt-encoder hook (the base class only says why not)."""
    return type(backbone).prompt_encoder is not base.Backbone.prompt_encoder


def test_open_clip_and_hf_backbones_have_the_prompt_encoder_hook(hf_backbones, tiny_backbone):
    assert has_prompt_encoder(tiny_backbone) and all(has_prompt_encoder(b) for b in hf_backbones.values())


@pytest.mark.parametrize("class_specific", [False, True])
def test_prompt_encoder_hook_matches_the_text_encoder_or_says_why_not(backbone, class_specific):
    names = ["cat", "dog"]
    if not has_prompt_encoder(backbone):  # backbones without a token-level text encoder: one line, naming it
        with pytest.raises(ValueError) as e:
            backbone.prompt_encoder(names, init="a photo of a")
        assert str(e.value).startswith("CoOp needs a backbone with a token-level text encoder; " + repr(backbone.id))
        assert "\n" not in str(e.value)
        return
    enc = backbone.prompt_encoder(names, init="a photo of a")
    assert enc.n_ctx >= 1 and enc.classnames == names
    ctx = enc.init_context(class_specific=class_specific, from_phrase=True).requires_grad_(True)
    out = enc(ctx)
    want = backbone.encode_texts([TEMPLATE.format(c) for c in names])
    assert out.shape == want.shape and torch.allclose(out.detach().float().cpu(), want, atol=2e-4, rtol=1e-3)
    out.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0       # the context is what CoOp trains
    other = enc(enc.init_context(class_specific=class_specific, std=0.5)).detach().float().cpu()
    assert not torch.allclose(other, want, atol=1e-3)               # the context is an input, not a constant


# -- the Hugging Face family ------------------------------------------------------------------------------------
def test_hf_ids_follow_the_weights_not_the_folder(hf_folders, hf_backbones, tmp_path):
    a = hf_backbones["hf-clip"]
    copy = load_backbone(f"hf:{shutil.copytree(hf_folders['clip'], tmp_path / 'tiny-clip')}")
    other = load_backbone(f"hf:{save_tiny_hf(tmp_path / 'again' / 'tiny-clip', 'clip', seed=1)}")
    assert a.id.startswith("hf:tiny-clip/sha256:") and copy.id == a.id and other.id != a.id
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(copy.encode_images(x), a.encode_images(x))


def test_hf_features_are_the_models_projected_embeddings(hf_folders, hf_backbones):
    import transformers
    bb = hf_backbones["hf-clip"]
    model = transformers.CLIPModel.from_pretrained(hf_folders["clip"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_folders["clip"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x, **tok(["a photo of a cat.", "dog"], padding=True, return_tensors="pt"))
    assert torch.allclose(torch.nn.functional.normalize(bb.encode_images(x), dim=-1), out.image_embeds, atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(bb.encode_texts(["a photo of a cat.", "dog"]), dim=-1),
                          out.text_embeds, atol=1e-5)
    assert bb.logit_scale == pytest.approx(float(model.logit_scale.detach().exp())) and bb.logit_bias == 0.0


def test_siglip_zero_shot_logits_are_siglips_own_with_its_bias(hf_folders, hf_backbones, tmp_path):
    import transformers

    from clip_adapter.methods import FewShotMethod, get_method
    from clip_adapter.prompts import encode_class_texts
    bb = hf_backbones["hf-siglip"]
    assert bb.logit_bias == pytest.approx(-10.0) and bb.logit_scale == pytest.approx(float(torch.tensor(2.3).exp()))
    names = ["cat", "dog", "thing"]
    text = encode_class_texts(bb, names, [TEMPLATE])
    assert text.logit_bias == bb.logit_bias
    x = torch.randn(4, 3, 32, 32)
    zs = get_method("zero_shot").fit(text=text)
    model = transformers.SiglipModel.from_pretrained(hf_folders["siglip"]).eval()
    ids = bb.tokenize([TEMPLATE.format(c) for c in names])["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=x).logits_per_image
    got = zs.logits(bb.encode_images(x))
    assert torch.allclose(got, want, atol=1e-4)
    zs.save_pretrained(tmp_path / "zs", backbone_id=bb.id)          # the bias survives saving
    assert torch.allclose(FewShotMethod.from_pretrained(tmp_path / "zs").logits(bb.encode_images(x)), want, atol=1e-4)


def test_hf_errors_are_one_line(hf_folders, tmp_path):
    cases = [(str(tmp_path / "nothing" / "here"), r"Hugging Face model .* not found: expected a folder"),
             (str(tmp_path), r"Could not read the Hugging Face config of")]
    for path, msg in cases:
        with pytest.raises(BackboneLoadError, match=msg) as e:
            load_backbone(f"hf:{path}")
        assert "\n" not in str(e.value)
    with pytest.raises(BackboneLoadError, match=r"drop --checkpoint"):
        load_backbone(f"hf:{hf_folders['clip']}", checkpoint="x.pt")


def test_cli_run_with_an_hf_backbone(hf_folders, color_dir, tmp_path, capsys):
    import json

    from clip_adapter.cli import main
    rc = main(["run", "--data", str(color_dir), "--method", "linear_probe", "--shots", "2", "--backbone",
               f"hf:{hf_folders['siglip']}", "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "c"),
               "--workers", "0", "--no-progress"])
    assert rc == 0
    rec = json.loads((tmp_path / "runs" / "colors" / "linear_probe" / "shots2-seed1.json").read_text())
    assert rec["backbone"].startswith("hf:tiny-siglip/sha256:") and rec["backbone_detail"]["logit_bias"] == -10.0
    assert rec["n_train"] == 8 and 0 <= rec["accuracy"] <= 1
