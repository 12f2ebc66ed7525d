"""Tip-Adapter / Tip-Adapter-F maths against direct computations (the common suite covers the API checks)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clip_adapter.methods import FewShotMethod, get_method
from clip_adapter.methods.tip_adapter import (TipAdapter, TipAdapterConfig, TipAdapterF, TipAdapterFConfig,
                                              build_cache, tip_logits)
from clip_adapter.methods.zero_shot import ZeroShot
from clip_adapter.prompts import ClassText
from clip_adapter.selection import FeatureSplit, select

from conftest import clustered


pytestmark = pytest.mark.usefixtures("one_thread")


def _text(t: torch.Tensor) -> ClassText:
    return ClassText([f"class {i}" for i in range(len(t))], ["a photo of a {}."], t, 100.0)


@pytest.fixture
def data():
    feats, labels, text = clustered()
    g = torch.Generator().manual_seed(5)
    views = torch.stack([feats + 0.3 * torch.randn(feats.shape, generator=g) for _ in range(3)])
    return feats, labels, views, _text(text)


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_alpha_zero_equals_zero_shot(name, data):
    feats, labels, views, text = data
    m = get_method(name, alpha=0.0, **({"epochs": 2} if name == "tip_adapter_f" else {})).fit(
        feats, labels, text=text, views=views)
    zs = ZeroShot().fit(text=text)
    assert torch.allclose(m.logits(feats), zs.logits(feats), atol=1e-4)
    assert torch.equal(m.predict(feats), zs.predict(feats))


def test_cache_logits_match_direct_computation(data):
    feats, labels, views, text = data
    alpha, beta = 1.7, 3.0
    m = TipAdapter(TipAdapterConfig(alpha=alpha, beta=beta)).fit(feats, labels, text=text, views=views)
    x = torch.randn(4, feats.shape[1])
    keys = [v / v.norm() for v in views.mean(0)]  # mean over views, then normalised
    expected = torch.zeros(4, 5)
    for i in range(4):
        f = x[i] / x[i].norm()
        for c in range(5):
            w = text.features[c] / text.features[c].norm()
            cache = sum(math.exp(-beta * (1 - float(f @ k))) for k, y in zip(keys, labels) if y == c)
            expected[i, c] = 100.0 * float(f @ w) + alpha * cache
    assert torch.allclose(m.logits(x), expected, atol=1e-3, rtol=1e-5)


def test_cache_construction(data):
    feats, labels, views, text = data
    keys, values = build_cache(feats, labels, 5, views)
    assert torch.allclose(keys, F.normalize(views.mean(0), dim=-1))
    assert torch.equal(values, F.one_hot(labels, 5).float()) and values.shape == (40, 5)
    keys_no_views, _ = build_cache(feats, labels, 5)
    assert torch.allclose(keys_no_views, F.normalize(feats, dim=-1))
    assert torch.allclose(keys.norm(dim=-1), torch.ones(40))


def test_trainable_parameters_and_state(data):
    feats, labels, views, text = data
    tip = TipAdapter().fit(feats, labels, text=text, views=views)
    assert tip.num_trainable_parameters() == 0  # training-free: the cache is data, not parameters
    assert set(tip.state_tensors()) == {"fixed.text_features", "fixed.cache_values", "fixed.cache_keys"}
    f = TipAdapterF(TipAdapterFConfig(epochs=3)).fit(feats, labels, text=text, views=views)
    assert f.num_trainable_parameters() == 40 * 32  # N x d keys
    assert not torch.allclose(f.cache_keys_, tip.cache_keys_)  # the keys were fine-tuned ...
    assert torch.equal(f.cache_values_, tip.cache_values_)     # ... the values were not


def test_finetune_uses_views_and_lowers_training_loss():
    feats, labels, text = clustered(noise=1.5)  # a noisy task with a weak text prior, so the loss has room to fall
    g = torch.Generator().manual_seed(5)
    views = torch.stack([feats + 1.0 * torch.randn(feats.shape, generator=g) for _ in range(3)])
    text = ClassText(_text(text).classnames, ["{}"], text, 1.0)
    config = TipAdapterFConfig(epochs=20, init_alpha=1.0, init_beta=5.5)  # a sharp cache: room to learn
    f = TipAdapterF(config).fit(feats, labels, text=text, views=views)
    assert f.history_["loss"][-1] < 0.9 * f.history_["loss"][0]
    g = TipAdapterF(config).fit(feats, labels, text=text)
    assert not torch.equal(f.cache_keys_, g.cache_keys_)


def test_schedule_defaults():
    c = TipAdapterFConfig()
    assert (c.epochs, c.batch_size, c.lr, c.optimizer, c.warmup_epochs) == (20, 256, 1e-3, "adamw", 0)
    assert (c.init_alpha, c.init_beta) == (1.17, 1.0)  # the official configs/imagenet.yaml init values
    # Both: the official grid's resolution (200 beta x 20 alpha steps over [0.1, 13), its DTD grid) ...
    beta, alpha = TipAdapter.default_grid["beta"], TipAdapter.default_grid["alpha"]
    official_b, official_a = [b for b in beta if 0.1 <= b < 13], [a for a in alpha if 0.1 <= a < 13]
    assert (len(official_b), len(official_a), official_b[0], alpha[0]) == (200, 20, 0.1, 0.1)
    assert official_b[100] == pytest.approx(6.55) and alpha[2] == pytest.approx(1.39)  # the official DTD choice
    # ... then quarter decades from 13 (a weak zero-shot classifier wants the cache weighted far more), and beta
    # below 0.1 down to 0.01
    assert alpha[20:] == pytest.approx([13 * 10 ** (k / 4) for k in range(len(alpha) - 20)], rel=1e-4)
    assert beta[204:] == pytest.approx([13 * 10 ** (k / 4) for k in range(len(beta) - 204)], rel=1e-4)
    assert beta[:4] == pytest.approx([0.01, 0.0178, 0.0316, 0.0562], rel=1e-3) and len(beta) == 207
    assert (max(alpha), max(beta)) == pytest.approx((13000.0, 41.11)) and alpha == sorted(alpha) and beta == sorted(beta)
    # Tip-Adapter-F fine-tunes once and searches the same grid; its loader keeps the last partial batch
    assert TipAdapterF.default_grid == TipAdapter.default_grid
    assert TipAdapterF.drop_last is False and TipAdapter.logit_params == TipAdapterF.logit_params == ("alpha", "beta")


def test_tip_adapter_f_keeps_the_last_partial_batch():
    """300 images, batch 256: Tip-Adapter-F steps twice per epoch (every image seen); a Dassl-rule method once."""
    feats, labels, text = clustered(n_classes=5, per_class=60, dim=16)
    f = TipAdapterF(TipAdapterFConfig(epochs=3)).fit(feats, labels, text=_text(text))
    assert f.history_["steps"] == 3 * 2
    from clip_adapter.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
    c = ClipAdapter(ClipAdapterConfig(epochs=3, batch_size=256)).fit(feats, labels, text=_text(text))
    assert c.history_["steps"] == 3 * 1


def test_rescoring_a_fit_equals_refitting():
    """select() fits Tip-Adapter once and rescores (alpha, beta are logit_params): the same as fitting each point."""
    from clip_adapter.selection import FeatureSplit, select
    feats, labels, text = clustered(n_classes=5, per_class=6, dim=16, seed=2)
    val_f, val_l, _ = clustered(n_classes=5, per_class=4, dim=16, seed=2, noise=1.2)
    grid = {"beta": [0.5, 3.0, 9.0], "alpha": [0.2, 1.0, 7.0]}
    sel = select("tip_adapter", TipAdapterConfig(), grid, FeatureSplit(feats, labels), FeatureSplit(val_f, val_l),
                 _text(text))
    for cand in sel.candidates:
        fresh = TipAdapter(TipAdapterConfig(alpha=cand["alpha"], beta=cand["beta"])).fit(feats, labels,
                                                                                          text=_text(text))
        assert cand["val_accuracy"] == float((fresh.predict(val_f) == val_l).float().mean())
    fresh = TipAdapter(sel.config).fit(feats, labels, text=_text(text))
    assert torch.equal(sel.model.logits(val_f), fresh.logits(val_f))
    val_f.mul_(2.0)  # an in-place change is seen (the memo checks the version counter)
    assert torch.equal(sel.model.logits(val_f), fresh.logits(val_f))


def test_tip_adapter_f_fine_tunes_once_at_the_initial_values(data):
    """The official procedure: keys fine-tuned at (init_alpha, init_beta); alpha, beta only rescore the keys."""
    feats, labels, views, text = data
    a = TipAdapterF(TipAdapterFConfig(epochs=3, alpha=0.3, beta=9.0)).fit(feats, labels, text=text, views=views)
    b = TipAdapterF(TipAdapterFConfig(epochs=3, alpha=7.0, beta=2.0)).fit(feats, labels, text=text, views=views)
    assert torch.equal(a.cache_keys_, b.cache_keys_)  # the search values do not touch the fine-tuning
    c = TipAdapterF(TipAdapterFConfig(epochs=3, init_alpha=5.0)).fit(feats, labels, text=text, views=views)
    assert not torch.allclose(a.cache_keys_, c.cache_keys_)  # the initial values do
    # logits: the formula with the fine-tuned keys and the config's (alpha, beta)
    x = torch.randn(6, feats.shape[1])
    assert torch.allclose(a.logits(x), tip_logits(x, text.features, a.cache_keys_, a.cache_values_, 0.3, 9.0, 100.0),
                          atol=1e-4)


def test_tip_adapter_f_search_fits_once(data, monkeypatch):
    """select() fine-tunes Tip-Adapter-F once for the whole (alpha, beta) grid; each candidate equals a fresh fit."""
    feats, labels, views, text = data
    val_f, val_l, _ = clustered(seed=0, noise=0.9)
    calls = []
    original = TipAdapterF._finetune
    monkeypatch.setattr(TipAdapterF, "_finetune", lambda self, *a: calls.append(1) or original(self, *a))
    grid = {"beta": [0.5, 3.0, 30.0], "alpha": [0.1, 2.0, 200.0]}
    sel = select("tip_adapter_f", TipAdapterFConfig(epochs=2), grid, FeatureSplit(feats, labels, views),
                 FeatureSplit(val_f, val_l), text)
    assert len(calls) == 1 and len(sel.candidates) == 9
    for cand in sel.candidates[::4]:
        fresh = TipAdapterF(TipAdapterFConfig(epochs=2, alpha=cand["alpha"], beta=cand["beta"])).fit(
            feats, labels, text=text, views=views)
        assert cand["val_accuracy"] == float((fresh.predict(val_f) == val_l).float().mean())


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_learns_generated_task_above_zero_shot(name):
    feats, labels, _ = clustered(per_class=12, noise=0.5, seed=3)
    g = torch.Generator().manual_seed(99)
    te_feats = feats + 0.5 * torch.randn(feats.shape, generator=g)
    # Text unrelated to the clusters and a small logit scale: zero-shot is near chance, all skill is the cache's.
    text = ClassText([f"class {i}" for i in range(5)], ["{}"], torch.randn(5, 32, generator=g), 1.0)
    zs = float((ZeroShot().fit(text=text).predict(te_feats) == labels).float().mean())
    m = get_method(name, **({"epochs": 5} if name == "tip_adapter_f" else {})).fit(feats, labels, text=text)
    acc = float((m.predict(te_feats) == labels).float().mean())
    assert acc > 0.8 and zs < 0.5, f"{name}: {acc} vs zero-shot {zs} (chance 0.2)"


def test_grid_search_on_val(data):
    feats, labels, views, text = data
    val_feats, val_labels, _ = clustered(seed=0, noise=0.7)
    sel = select("tip_adapter", TipAdapterConfig(), TipAdapter.default_grid, FeatureSplit(feats, labels, views),
                 FeatureSplit(val_feats, val_labels), text)
    grid = TipAdapter.default_grid
    assert len(sel.candidates) == len(grid["beta"]) * len(grid["alpha"]) and set(sel.chosen) == {"alpha", "beta"}
    assert sel.val_accuracy == max(c["val_accuracy"] for c in sel.candidates)


def test_save_load_finetuned_keys(data, tmp_path):
    feats, labels, views, text = data
    f = TipAdapterF(TipAdapterFConfig(epochs=2)).fit(feats, labels, text=text, views=views)
    f.save_pretrained(tmp_path / "f")
    loaded = FewShotMethod.from_pretrained(tmp_path / "f")
    assert type(loaded) is TipAdapterF and torch.equal(loaded.cache_keys_, f.cache_keys_)
    assert torch.equal(loaded.logits(feats), f.logits(feats))
    with pytest.raises(ValueError, match="holds a 'tip_adapter_f' model, not 'tip_adapter'"):
        TipAdapter.from_pretrained(tmp_path / "f")


@pytest.mark.parametrize("cls,field,value,msg", [
    (TipAdapterConfig, "alpha", -1.0, r"The 'alpha' parameter of TipAdapterConfig must be a float in \[0, inf\). "
                                      r"Got -1.0 instead."),
    (TipAdapterConfig, "beta", -0.5, r"'beta' parameter of TipAdapterConfig"),
    (TipAdapterFConfig, "alpha", -1.0, r"'alpha' parameter of TipAdapterFConfig"),
    (TipAdapterFConfig, "init_alpha", -1.0, r"'init_alpha' parameter of TipAdapterFConfig"),
    (TipAdapterFConfig, "init_beta", -1.0, r"'init_beta' parameter of TipAdapterFConfig"),
    (TipAdapterFConfig, "epochs", 0, r"'epochs' parameter of TipAdapterFConfig must be an int >= 1"),
])
def test_config_constraints(cls, field, value, msg):
    with pytest.raises(ValueError, match=msg):
        cls(**{field: value})


def test_tip_logits_function_is_the_formula():
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    k = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    v = F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    fn = F.normalize(f, dim=-1)
    expected = 50.0 * fn @ F.normalize(t, dim=-1).T + 2.0 * torch.exp(-4.0 * (1 - fn @ k.T)) @ v
    assert torch.allclose(tip_logits(f, t, k, v, 2.0, 4.0, 50.0), expected)
