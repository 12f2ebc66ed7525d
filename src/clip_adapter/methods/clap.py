"""CLAP, CLass-Adaptive linear Probing (Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024): ZS-LP plus a per-class penalty towards the zero-shot weights.

    logits = logit_scale * normalize(f) @ normalize(W)^T,      W initialised at the class text features t
    loss   = CE(logits, y) + (1 / C) * sum_c lambda_c * ||w_c - t_c||^2
    lambda_c = mean over the class-c support samples of softmax(logit_scale * normalize(f) @ normalize(t)^T)_c

``lambda_c`` is set once, before training, from the support set alone: the zero-shot probability of the true
class, so classes zero-shot already gets right stay close to their text weights (the authors' default
``CONSTRAINT l2``: no outer Lagrangian updates, no rescaling). No validation set is used for anything.
Trained: ``W`` (C x d), with ZS-LP's schedule (SGD lr 0.1, batch 256, 300 epochs; see ``zs_lp``). Support
samples for ``lambda_c``: every augmented view (the authors use their 20 augmentation passes), or the features.
Authors' code: github.com/jusiro/CLAP (``trainers/adapters.py``: ``init_lagrangian_multipliers``,
``zero_shot_constraint``); re-implemented, no code copied.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import register_method
from .common import cosine_logits, view_samples
from .zs_lp import ZsLp, ZsLpConfig

__all__ = ["ClapConfig", "Clap", "class_adaptive_lambda"]


def class_adaptive_lambda(samples: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, scale: float,
                          n_classes: int) -> torch.Tensor:
    """``lambda_c``: the mean zero-shot softmax probability of class c over its support samples (0 if absent)."""
    probs = cosine_logits(samples, text, scale).softmax(-1)
    onehot = F.one_hot(labels, n_classes).float()
    return (probs * onehot).sum(0) / onehot.sum(0).clamp_min(1)


@dataclass(frozen=True)
class ClapConfig(ZsLpConfig):
    """ZS-LP's schedule; lambda_c comes from the support set, so there is nothing more to set."""


@register_method("clap")
class Clap(ZsLp):
    """CLAP: ZS-LP with the class-adaptive pull ``lambda_c ||w_c - t_c||^2`` towards zero-shot."""

    config_cls = ClapConfig

    def penalty(self, weight: nn.Parameter, labels: torch.Tensor, features: torch.Tensor,
                views: torch.Tensor | None):
        samples, sample_labels = view_samples(features, labels, views)
        text = self.text_features_.to(weight.device)
        with torch.no_grad():
            lam = class_adaptive_lambda(samples, sample_labels, self.text_features_, self.logit_scale_,
                                        len(self.classes_)).to(weight.device)
        self.lambda_ = lam.cpu()

        def clap_penalty() -> torch.Tensor:
            return (lam * (weight - text).pow(2).sum(-1)).mean()

        return clap_penalty

    def penalty_lambda(self) -> torch.Tensor | None:
        return self.lambda_

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "fixed.lambda": self.lambda_}

    def load_state_tensors(self, tensors, meta) -> None:
        super().load_state_tensors(tensors, meta)
        self.lambda_ = tensors["fixed.lambda"]
