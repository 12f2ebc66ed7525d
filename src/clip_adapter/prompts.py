"""Class text features: the zero-shot head (:class:`ClassText`) from class names and prompt templates.

The per-dataset templates are data in :mod:`clip_adapter.datasets.catalog` (``catalog.json``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .datasets.checks import check_templates
from .datasets.types import DEFAULT_TEMPLATE

__all__ = ["DEFAULT_TEMPLATE", "ClassText", "encode_class_texts", "text_fingerprint"]


@dataclass
class ClassText:
    """The zero-shot head: class names, templates, text features ``(C, dim)`` (raw; see
    :func:`encode_class_texts`) and the backbone's logit scale (CLIP: 100)."""

    classnames: list[str]
    templates: list[str]
    features: torch.Tensor
    logit_scale: float = 100.0
    logit_bias: float = 0.0       # SigLIP's; the same for every class, so softmax outputs do not depend on it

    def __post_init__(self):
        if self.features.ndim != 2 or self.features.shape[0] != len(self.classnames):
            raise ValueError(f"ClassText has {len(self.classnames)} class names but features of shape "
                             f"{tuple(self.features.shape)}; expected ({len(self.classnames)}, dim).")
        if not torch.isfinite(self.features).all():
            raise ValueError("ClassText features contain NaN or inf values; check the backbone's text encoder.")

    def fingerprint(self) -> str:
        """See :func:`text_fingerprint`."""
        return text_fingerprint(self.features)


def text_fingerprint(features: torch.Tensor) -> str:
    """First 16 hex digits of the sha256 of the class text features, L2-normalised and rounded to 1e-4 (so thread
    counts and BLAS rounding do not change it): runs whose zero-shot prior differed show it even when the backbone
    id is the same (e.g. a changed alignment recipe)."""
    q = torch.round(F.normalize(features.detach().float().cpu(), dim=-1) * 1e4).to(torch.int32)
    return hashlib.sha256(q.contiguous().numpy().tobytes()).hexdigest()[:16]


def encode_class_texts(backbone, classnames: Sequence[str], templates: Sequence[str]) -> ClassText:
    """Text features of every class.

    One template: the raw text feature of the prompt (what CLIP-Adapter's text adapter sees in the paper's
    code). Several templates: prompt ensembling, the mean of the L2-normalised features over templates.
    """
    classnames, templates = list(classnames), check_templates(list(templates), "Prompt templates")
    if not classnames or any(not isinstance(c, str) or not c.strip() for c in classnames):
        raise ValueError(f"Class names must be non-empty strings; got {classnames[:5]!r}.")
    prompts = [t.format(c) for c in classnames for t in templates]
    feats = backbone.encode_texts(prompts).float().reshape(len(classnames), len(templates), -1)
    if len(templates) == 1:
        out = feats[:, 0]
    else:
        out = F.normalize(feats, dim=-1).mean(dim=1)
    return ClassText(classnames, templates, out, float(backbone.logit_scale), float(getattr(backbone, "logit_bias", 0.0)))
