"""CoOp on the Hugging Face backbones (#21.4): the prompt-encoder hook of transformers CLIPModel / SiglipModel against
the backbone's own encode_texts and against a hand-written text tower, gradients, and a short CoOp fit (SigLIP's
logit bias kept where logits are made). Tiny random-init models built and saved in the test (tests/tiny_hf.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_hf import save_tiny_hf

from clip_adapter.backbones import load_backbone
from clip_adapter.backbones.prompt_encoder import HFPromptEncoder
from clip_adapter.methods import FewShotMethod
from clip_adapter.methods.coop import CoOp, CoOpConfig
from clip_adapter.prompts import ClassText, encode_class_texts

NAMES = ["cat", "dog", "red thing", "blue texture"]
KINDS = ["clip", "siglip", "siglip-no-bos"]   # real SigLIP tokenizers add no start token: the context starts at 0

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_coop")
    folders = {"clip": save_tiny_hf(root / "tiny-clip", "clip"),
               "siglip": save_tiny_hf(root / "tiny-siglip", "siglip"),
               "siglip-no-bos": save_tiny_hf(root / "tiny-siglip-nobos", "siglip", bos=False)}
    return {k: load_backbone(f"hf:{f}") for k, f in folders.items()}


def _hand_written_text_tower(bb, emb: torch.Tensor, inputs: dict) -> torch.Tensor:
    """The reference: token embeddings -> + positions -> encoder (CLIP: causal and padding mask; SigLIP: none) ->
    final layer norm -> pooling (CLIP: the first end-of-text token, then text_projection; SigLIP: the last position,
    then its head), written out here from the transformers modules, not through get_text_features."""
    tower, ids = bb.model.text_model, inputs["input_ids"]
    h = tower.embeddings(input_ids=ids, inputs_embeds=emb)
    n, length = ids.shape
    mask = None
    if bb.model.config.model_type == "clip":
        causal = torch.full((length, length), float("-inf")).triu(1)
        pad = (1.0 - inputs["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        mask = causal[None, None] + pad
    h = tower.final_layer_norm(tower.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state)
    if bb.model.config.model_type == "clip":
        eos = (ids == bb.model.config.text_config.eos_token_id).int().argmax(dim=-1)
        return bb.model.text_projection(h[torch.arange(n), eos])
    return tower.head(h[:, -1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("class_specific", [False, True])
def test_phrase_context_equals_encode_texts(hf, kind, class_specific):
    bb = hf[kind]
    enc = bb.prompt_encoder(NAMES, init="a photo of a")
    assert isinstance(enc, HFPromptEncoder) and enc.n_ctx == 4
    assert enc.token_prefix.shape[1] == (0 if kind == "siglip-no-bos" else 1)
    ctx = enc.init_context(class_specific, from_phrase=True)
    assert ctx.shape == ((len(NAMES), 4, enc.width) if class_specific else (4, enc.width))
    with torch.no_grad():
        ours = enc(ctx)
    ref = bb.encode_texts([f"a photo of a {n}." for n in NAMES])
    assert ours.shape == (len(NAMES), bb.embed_dim)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_any_context_matches_the_hand_written_tower_and_only_it_gets_gradients(hf, kind):
    bb = hf[kind]
    enc = bb.prompt_encoder(NAMES, n_ctx=3)
    torch.manual_seed(0)
    ctx = (0.5 * torch.randn(len(NAMES), 3, enc.width)).requires_grad_(True)
    out = enc(ctx)
    start = enc.token_prefix.shape[1]
    with torch.no_grad():
        emb = bb.model.text_model.embeddings.token_embedding(enc.inputs["input_ids"]).clone()
        emb[:, start:start + 3] = ctx
        inputs = {"attention_mask": torch.ones_like(enc.inputs["input_ids"]), **enc.inputs}
        ref = _hand_written_text_tower(bb, emb, inputs)
    assert torch.allclose(out.detach(), ref, atol=1e-5, rtol=0)
    plain = bb.encode_texts([f"X X X {n}." for n in NAMES])
    assert not torch.allclose(out.detach(), plain, atol=1e-3)     # the context really replaced the placeholder
    out.pow(2).sum().backward()
    assert ctx.grad is not None and (ctx.grad.abs().sum(dim=(1, 2)) > 0).all()
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())


def test_prompt_errors_are_one_line(hf):
    with pytest.raises(ValueError, match=r"^A prompt of 14 context tokens plus a class name does not fit the text "
                                         r"encoder's 16 tokens; use fewer context tokens \(n_ctx\)\.$"):
        hf["clip"].prompt_encoder(NAMES, n_ctx=14)


def _task(bb, seed: int = 0):
    """Image features clustered around the prompts of a hidden random context (as tests/test_coop.py does)."""
    enc = bb.prompt_encoder(NAMES, n_ctx=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        target = F.normalize(enc(0.1 * torch.randn(4, enc.width, generator=g)), dim=-1)
    labels = torch.arange(len(NAMES)).repeat_interleave(6)
    feats = 3.0 * (target[labels] + 0.01 * torch.randn(len(labels), target.shape[1], generator=g))
    return feats, labels, encode_class_texts(bb, NAMES, ["a photo of a {}."])


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_coop_fits_on_hf_backbones_and_keeps_siglips_bias(hf, kind, tmp_path):
    bb = hf[kind]
    feats, labels, text = _task(bb)
    assert text.logit_bias == bb.logit_bias
    cfg = CoOpConfig(epochs=10, n_ctx=4, batch_size=8, optimizer="adamw", lr=5e-3, warmup_epochs=0,
                     init="a photo of a")
    m = CoOp(cfg, backbone=bb).fit(feats, labels, text=text)
    loss = m.history_["loss"]   # the tiny random towers give similar class features: the loss floor is high
    assert len(loss) == 10 and loss[-1] < 0.9 * loss[0] and max(loss[-3:]) < min(loss[:3]), loss
    assert m.logit_bias_ == pytest.approx(bb.logit_bias)
    logits = m.logits(feats)
    want = bb.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(m.text_features_, dim=-1).t() + bb.logit_bias
    assert torch.allclose(logits, want, atol=1e-5)                # SigLIP: its own scores, bias included
    assert torch.allclose(m.text_features_, m.prompt_features(), atol=1e-5)
    assert set(m.state_tensors()) == {"ctx", "fixed.text_features"} | ({"fixed.logit_bias"} if kind == "siglip"
                                                                       else set())
    m.save_pretrained(tmp_path / "m", backbone_id=bb.id)
    loaded = FewShotMethod.from_pretrained(tmp_path / "m", backbone=bb)
    assert torch.equal(loaded.logits(feats), logits) and loaded.logit_bias_ == m.logit_bias_


def test_siglip_bias_does_not_change_training(hf):
    """The bias is one constant for all classes: CoOp trained with or without it learns the same context."""
    bb = hf["siglip"]
    feats, labels, text = _task(bb, seed=1)
    cfg = CoOpConfig(epochs=3, n_ctx=4, batch_size=8, optimizer="adamw", lr=2e-2)
    a = CoOp(cfg, backbone=bb).fit(feats, labels, text=text)
    b = CoOp(cfg, backbone=bb).fit(feats, labels, text=ClassText(text.classnames, text.templates, text.features,
                                                                   text.logit_scale, 0.0))
    assert torch.equal(a.ctx_, b.ctx_) and torch.allclose(a.logits(feats) - b.logits(feats),
                                                          torch.full((len(feats), len(NAMES)), bb.logit_bias))
