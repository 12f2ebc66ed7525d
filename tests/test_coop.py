"""CoOp: prompt encoder maths, gradient flow, the common method checks (with a real tiny backbone), learning."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip_adapter.methods import FewShotMethod, NotFittedError, get_method
from clip_adapter.methods.coop import CoOp, CoOpConfig, PromptEncoder, epochs_for_shots
from clip_adapter.methods.zero_shot import ZeroShot
from clip_adapter.prompts import ClassText, encode_class_texts

NAMES = ["cat", "dog", "sea_lion", "tree", "boat"]

from conftest import seeded_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def backbone(request):
    return seeded_backbone(request.param)


@pytest.fixture(scope="module")
def tiny_backbone():
    return seeded_backbone("tiny-vit")


@pytest.fixture(scope="module")
def task(tiny_backbone):
    """Image features clustered around the tiny text encoder's features of prompts with a hidden context."""
    return _task(tiny_backbone)


def _task(bb, seed: int = 0):
    enc = PromptEncoder(bb, NAMES, n_ctx=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        target = F.normalize(enc(0.02 * torch.randn(4, enc.width, generator=g)), dim=-1)
    d = torch.cdist(target, target)
    noise = 0.3 * float(d[d > 0].min()) / target.shape[1] ** 0.5
    labels = torch.arange(len(NAMES)).repeat_interleave(8)
    feats = 3.0 * (target[labels] + noise * torch.randn(len(labels), target.shape[1], generator=g))
    te_labels = torch.arange(len(NAMES)).repeat_interleave(20)
    te = 3.0 * (target[te_labels] + noise * torch.randn(len(te_labels), target.shape[1], generator=g))
    views = torch.stack([feats + 0.01 * torch.randn(feats.shape, generator=g) for _ in range(2)])
    text = encode_class_texts(bb, NAMES, ["a photo of a {}."])
    return feats, labels, views, ClassText(text.classnames, text.templates, text.features, 100.0), te, te_labels


FAST = dict(epochs=3, n_ctx=4, batch_size=8, optimizer="adamw", lr=1e-3)


# -- maths ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("class_specific", [False, True])
def test_phrase_context_equals_plain_prompt(backbone, class_specific):
    enc = PromptEncoder(backbone, NAMES, init="a photo of a")
    assert enc.n_ctx == 4
    ctx = enc.init_context(class_specific, from_phrase=True)
    assert ctx.shape == ((len(NAMES), 4, enc.width) if class_specific else (4, enc.width))
    with torch.no_grad():
        ours = enc(ctx)
    ref = backbone.encode_texts([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)


def test_truncated_sequence_is_exact(backbone):
    """Dropping the tokens after EOT (causal mask) changes nothing: compare with the full 77-token pass."""
    from clip_adapter.methods.coop import encode_token_embeddings, text_tower
    enc = PromptEncoder(backbone, NAMES, n_ctx=16)
    assert enc.tokens.shape[1] < 77
    tower = text_tower(backbone)
    full = backbone.tokenizer([f"{' '.join(['X'] * 16)} {n.replace('_', ' ')}." for n in NAMES])
    ctx = enc.init_context(False)
    with torch.no_grad():
        emb = tower.token_embedding(full)
        emb[:, 1:17] = ctx
        ref = encode_token_embeddings(tower, emb, full)
        assert torch.allclose(enc(ctx), ref, atol=1e-5, rtol=1e-5)


def _assert_only_context_gets_gradients(enc, frozen: torch.nn.Module) -> None:
    ctx = torch.nn.Parameter(enc.init_context(False))
    enc(ctx).pow(2).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


def test_only_context_receives_gradients(backbone):
    _assert_only_context_gets_gradients(PromptEncoder(backbone, NAMES, n_ctx=4), backbone.model)


def test_fit_trains_context_only(tiny_backbone, task):
    feats, labels, views, text, _, _ = task
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    m = CoOp(CoOpConfig(**FAST), backbone=tiny_backbone).fit(feats, labels, text=text)
    after = tiny_backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(m.state_tensors()) == {"ctx", "fixed.text_features"}
    assert m.num_trainable_parameters() == 4 * 64
    with torch.random.fork_rng():
        torch.manual_seed(m.config.seed)
        start = PromptEncoder(tiny_backbone, NAMES, n_ctx=4).init_context(False)
    assert not torch.allclose(m.ctx_, start)  # the context moved


def test_epochs_by_shots(tiny_backbone, task):
    assert [epochs_for_shots(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    feats, labels, _, text, _, _ = task
    one_shot = torch.arange(len(NAMES)) * 8
    m = CoOp(CoOpConfig(n_ctx=2, batch_size=32), backbone=tiny_backbone).fit(
        feats[one_shot], labels[one_shot], text=text)
    assert m.shots_ == 1 and m.epochs_ == 50 and len(m.history_["loss"]) == 50
    assert m.config.epochs is None


# -- the common checks (test_methods.py skips methods that need a backbone) ---------------------------------------
def test_fit_shapes_proba_and_not_fitted(tiny_backbone, task):
    feats, labels, views, text, te, _ = task
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        CoOp(CoOpConfig(**FAST), backbone=tiny_backbone).predict(te)
    m = CoOp(CoOpConfig(**FAST), backbone=tiny_backbone)
    assert m.fit(feats, labels, text=text, views=views) is m
    assert m.logits(te).shape == (len(te), len(NAMES))
    assert torch.allclose(m.predict_proba(te).sum(-1), torch.ones(len(te)), atol=1e-5)
    assert m.predict(te).dtype == torch.long


@pytest.mark.parametrize("class_specific", [False, True])
def test_save_load_identical(tiny_backbone, task, tmp_path, class_specific):
    feats, labels, views, text, te, _ = task
    m = get_method("coop", backbone=tiny_backbone, class_specific=class_specific, **FAST).fit(
        feats, labels, text=text, views=views)
    m.save_pretrained(tmp_path / "m")
    for bb in (tiny_backbone, None):
        loaded = FewShotMethod.from_pretrained(tmp_path / "m", backbone=bb)
        assert type(loaded) is CoOp and loaded.config == m.config and loaded.classes_ == m.classes_
        assert torch.equal(loaded.ctx_, m.ctx_)
        assert torch.equal(loaded.logits(te), m.logits(te))
    # The context alone reproduces the class text features through the backbone.
    assert torch.allclose(loaded.text_features_, m.prompt_features(), atol=1e-6)


def test_load_warns_when_context_does_not_reproduce(tiny_backbone, task, tmp_path):
    feats, labels, _, text, _, _ = task
    m = CoOp(CoOpConfig(**FAST), backbone=tiny_backbone).fit(feats, labels, text=text)
    m.text_features_ = m.text_features_ + 1.0
    m.save_pretrained(tmp_path / "m")
    with pytest.warns(UserWarning, match="differs from the saved class text features"):
        FewShotMethod.from_pretrained(tmp_path / "m", backbone=tiny_backbone)


def test_deterministic_and_refit_forgets(tiny_backbone, task):
    feats, labels, views, text, te, _ = task
    a = CoOp(CoOpConfig(**FAST), backbone=tiny_backbone).fit(feats, labels, text=text, views=views)
    b = CoOp(CoOpConfig(**FAST), backbone=tiny_backbone).fit(feats, labels, text=text, views=views)
    assert torch.equal(a.logits(te), b.logits(te))
    perm = labels.flip(0)
    a.fit(feats, perm, text=text, views=views)
    fresh = CoOp(CoOpConfig(**FAST), backbone=tiny_backbone).fit(feats, perm, text=text, views=views)
    assert torch.equal(a.logits(te), fresh.logits(te))


# -- learning -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("class_specific", [False, True])
def test_learns_generated_task(backbone, class_specific):
    # The random-init tiny encoder is ill-conditioned for SGD at the paper's lr (gradient norm ~200 w.r.t. a
    # context of norm 0.3), so this synthetic check uses AdamW; the paper schedule stays the default.
    feats, labels, _, text, te, te_labels = _task(backbone)
    zs = float((ZeroShot().fit(text=text).predict(te) == te_labels).float().mean())
    m = CoOp(CoOpConfig(epochs=20, n_ctx=4, batch_size=8, optimizer="adamw", lr=1e-3, class_specific=class_specific),
             backbone=backbone).fit(feats, labels, text=text)
    acc = float((m.predict(te) == te_labels).float().mean())
    assert acc >= 0.8 and acc > zs, f"CoOp accuracy {acc} (zero-shot {zs}, chance 0.2)"


# -- configuration and errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,msg", [
    ("n_ctx", 0, r"The 'n_ctx' parameter of CoOpConfig must be an int >= 1. Got 0 instead."),
    ("init", "  ", r"'init' parameter of CoOpConfig must be None or a non-empty phrase"),
    ("epochs", 0, r"'epochs' parameter of CoOpConfig must be an int >= 1"),
    ("lr", -1.0, r"'lr' parameter of CoOpConfig"),
    ("init_std", 0.0, r"'init_std' parameter"),
])
def test_config_constraints(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        CoOpConfig(**{field: value})


def test_overrides_and_defaults():
    c = CoOpConfig()
    assert (c.epochs, c.n_ctx, c.lr, c.batch_size, c.optimizer, c.class_specific) == (None, 16, 2e-3, 32, "sgd", False)
    assert CoOpConfig.parse_overrides(["init=a photo of a", "class_specific=true", "epochs=5"]) == \
        {"init": "a photo of a", "class_specific": True, "epochs": 5}


def test_backbone_without_token_encoder_is_a_clear_error(task):
    feats, labels, _, text, _, _ = task

    class SentenceOnly:  # a custom backbone with encode_texts only
        id, embed_dim = "custom:sentence-only", 32

    with pytest.raises(ValueError, match=r"^CoOp needs a backbone with a token-level text encoder; "
                                         r"'custom:sentence-only'.*or --backbone lite\.$"):
        CoOp(CoOpConfig(**FAST), backbone=SentenceOnly()).fit(feats, labels, text=text)
    with pytest.raises(ValueError, match=r"CoOp needs the backbone whose text encoder it trains"):
        CoOp(CoOpConfig(**FAST)).fit(feats, labels, text=text)


def test_context_too_long_is_an_error(tiny_backbone):
    with pytest.raises(ValueError, match="does not fit the text encoder's 77 tokens"):
        PromptEncoder(tiny_backbone, NAMES, n_ctx=80)


def test_runs_through_run_one_and_reloads(tiny_backbone, color_dir, tmp_path):
    from clip_adapter import FeatureCache, RunSpec, load_dataset, run_one
    ds = load_dataset(color_dir)
    cache = FeatureCache(tiny_backbone, root=tmp_path / "cache", progress=False, num_workers=0)
    rec = run_one(ds, tiny_backbone, RunSpec("coop", shots=2, overrides={"epochs": 2, "n_ctx": 4}, n_views=1),
                  cache=cache, save_model=tmp_path / "model")
    assert rec["method"] == "coop" and rec["trainable_parameters"] == 4 * 64 and rec["chosen"] == {}
    from clip_adapter.prompts import text_fingerprint
    prior = encode_class_texts(tiny_backbone, ds.classnames, ds.templates).features
    assert rec["text_features_sha256"] == text_fingerprint(prior) and rec["backbone_detail"] == {}
    assert text_fingerprint(prior * 2.0) == text_fingerprint(prior)            # scale-free: normalised first
    assert text_fingerprint(prior + 1e-3 * torch.randn(prior.shape)) != text_fingerprint(prior)
    loaded = FewShotMethod.from_pretrained(tmp_path / "model", backbone=tiny_backbone)
    test_feats = cache.features(ds.split("test"))
    assert float((loaded.predict(test_feats) == torch.tensor([it.label for it in ds.split("test")])).float().mean()) \
        == pytest.approx(rec["accuracy"])


# -- the offline lite backbone: MiniLM on token embeddings ---------------------------------------------------------
@pytest.fixture(scope="module")
def lite_encoder(lite_backbone):
    from clip_adapter.methods.coop import LitePromptEncoder, prompt_encoder
    enc = prompt_encoder(lite_backbone, NAMES, init="a photo of a")
    assert isinstance(enc, LitePromptEncoder)
    return enc


@pytest.mark.parametrize("class_specific", [False, True])
def test_lite_phrase_context_equals_encode_texts(lite_backbone, lite_encoder, class_specific):
    """With the context set to "a photo of a", the lite prompt encoder is the backbone's own text encoder."""
    enc = lite_encoder
    assert enc.n_ctx == 4 and enc.width == 384
    ctx = enc.init_context(class_specific, from_phrase=True)
    with torch.no_grad():
        ours = enc(ctx)
    ref = lite_backbone.encode_texts([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    assert ours.shape == ref.shape == (len(NAMES), 1280)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), float((ours - ref).abs().max())


def test_lite_only_context_receives_gradients(lite_backbone):
    from clip_adapter.methods.coop import prompt_encoder
    _assert_only_context_gets_gradients(prompt_encoder(lite_backbone, NAMES, n_ctx=3), lite_backbone.text_model)


def test_lite_coop_learns(lite_backbone):
    """Features near the lite text features of a hidden-context prompt: CoOp on lite fits them from a random context."""
    from clip_adapter.methods.coop import prompt_encoder
    enc = prompt_encoder(lite_backbone, NAMES, n_ctx=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        target = F.normalize(enc(torch.randn(2, enc.width, generator=g)), dim=-1)
    labels = torch.arange(len(NAMES)).repeat_interleave(4)
    feats = target[labels] + 0.02 * torch.randn(len(labels), target.shape[1], generator=g)
    text = encode_class_texts(lite_backbone, NAMES, ["a photo of a {}."])
    m = CoOp(CoOpConfig(epochs=15, n_ctx=2, batch_size=20, optimizer="adamw", lr=2e-2),
             backbone=lite_backbone).fit(feats, labels, text=text)
    assert m.text_features_.shape == (len(NAMES), 1280)
    assert m.history_["loss"][-1] < m.history_["loss"][0]
    assert float((m.predict(feats) == labels).float().mean()) == 1.0
