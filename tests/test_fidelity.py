"""Fidelity: ClipAdapter's logits equal the paper's published forward pass on identical weights.

The reference below is written independently from plain ``torch.nn.functional`` ops, following the official
CLIP-Adapter code (gaopengcuhk/CLIP-Adapter, ``trainers/clip_adapter.py``)::

    x = self.adapter(image_features)                   # Linear(d, d//4, bias=False) -> ReLU
                                                       # -> Linear(d//4, d, bias=False) -> ReLU
    image_features = ratio * x + (1 - ratio) * image_features
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = logit_scale * image_features @ text_features.t()

The paper's text-side variant applies the same residual adapter to the text features (its own weights and
ratio) before normalisation; "both" applies one to each side. Weights are random tensors copied into a fitted
ClipAdapter with ``load_state_tensors``, so both sides compute with the very same numbers.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip_adapter.methods import get_method
from clip_adapter.prompts import ClassText

DIM, N_CLASSES, N_IMAGES, SCALE = 64, 7, 20, 100.0
ALPHAS = [0.0, 0.2, 0.6, 1.0]
# Logits are logit_scale * cosine, up to 100 in magnitude; float32 rounding there is ~1e-5 absolute, so the
# comparison allows 1e-5 absolute plus 1e-5 relative (the differences measured are ~1e-6 on cosines).
TOL = dict(atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------- the paper's forward pass

def paper_adapter(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Linear(d, d//4, bias=False) -> ReLU -> Linear(d//4, d, bias=False) -> ReLU."""
    return F.relu(F.linear(F.relu(F.linear(x, w1)), w2))


def paper_logits(image, text, scale, img_w=None, img_ratio=0.0, txt_w=None, txt_ratio=0.0):
    if img_w is not None:
        x = paper_adapter(image, *img_w)
        image = img_ratio * x + (1 - img_ratio) * image
    if txt_w is not None:
        t = paper_adapter(text, *txt_w)
        text = txt_ratio * t + (1 - txt_ratio) * text
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return scale * image @ text.t()


# ------------------------------------------------------------------------------------------------------- fixtures

def _weights(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Centred weights: about half the pre-activations are negative, so both ReLUs matter.
    return (torch.randn(DIM // 4, DIM, generator=g) / DIM ** 0.5,
            torch.randn(DIM, DIM // 4, generator=g) / (DIM // 4) ** 0.5)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: extra threads only add synchronisation


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    # Raw (un-normalised) features with varied norms, so a missing normalisation after the blend would show.
    image = torch.randn(N_IMAGES, DIM, generator=g) * torch.linspace(0.5, 8.0, N_IMAGES).unsqueeze(1)
    text = torch.randn(N_CLASSES, DIM, generator=g) * 3.0
    labels = torch.arange(N_IMAGES) % N_CLASSES
    return image, text, labels


def _fitted(target: str, alpha: float, data) -> "object":
    """A ClipAdapter fitted for one epoch through the public API, then given known weights."""
    image, text, labels = data
    ct = ClassText([f"c{i}" for i in range(N_CLASSES)], ["a photo of a {}."], text.clone(), SCALE)
    # "text": the parametrised alpha is the text ratio; "both": the text side gets 1 - alpha (covers 0 and 1 too).
    alpha_text = alpha if target == "text" else round(1 - alpha, 6)
    m = get_method("clip_adapter", target=target, alpha=alpha, alpha_text=alpha_text, epochs=1, seed=0)
    m.fit(image, labels, text=ct)
    tensors = {"fixed.text_features": text.clone()}
    if target in ("image", "both"):
        w1, w2 = _weights(1)
        tensors.update({"image_adapter.fc.0.weight": w1.clone(), "image_adapter.fc.2.weight": w2.clone()})
    if target in ("text", "both"):
        w1, w2 = _weights(2)
        tensors.update({"text_adapter.fc.0.weight": w1.clone(), "text_adapter.fc.2.weight": w2.clone()})
    m.load_state_tensors(tensors, {"embed_dim": DIM})   # strict: any other architecture fails here
    return m


# ---------------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("target", ["image", "text", "both"])
def test_logits_match_paper_forward(target, alpha, data):
    image, text, _ = data
    m = _fitted(target, alpha, data)
    a_txt = m.config.alpha_text
    ref = paper_logits(image, text, SCALE,
                       img_w=_weights(1) if target != "text" else None, img_ratio=alpha,
                       txt_w=_weights(2) if target != "image" else None, txt_ratio=a_txt)
    got = m.logits(image)
    torch.testing.assert_close(got, ref, **TOL)
    assert torch.equal(m.predict(image), got.argmax(-1))


def test_saved_model_keeps_the_papers_logits(data, tmp_path):
    from clip_adapter.methods.base import FewShotMethod
    image, text, _ = data
    m = _fitted("both", 0.6, data)
    loaded = FewShotMethod.from_pretrained(m.save_pretrained(tmp_path / "model"))
    ref = paper_logits(image, text, SCALE, img_w=_weights(1), img_ratio=0.6, txt_w=_weights(2),
                       txt_ratio=m.config.alpha_text)
    torch.testing.assert_close(loaded.logits(image), ref, **TOL)


def test_adapter_architecture_is_the_papers(data):
    m = _fitted("both", 0.6, data)
    for adapter in (m.image_adapter_, m.text_adapter_):
        linears = [mod for mod in adapter.modules() if isinstance(mod, torch.nn.Linear)]
        assert [tuple(lin.weight.shape) for lin in linears] == [(DIM // 4, DIM), (DIM, DIM // 4)]
        assert all(lin.bias is None for lin in linears)
        assert sum(isinstance(mod, torch.nn.ReLU) for mod in adapter.modules()) == 2


def test_reference_is_discriminative(data):
    """The comparison would catch the likely mistakes: no normalisation after the blend, or no final ReLU.

    (Normalising *before* the blend as well changes nothing: a bias-free ReLU adapter is positively homogeneous,
    A(c x) = c A(x), so the blend scales with the input and the final normalisation removes the scale.)
    """
    image, text, _ = data
    w1, w2 = _weights(1)
    ref = paper_logits(image, text, SCALE, img_w=(w1, w2), img_ratio=0.6)
    pre_norm = F.normalize(image, dim=-1)
    blend_of_normalised = 0.6 * paper_adapter(pre_norm, w1, w2) + 0.4 * pre_norm
    not_renormalised = SCALE * blend_of_normalised @ F.normalize(text, dim=-1).t()
    no_final_relu = paper_logits(0.6 * F.linear(F.relu(F.linear(image, w1)), w2) + 0.4 * image, text, SCALE)
    torch.testing.assert_close(paper_logits(blend_of_normalised, text, SCALE), ref, **TOL)  # homogeneity
    for wrong in (not_renormalised, no_final_relu):
        assert (wrong - ref).abs().max() > 1e-2
