"""The common suite every registered method runs (as timm/PEFT/sklearn do), plus per-method maths."""
from __future__ import annotations

import dataclasses
import fnmatch

import pytest
import torch

from clip_adapter.methods import FewShotMethod, NotFittedError, get_method, get_method_class, list_methods
from clip_adapter.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
from clip_adapter.methods.common import Adapter
from clip_adapter.methods.zero_shot import ZeroShot
from clip_adapter.config import invalid_examples
from clip_adapter.imageset import ImageSet
from clip_adapter.prompts import ClassText, encode_class_texts

from conftest import clustered

pytestmark = pytest.mark.usefixtures("one_thread")

# Fewer epochs than the papers' (the suite checks the contract, not accuracy); keys a method lacks are ignored.
FAST = {"epochs": 3, "iters": 20, "max_iter": 200}
NAMES = ["red", "green", "blue", "yellow", "purple"]


def _text(text_feats: torch.Tensor) -> ClassText:
    return ClassText([f"class {i}" for i in range(len(text_feats))], ["a photo of a {}."], text_feats, 100.0)


@pytest.fixture
def data():
    feats, labels, text = clustered()
    views = torch.stack([feats + 0.1 * torch.randn_like(feats) for _ in range(3)])
    return feats, labels, views, _text(text)


def make(name: str, backbone=None, **kw) -> FewShotMethod:
    cls = get_method_class(name)
    fields = cls.config_cls.field_names()
    kw = {**{k: v for k, v in FAST.items() if k in fields}, **kw}
    return get_method(name, backbone=backbone if cls.needs_backbone else None, **kw)


@pytest.fixture(params=list_methods())
def any_method(request):
    return request.param


@pytest.fixture
def task(any_method, tiny_backbone, color_dir):
    """(name, fresh-method factory, features, labels, views, text, backbone) for any registered method: synthetic
    clustered features, or, for a method that needs a backbone, inputs of its ``input_shape`` and the tiny
    backbone's class text features."""
    cls = get_method_class(any_method)
    g = torch.Generator().manual_seed(0)
    if cls.inputs == "images":  # trains through the encoders (CLIP-LoRA): generated image files, no cached views
        bb = tiny_backbone
        text = encode_class_texts(bb, NAMES, ["a photo of a {}."])
        paths = [p for d in sorted(color_dir.iterdir()) for p in sorted(d.glob("*.png"))[:3]]
        labels = torch.tensor([sorted(color_dir.iterdir()).index(p.parent) for p in paths])
        quick = {"iters": 4, "batch_size": 8}  # each step runs both towers forward and backward
        return (any_method, (lambda **kw: make(any_method, bb, **{**quick, **kw})), ImageSet.of(paths, bb), labels,
                None, text, bb)
    if cls.needs_backbone:
        bb = tiny_backbone
        text = encode_class_texts(bb, NAMES, ["a photo of a {}."])
        shape = make(any_method, bb).input_shape() or (text.features.shape[1],)
        labels = torch.arange(len(NAMES)).repeat_interleave(4)
        centers = torch.randn(len(NAMES), *shape, generator=g)
        feats = centers[labels] + 0.3 * torch.randn(len(labels), *shape, generator=g)
    else:
        bb = None
        feats, labels, t = clustered()
        text = _text(t)
    views = torch.stack([feats + 0.1 * torch.randn(feats.shape, generator=g) for _ in range(2)])
    return any_method, (lambda **kw: make(any_method, bb, **kw)), feats, labels, views, text, bb


def _fitted(task, **kw):
    name, new, feats, labels, views, text, bb = task
    return new(**kw).fit(feats, labels, text=text, views=views)


# -- the common contract, run by every registered method ----------------------------------------------------------
def test_fit_returns_self_and_shapes(task):
    name, new, feats, labels, views, text, bb = task
    m = new()
    assert m.fit(feats, labels, text=text, views=views) is m
    assert m.logits(feats).shape == (len(feats), len(text.classnames))
    p = m.predict_proba(feats)
    assert torch.allclose(p.sum(-1), torch.ones(len(feats)), atol=1e-5)
    assert m.predict(feats).dtype == torch.long
    assert m.classes_ == list(text.classnames)


def test_not_fitted_error(task):
    name, new, feats, *_ = task
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        new().predict(feats)


def test_save_load_roundtrip_identical(task, tmp_path):
    name, new, feats, labels, views, text, bb = task
    m = _fitted(task)
    m.save_pretrained(tmp_path / "m", backbone_id=bb.id if bb is not None else "test:bb")
    loaded = FewShotMethod.from_pretrained(tmp_path / "m", backbone=bb)
    assert type(loaded) is type(m)
    assert loaded.config == m.config
    assert torch.equal(loaded.logits(feats), m.logits(feats))
    assert loaded.classes_ == m.classes_
    assert loaded.num_trainable_parameters() == m.num_trainable_parameters()


def test_same_seed_same_result_and_refit_forgets(task):
    name, new, feats, labels, views, text, bb = task
    a, b = _fitted(task), _fitted(task)
    assert torch.equal(a.logits(feats), b.logits(feats))
    # Refit on other labels: nothing of the first fit survives (same result as a fresh fit).
    perm = labels.flip(0)
    a.fit(feats, perm, text=text, views=views)
    fresh = new().fit(feats, perm, text=text, views=views)
    assert torch.equal(a.logits(feats), fresh.logits(feats))


def test_trainable_tensors_are_declared(task):
    """``trainable`` picks saved tensors; an iteratively trained method learns some; a non-training one none."""
    m = _fitted(task)
    names = m.trainable_tensor_names()
    assert set(names) <= set(m.state_tensors())
    assert all(any(fnmatch.fnmatchcase(k, p) for p in m.trainable) for k in names)
    assert m.num_trainable_parameters() == sum(m.state_tensors()[k].numel() for k in names)
    if "epochs" in m.config_cls.field_names():  # iterates: learns something
        assert m.num_trainable_parameters() > 0
    if not m.trains:
        assert m.num_trainable_parameters() == 0


def test_bad_fit_inputs_are_one_line_errors(task):
    name, new, feats, labels, views, text, bb = task
    for kwargs, msg in [(dict(labels=labels[:3]), rf"labels must be \({len(feats)},\)"),
                        (dict(labels=labels.float()), "labels must be an int64 tensor"),
                        (dict(labels=labels + len(NAMES) + 5), r"labels must lie in 0\.\."),
                        (dict(features=_bad_features(feats)), "non-finite values|not found")]:
        args = {"features": feats, "labels": labels, **kwargs}
        with pytest.raises(ValueError, match=msg) as e:
            new().fit(args["features"], args["labels"], text=text, views=views)
        assert "\n" not in str(e.value)


def _bad_features(feats):
    """NaN features, or for image inputs a missing image file."""
    if isinstance(feats, ImageSet):
        return dataclasses.replace(feats, paths=feats.paths[:-1] + ("no/such/image.png",))
    return torch.full_like(feats, float("nan"))


def test_predict_on_wrong_shape_is_one_line_error(task):
    name, new, feats, labels, views, text, bb = task
    m = _fitted(task)
    with pytest.raises(ValueError, match=r"expects .*of shape \(n, ") as e:
        m.predict(torch.randn(2, 7))
    assert "\n" not in str(e.value)


def test_every_config_constraint_rejects_generated_values(any_method):
    """Each declared constraint, fed each value it rejects, raises the one message shape naming the field."""
    cfg_cls = get_method_class(any_method).config_cls
    checked = 0
    for field_name, constraint in cfg_cls.all_constraints().items():
        for bad in invalid_examples(constraint):
            with pytest.raises(ValueError, match=rf"^The '{field_name}' parameter of {cfg_cls.__name__} must be "
                                                 rf".*\. Got .* instead\.$"):
                cfg_cls(**{field_name: bad})
            checked += 1
    assert checked >= len(cfg_cls.all_constraints())  # every constraint produced at least one invalid value
    assert set(cfg_cls.all_constraints()) <= set(cfg_cls.field_names())


def test_training_free_method_refuses_training_settings(any_method):
    cls = get_method_class(any_method)
    if "epochs" in cls.config_cls.field_names():
        assert get_method(any_method, backbone=None, epochs=2).config.epochs == 2
        return
    if "lr" in cls.config_cls.field_names():  # trained on its own schedule (iterations): epochs is just unknown
        with pytest.raises(ValueError, match=rf"^Unknown {cls.config_cls.__name__} key 'epochs'"):
            get_method(any_method, epochs=5)
        return
    with pytest.raises(ValueError, match=rf"^Method '{any_method}' is (training-free|not trained).*takes no "
                                         r"'epochs'.*Its settings: "):
        get_method(any_method, epochs=5)


# Methods that run the backbone's encoders learn on a real tiny task in their own files (test_coop.py, ...).
@pytest.mark.parametrize("any_method", [m for m in list_methods() if not get_method_class(m).needs_backbone])
def test_learns_generated_task(any_method):
    cls = get_method_class(any_method)
    feats, labels, text = clustered(per_class=12, noise=0.5, seed=3)
    te_feats, te_labels, _ = clustered(per_class=12, noise=0.5, seed=3)
    # fresh noise for test, same centres/text
    g = torch.Generator().manual_seed(99)
    te_feats = te_feats + 0.5 * torch.randn(te_feats.shape, generator=g)
    longer = {"epochs": 30} if "epochs" in cls.config_cls.field_names() else {}
    m = make(any_method, **longer).fit(feats, labels, text=_text(text))
    acc = float((m.predict(te_feats) == te_labels).float().mean())
    floor = 0.4 if not m.trains else 0.8  # zero-shot only knows the loosely aligned text
    assert acc > floor, f"{any_method} accuracy {acc}"


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
