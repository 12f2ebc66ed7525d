"""ZS-LP (Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models",
CVPR 2024): a linear probe on CLIP's cosine classifier, initialised at the zero-shot text weights.

    logits = logit_scale * normalize(f) @ normalize(W)^T,      W (C x d) initialised at the class text features t

Trained: ``W`` (C x d), with cross-entropy on the augmented views. The authors' schedule, fixed (no validation):
SGD lr 0.1, momentum 0.9, no weight decay, batch 256, 300 epochs, cosine after one constant warm-up epoch at 1e-5
(``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``; Dassl defaults for the rest). Their loop draws each epoch's
batches from 20 pooled augmentation passes of the support set; ours draws one cached view per image per epoch
(train_loop), with Dassl's drop-last rule as theirs. CLAP (``clap``) adds its class-adaptive penalty to this probe.
Authors' code: github.com/jusiro/CLAP (``trainers/adapters.py``, INIT ZS, CONSTRAINT none); re-implemented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..prompts import ClassText
from ..config import setting
from ..training import TrainingConfig, train_loop
from .base import FewShotMethod, register_method
from .common import cosine_logits

__all__ = ["ZsLpConfig", "ZsLp"]


@dataclass(frozen=True)
class ZsLpConfig(TrainingConfig):
    epochs: int = setting(300)
    batch_size: int = setting(256)
    lr: float = setting(0.1)
    optimizer: str = setting("sgd")
    momentum: float = setting(0.9)
    weight_decay: float = setting(0.0)


@register_method("zs_lp")
class ZsLp(FewShotMethod):
    """ZS-LP: the class weights of CLIP's cosine classifier, initialised at zero-shot and trained."""

    config_cls = ZsLpConfig
    trainable = ("weight",)

    def penalty(self, weight: nn.Parameter, labels: torch.Tensor, features: torch.Tensor,
                views: torch.Tensor | None):
        """An extra loss term on ``weight`` (CLAP's); ZS-LP has none."""
        return None

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        c = self.config
        dev = torch.device(c.device)
        self.text_features_ = text.features.float().clone()
        weight = nn.Parameter(self.text_features_.clone().to(dev))
        scale = self.logit_scale_

        def logits_fn(x: torch.Tensor) -> torch.Tensor:
            return cosine_logits(x, weight, scale)

        self.history_ = train_loop([weight], logits_fn, features, labels, c, views=views, drop_last=self.drop_last,
                                   penalty=self.penalty(weight, labels, features, views))
        self.weight_ = weight.detach().cpu()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self._check_features(features), self.weight_, self.logit_scale_)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "fixed.text_features": self.text_features_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.text_features_ = tensors["weight"], tensors["fixed.text_features"]
