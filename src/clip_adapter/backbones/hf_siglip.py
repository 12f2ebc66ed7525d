"""Hugging Face ``SiglipModel`` (``model_type: siglip``) as a frozen backbone: ``--backbone hf:PATH``.

SigLIP scores each (image, class) pair with a sigmoid: ``logit = logit_scale * cos(image, text) + logit_bias``. The
backbone exposes both (``logit_scale``, ``logit_bias``); they reach :class:`~clip_adapter.prompts.ClassText` and
:func:`~clip_adapter.methods.common.cosine_logits`, so zero-shot logits are SigLIP's own. The bias is the same for
every class, so softmax-based predictions, probabilities and training losses are unchanged by it.

SigLIP was trained on texts padded to the full length with no attention mask (its text tower pools the last
token), so :meth:`HFSiglipBackbone.tokenize` does the same.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .hf import HFBackbone, register_model_type

__all__ = ["HFSiglipBackbone"]


@register_model_type("siglip")
class HFSiglipBackbone(HFBackbone):
    """A transformers ``SiglipModel``, frozen (see :mod:`clip_adapter.backbones.hf`)."""

    model_class = "SiglipModel"
    default_mean_std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")["input_ids"]
        return {"input_ids": ids}
