"""TaskRes, Task Residual tuning (Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023): the
zero-shot text classifier plus a learned, scaled residual.

    t'_c = t_c + alpha * x_c,      x initialised at 0
    logits = logit_scale * normalize(f) @ normalize(t')^T

Trained: the residual ``x`` (C x d) with cross-entropy on the augmented views; ``t`` (the prompt-ensembled raw text
features) stays fixed. The authors' settings (``train_regular.sh``, Dassl defaults for the rest): alpha = 0.5 on
every dataset but Flowers102 (alpha = 1.0); Adam, lr 2e-3 (2e-4 on ImageNet), weight decay 5e-4, batch 256,
100 epochs for 1-4 shots and 200 for 8-16, cosine after one constant warm-up epoch at 1e-5, Dassl's drop-last.
They fix alpha per dataset by hand; here alpha defaults to 0.5 and is not searched unless a grid is given
(``--grid alpha=0.5,1.0``).
Authors' code: github.com/geekyutao/TaskRes (``trainers/taskres.py``, ``TaskResLearner``); re-implemented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Interval, NoneOr, setting
from ..prompts import ClassText
from ..training import TrainingConfig, train_loop
from .base import FewShotMethod, register_method
from .common import cosine_logits

__all__ = ["TaskResConfig", "TaskRes", "taskres_epochs"]


def taskres_epochs(shots: int) -> int:
    """The authors' schedule: 100 epochs for 1-4 shots, 200 for 8 and 16."""
    return 100 if shots <= 4 else 200


@dataclass(frozen=True)
class TaskResConfig(TrainingConfig):
    alpha: float = setting(0.5, "residual scale (the paper's; 1.0 for Flowers102)", Interval(float, 0))
    epochs: int | None = setting(None, "training epochs; None: by shots per class (1-4: 100, 8-16: 200)",
                                 NoneOr(Interval(int, 1), none="None (by shots per class)"))
    batch_size: int = setting(256)
    lr: float = setting(2e-3)
    optimizer: str = setting("adam", "Dassl's Adam (L2 weight decay 5e-4)")
    weight_decay: float = setting(5e-4)


@register_method("taskres")
class TaskRes(FewShotMethod):
    """TaskRes: learns a residual ``x`` on the frozen text classifier, ``t + alpha * x``."""

    config_cls = TaskResConfig
    trainable = ("residual",)

    def _classifier(self, residual: torch.Tensor) -> torch.Tensor:
        return self.text_features_.to(residual.device) + self.config.alpha * residual

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        c = self.config
        self.text_features_ = text.features.float().clone()
        residual = nn.Parameter(torch.zeros_like(self.text_features_).to(c.device))
        counts = torch.bincount(labels, minlength=len(text.classnames))
        self.epochs_ = c.epochs if c.epochs is not None else taskres_epochs(int(counts.max()) if counts.numel() else 0)
        scale = self.logit_scale_

        def logits_fn(x: torch.Tensor) -> torch.Tensor:
            return cosine_logits(x, self._classifier(residual), scale)

        self.history_ = train_loop([residual], logits_fn, features, labels, c.replace(epochs=self.epochs_),
                                   views=views, drop_last=self.drop_last)
        self.residual_ = residual.detach().cpu()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self._check_features(features), self._classifier(self.residual_), self.logit_scale_)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"residual": self.residual_, "fixed.text_features": self.text_features_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.residual_, self.text_features_ = tensors["residual"], tensors["fixed.text_features"]
