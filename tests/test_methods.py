"""The common suite every registered method runs (as timm/PEFT/sklearn do), plus per-method maths."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from clip_adapter.methods import FewShotMethod, NotFittedError, get_method, get_method_class, list_methods
from clip_adapter.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
from clip_adapter.methods.common import Adapter
from clip_adapter.methods.zero_shot import ZeroShot
from clip_adapter.prompts import ClassText

from conftest import clustered

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"clip_adapter": {"epochs": 30}, "tip_adapter_f": {"epochs": 5}, "coop": {"epochs": 3}}


def _text(text_feats: torch.Tensor) -> ClassText:
    return ClassText([f"class {i}" for i in range(len(text_feats))], ["a photo of a {}."], text_feats, 100.0)


@pytest.fixture
def data():
    feats, labels, text = clustered()
    views = torch.stack([feats + 0.1 * torch.randn_like(feats) for _ in range(3)])
    return feats, labels, views, _text(text)


def make(name: str, tiny_backbone=None, **kw) -> FewShotMethod:
    cls = get_method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    kw = {**{k: v for k, v in FAST.get(name, {}).items() if k in fields}, **kw}
    return get_method(name, backbone=tiny_backbone, **kw)


def _needs_backbone(name: str) -> bool:
    return getattr(get_method_class(name), "needs_backbone", False)


# Methods that run the backbone's encoders (CoOp, the layer adapter) need real class names and its dim: their own
# test files run this same contract on a real tiny backbone (test_coop.py, test_clip_adapter_layer.py).
FEATURE_ONLY = [m for m in list_methods() if not _needs_backbone(m)]


@pytest.fixture(params=FEATURE_ONLY)
def method_name(request):
    return request.param


@pytest.fixture(params=list_methods())
def any_method(request):
    return request.param


def _fit(name, data, tiny_backbone, **kw):
    feats, labels, views, text = data
    return make(name, **kw).fit(feats, labels, text=text, views=views)


def test_fit_returns_self_and_shapes(method_name, data, tiny_backbone):
    m = _fit(method_name, data, tiny_backbone)
    feats = data[0]
    assert isinstance(m, FewShotMethod)
    assert m.logits(feats).shape == (len(feats), 5)
    p = m.predict_proba(feats)
    assert torch.allclose(p.sum(-1), torch.ones(len(feats)), atol=1e-5)
    assert m.predict(feats).dtype == torch.long


def test_not_fitted_error(any_method, data):
    m = make(any_method)
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        m.predict(data[0])


def test_save_load_roundtrip_identical(method_name, data, tiny_backbone, tmp_path):
    m = _fit(method_name, data, tiny_backbone)
    m.save_pretrained(tmp_path / "m", backbone_id="test:bb")
    loaded = FewShotMethod.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(m)
    assert loaded.config == m.config
    assert torch.equal(loaded.logits(data[0]), m.logits(data[0]))
    assert loaded.classes_ == m.classes_


def test_same_seed_same_result_and_refit_forgets(method_name, data, tiny_backbone):
    a = _fit(method_name, data, tiny_backbone)
    b = _fit(method_name, data, tiny_backbone)
    assert torch.equal(a.logits(data[0]), b.logits(data[0]))
    # Refit on other labels: nothing of the first fit survives (same result as a fresh fit).
    feats, labels, views, text = data
    perm = labels.flip(0)
    a.fit(feats, perm, text=text, views=views)
    fresh = make(method_name).fit(feats, perm, text=text, views=views)
    assert torch.equal(a.logits(feats), fresh.logits(feats))


def test_learns_generated_task(method_name, tiny_backbone):
    feats, labels, text = clustered(per_class=12, noise=0.5, seed=3)
    te_feats, te_labels, _ = clustered(per_class=12, noise=0.5, seed=3)
    # fresh noise for test, same centres/text
    g = torch.Generator().manual_seed(99)
    te_feats = te_feats + 0.5 * torch.randn(te_feats.shape, generator=g)
    m = make(method_name).fit(feats, labels, text=_text(text))
    acc = float((m.predict(te_feats) == te_labels).float().mean())
    floor = 0.4 if not m.trains else 0.8  # zero-shot only knows the loosely aligned text
    assert acc > floor, f"{method_name} accuracy {acc}"


def test_unknown_method_suggests():
    with pytest.raises(ValueError, match=r"Unknown method 'clip-adaptor'.*did you mean 'clip_adapter'"):
        get_method_class("clip-adaptor")


@pytest.mark.parametrize("field,value,msg", [
    ("alpha", 1.5, r"The 'alpha' parameter of ClipAdapterConfig must be a float in \[0, 1\]. Got 1.5 instead."),
    ("target", "head", r"'target' parameter .* must be one of 'image', 'text', 'both'"),
    ("epochs", 0, r"'epochs' parameter .* an int >= 1"),
    ("lr", -1.0, r"'lr' parameter .* \(0, inf\)"),
    ("reduction", 0, r"'reduction' parameter"),
])
def test_clip_adapter_config_constraints(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        ClipAdapterConfig(**{field: value})


def test_linear_probe_config_constraint():
    from clip_adapter.methods.linear_probe import LinearProbeConfig
    with pytest.raises(ValueError, match=r"The 'C' parameter of LinearProbeConfig must be a float in the range"):
        LinearProbeConfig(C=-1)


def test_override_parsing_and_suggestion():
    assert ClipAdapterConfig.parse_overrides(["alpha=0.6", "epochs=5", "bias=true", "optimizer=adamw"]) == \
        {"alpha": 0.6, "epochs": 5, "bias": True, "optimizer": "adamw"}
    with pytest.raises(ValueError, match=r"Unknown ClipAdapterConfig key 'alpah' \(did you mean 'alpha'\?\)"):
        ClipAdapterConfig.parse_overrides(["alpah=0.6"])


# -- CLIP-Adapter maths ---------------------------------------------------------------------------------------
def test_adapter_matches_hand_computation():
    torch.manual_seed(0)
    a = Adapter(8, reduction=4)
    x = torch.randn(3, 8)
    w1, w2 = a.fc[0].weight, a.fc[2].weight
    expected = torch.relu(torch.relu(x @ w1.t()) @ w2.t())
    assert torch.allclose(a(x), expected)
    assert w1.shape == (2, 8) and a.fc[0].bias is None
    assert len(Adapter(8, final_relu=False, bias=True).fc) == 3


@pytest.mark.parametrize("target", ["image", "text", "both"])
def test_alpha_zero_equals_zero_shot(target, data):
    feats, labels, views, text = data
    m = ClipAdapter(ClipAdapterConfig(alpha=0.0, alpha_text=0.0, target=target, epochs=2)).fit(
        feats, labels, text=text, views=views)
    zs = ZeroShot().fit(text=text)
    assert torch.equal(m.predict(feats), zs.predict(feats))
    assert torch.allclose(m.logits(feats), zs.logits(feats), atol=1e-5)


@pytest.mark.parametrize("target,n_adapters", [("image", 1), ("text", 1), ("both", 2)])
def test_placement_shapes(target, n_adapters, data):
    feats, labels, views, text = data
    m = ClipAdapter(ClipAdapterConfig(target=target, epochs=2)).fit(feats, labels, text=text, views=views)
    assert len(m._adapters()) == n_adapters
    assert m.logits(feats).shape == (len(feats), 5)
    d = feats.shape[1]
    assert m.num_trainable_parameters() == n_adapters * 2 * d * (d // 4)


def test_fit_input_errors(data):
    feats, labels, views, text = data
    m = ClipAdapter(ClipAdapterConfig(epochs=1))
    with pytest.raises(ValueError, match=r"labels must be \(40,\)"):
        m.fit(feats, labels[:3], text=text)
    with pytest.raises(ValueError, match="views must be"):
        m.fit(feats, labels, text=text, views=views[:, :3])
    m.fit(feats, labels, text=text)
    with pytest.raises(ValueError, match=r"expects features of shape \(n, 32\)"):
        m.predict(torch.randn(2, 7))


def test_training_uses_views_not_encoder(data):
    """Training on views differs from training on clean features: the views are really used."""
    feats, labels, views, text = data
    a = ClipAdapter(ClipAdapterConfig(epochs=5)).fit(feats, labels, text=text, views=views)
    b = ClipAdapter(ClipAdapterConfig(epochs=5)).fit(feats, labels, text=text)
    assert not torch.equal(a.logits(feats), b.logits(feats))


def test_load_rejects_other_backbone(data, tmp_path, tiny_backbone):
    feats, labels, views, text = data
    m = ClipAdapter(ClipAdapterConfig(epochs=1)).fit(feats, labels, text=text)
    m.save_pretrained(tmp_path / "m", backbone_id="open_clip:RN50/openai")
    with pytest.raises(ValueError, match=r"trained on 'open_clip:RN50/openai' \(dim 32\); features come from "
                                         r"'open_clip:tiny-vit/random-init-[0-9a-f]{12}'"):
        FewShotMethod.from_pretrained(tmp_path / "m", backbone=tiny_backbone)


def test_load_errors(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="not found"):
        FewShotMethod.from_pretrained(tmp_path / "nope")
    feats, labels, views, text = data
    m = ClipAdapter(ClipAdapterConfig(epochs=1)).fit(feats, labels, text=text)
    m.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "adapter_config.json").write_text("{broken")
    with pytest.raises(ValueError, match="adapter_config.json is not valid JSON"):
        FewShotMethod.from_pretrained(tmp_path / "m")
