"""Hugging Face ``CLIPModel`` (``model_type: clip``) as a frozen backbone: ``--backbone hf:PATH``.

Softmax scoring, ``logit_scale * cos(image, text)`` (no bias), exactly as OpenAI CLIP; the features are
``get_image_features`` / ``get_text_features`` (projected, raw). Texts are padded to the longest prompt with an
attention mask (CLIP pools the end-of-text token).
"""
from __future__ import annotations

from .hf import HFBackbone, register_model_type

__all__ = ["HFClipBackbone"]


@register_model_type("clip")
class HFClipBackbone(HFBackbone):
    """A transformers ``CLIPModel``, frozen (see :mod:`clip_adapter.backbones.hf`)."""

    model_class = "CLIPModel"
    default_mean_std = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
