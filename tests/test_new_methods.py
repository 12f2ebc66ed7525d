"""The 2023-25 methods against independent computations of their published formulas (numpy, float64):
closed-form ones (gda, proker) to 1e-5; trained ones (lp_pp, zs_lp, clap, taskres): the first step by hand and
convergence on a separable toy problem."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_adapter.methods import get_method
from clip_adapter.methods.zero_shot import ZeroShot
from clip_adapter.prompts import ClassText

from conftest import clustered

pytestmark = pytest.mark.usefixtures("one_thread")


def _text(t: torch.Tensor, scale: float = 100.0) -> ClassText:
    return ClassText([f"class {i}" for i in range(len(t))], ["a photo of a {}."], t, scale)


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def toy():
    feats, labels, text = clustered(n_classes=4, per_class=6, dim=16, seed=1)
    views = torch.stack([feats + 0.3 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(v))
                         for v in range(3)])
    test = clustered(n_classes=4, per_class=5, dim=16, seed=1, noise=0.8)[0]
    return feats, labels, views, text, test


def _close(a: torch.Tensor, b: np.ndarray, tol: float = 1e-5) -> None:
    b = torch.from_numpy(np.asarray(b)).float()
    assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max())), float((a - b).abs().max())


# -- GDA -------------------------------------------------------------------------------------------------------------
def gda_reference(samples, labels, text, x, alpha, scale=100.0):
    """Wang et al. (ICLR 2024): class means, KS-shrunk shared precision, zero-shot + alpha * linear GDA."""
    s, x, t = _norm(samples.double().numpy()), _norm(x.double().numpy()), _norm(text.double().numpy())
    y = labels.numpy()
    n, d = s.shape
    c = t.shape[0]
    mus = np.stack([s[y == k].mean(0) for k in range(c)])
    centered = s - mus[y]
    cov = np.cov(centered.T)                          # 1 / (N - 1) normalisation, like torch's .cov()
    prec = d * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(d))
    w = mus @ prec
    b = np.log(1.0 / c) - 0.5 * np.einsum("cd,de,ce->c", mus, prec, mus)
    return scale * x @ t.T + alpha * (x @ w.T + b)


@pytest.mark.parametrize("use_views", [False, True])
def test_gda_logits_match_the_published_formula(toy, use_views):
    feats, labels, views, text, test = toy
    m = get_method("gda", alpha=0.7).fit(feats, labels, text=_text(text), views=views if use_views else None)
    samples = views.reshape(-1, feats.shape[1]) if use_views else feats
    sample_labels = labels.repeat(3) if use_views else labels
    _close(m.logits(test), gda_reference(samples, sample_labels, text, test, 0.7))


def test_gda_alpha_zero_is_zero_shot(toy):
    feats, labels, views, text, test = toy
    m = get_method("gda", alpha=0.0).fit(feats, labels, text=_text(text))
    assert torch.allclose(m.logits(test), ZeroShot().fit(text=_text(text)).logits(test), atol=1e-5)


def test_gda_needs_more_samples_than_classes(toy):
    feats, labels, views, text, _ = toy
    one = torch.tensor([int((labels == k).nonzero()[0]) for k in range(4)])
    with pytest.raises(ValueError, match=r"^Method 'gda' needs more training samples than classes .* got 4 \(images "
                                         r"x views\) for 4 classes\. Use 2\+ shots or augmented views \(--views\)\.$"):
        get_method("gda").fit(feats[one], labels[one], text=_text(text))
    # one shot with augmented views is enough (the authors' 1-shot setting)
    get_method("gda").fit(feats[one], labels[one], text=_text(text), views=views[:, one])


# -- ProKeR ----------------------------------------------------------------------------------------------------------
def proker_reference(samples, labels, text, x, beta, lmbda):
    """Bendou et al. (CVPR 2025): kernel ridge regression of the residual to the (unscaled) zero-shot predictor."""
    s, x, t = _norm(samples.double().numpy()), _norm(x.double().numpy()), _norm(text.double().numpy())
    y = np.eye(t.shape[0])[labels.numpy()]
    k_ss = np.exp(-beta * (1 - s @ s.T))
    a = np.linalg.solve(k_ss / lmbda + np.eye(len(s)), y - s @ t.T)
    return x @ t.T + np.exp(-beta * (1 - x @ s.T)) @ a


@pytest.mark.parametrize("views_mode", ["mean", "all", None])
def test_proker_logits_match_the_published_formula(toy, views_mode):
    feats, labels, views, text, test = toy
    cfg = {"beta": 2.5, "lmbda": 0.3, **({"views": views_mode} if views_mode else {})}
    m = get_method("proker", **cfg).fit(feats, labels, text=_text(text), views=views if views_mode else None)
    if views_mode == "all":
        samples, sample_labels = views.reshape(-1, feats.shape[1]), labels.repeat(3)
    elif views_mode == "mean":
        samples, sample_labels = torch.nn.functional.normalize(views.mean(0), dim=-1), labels
    else:
        samples, sample_labels = feats, labels
    _close(m.logits(test), proker_reference(samples, sample_labels, text, test, 2.5, 0.3))


def test_proker_small_lambda_is_zero_shot_and_search_reuses_nothing_wrong(toy):
    feats, labels, _, text, test = toy
    zs = ZeroShot().fit(text=_text(text))
    m = get_method("proker", lmbda=1e-9).fit(feats, labels, text=_text(text))
    assert torch.equal(m.predict(test), zs.predict(test))
    # a refit with another lambda on the same data (the memoised decomposition) equals a fresh computation
    m2 = get_method("proker", beta=1.7, lmbda=0.5).fit(feats, labels, text=_text(text))
    _close(m2.logits(test), proker_reference(feats, labels, text, test, 1.7, 0.5))


# -- hand steps for the trained methods ------------------------------------------------------------------------------
def cosine_grad(f, w, y, scale):
    """Cross-entropy of ``scale * norm(f) @ norm(w)^T`` (mean over rows): its gradient w.r.t. ``w``."""
    fn, wn = _norm(f), _norm(w)
    p = _softmax(scale * fn @ wn.T)
    g_logits = (p - np.eye(w.shape[0])[y]) / len(f)
    g_wn = scale * g_logits.T @ fn
    norms = np.linalg.norm(w, axis=-1, keepdims=True)
    return (g_wn - (g_wn * wn).sum(-1, keepdims=True) * wn) / norms


def test_zs_lp_first_step_by_hand(toy):
    feats, labels, _, text, _ = toy
    m = get_method("zs_lp", epochs=1).fit(feats, labels, text=_text(text))   # one full batch (24 < 256) at lr 0.1
    w0 = text.double().numpy()
    expected = w0 - 0.1 * cosine_grad(feats.double().numpy(), w0, labels.numpy(), 100.0)
    _close(m.weight_, expected, 1e-4)


def test_clap_lambda_by_hand_and_penalty_pulls_towards_zero_shot(toy):
    feats, labels, views, text, _ = toy
    clap = get_method("clap", epochs=20).fit(feats, labels, text=_text(text), views=views)
    s = views.reshape(-1, 16).double().numpy()
    probs = _softmax(100.0 * _norm(s) @ _norm(text.double().numpy()).T)
    y = labels.repeat(3).numpy()
    _close(clap.lambda_, np.array([probs[y == k, k].mean() for k in range(4)]))
    zslp = get_method("zs_lp", epochs=20).fit(feats, labels, text=_text(text), views=views)
    dist = lambda m: float((m.weight_ - text).norm(dim=-1).sum())  # noqa: E731
    assert dist(clap) < dist(zslp)
    # the penalty's gradient is 0 at the zero-shot init: the first step is ZS-LP's
    one = get_method("clap", epochs=1).fit(feats, labels, text=_text(text))
    assert torch.allclose(one.weight_, get_method("zs_lp", epochs=1).fit(feats, labels, text=_text(text)).weight_)


def test_taskres_first_step_by_hand_and_alpha_zero_is_zero_shot(toy):
    feats, labels, _, text, test = toy
    m = get_method("taskres", epochs=1).fit(feats, labels, text=_text(text))
    t = text.double().numpy()
    g = 0.5 * cosine_grad(feats.double().numpy(), t, labels.numpy(), 100.0)   # d loss / d x = alpha * d loss / d t'
    # Adam's first step from x = 0 (weight decay adds 0): -lr * g / (|g| + eps), bias corrections cancel
    _close(m.residual_, -2e-3 * g / (np.abs(g) + 1e-8), 1e-4)
    zero = get_method("taskres", alpha=0.0, epochs=2).fit(feats, labels, text=_text(text))
    assert torch.allclose(zero.logits(test), ZeroShot().fit(text=_text(text)).logits(test), atol=1e-5)


def test_lp_pp_initialisation_and_first_step_by_hand(toy):
    feats, labels, _, text, _ = toy
    m = get_method("lp_pp", epochs=1).fit(feats, labels, text=_text(text))
    f, t, y = _norm(feats.double().numpy()), _norm(text.double().numpy()), labels.numpy()
    n, c = len(f), 4
    onehot = np.eye(c)[y]
    w0 = onehot.T @ f                                       # class sums
    b0 = (torch.rand(c, generator=torch.Generator().manual_seed(1)) * 2 - 1).double().numpy() / 4  # 1/sqrt(16)
    tl = f @ t.T
    alpha0 = 250 * np.mean(onehot.T @ tl / onehot.sum(0)[:, None])
    lr_w = 4 * n / np.linalg.eigvalsh(f.T @ f).max()
    assert m.history_["lr_w"] == pytest.approx(lr_w, rel=1e-5)
    assert m.history_["lr_alpha"] == pytest.approx(n / (4 * (tl ** 2).sum(0).max()), rel=1e-5)
    p = _softmax(f @ w0.T + b0 + alpha0 * tl)
    g = (p - onehot) / n
    _close(m.weight_, w0 - lr_w * g.T @ f, 1e-4)
    _close(m.bias_, b0 - lr_w * g.sum(0), 1e-4)
    _close(m.alpha_, np.full(c, alpha0))                     # alpha steps every 10 epochs, not at epoch 1


@pytest.mark.parametrize("name", ["lp_pp", "zs_lp", "clap", "taskres"])
def test_trained_methods_converge_on_a_separable_toy(name):
    feats, labels, text = clustered(n_classes=4, per_class=10, dim=16, noise=0.2, seed=5)
    # unit-norm text like CLIP's (TaskRes's lr assumes it), perturbed so that zero-shot gets 75% right
    text = F.normalize(text + 2.0 * torch.randn(text.shape, generator=torch.Generator().manual_seed(3)), dim=-1)
    zero_shot = float((ZeroShot().fit(text=_text(text)).predict(feats) == labels).float().mean())
    m = get_method(name).fit(feats, labels, text=_text(text))
    assert zero_shot < 1.0 and float((m.predict(feats) == labels).float().mean()) == 1.0
    losses = m.history_["loss"]
    assert losses[-1] < min(0.1, losses[0])
