"""LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024): a linear probe
whose class weights blend visual prototypes with the text weights through learned per-class multipliers.

    f = normalize(image feature),  t_c = normalize(class text feature c)
    logit_c(f) = f . w_c + b_c + alpha_c * (f . t_c)
    w_c initialised at the sum of the class-c support features (the authors' unnormalised centroid), b as
    torch's Linear init (seeded), alpha_c at 250 * mean_{i, c'} f_i . t_c' (one value for all classes)

Trained, full batch, no validation: ``w``, ``b`` by SGD (momentum 0.9) with the data-driven step
``lr_w = 4 N / lambda_max(F^T F)``, and ``alpha`` by plain gradient steps every 10 epochs with
``lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2)`` (the block-coordinate Lipschitz steps of the paper), 300 epochs.
As in the authors' code the gradient of ``alpha`` is never reset, so each alpha step uses the sum of its
gradients since the start. The authors keep the epoch with the best validation accuracy (their few-shot val set);
we keep the last (``hp_selection`` none) and, where they use one augmented pass of the support set, use the
first cached view (or the clean features without views).
Authors' code: github.com/FereshteShakeri/FewShot-CLIP-Strong-Baseline (``methods/linear_probe_p2.py``);
re-implemented, no code copied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Interval, MethodConfig, setting
from ..io import torch_threads
from ..prompts import ClassText
from .base import FewShotMethod, register_method

__all__ = ["LpPpConfig", "LpPp", "lp_pp_init"]


def lp_pp_init(f: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, n_classes: int,
               gen: torch.Generator) -> dict[str, torch.Tensor | float]:
    """Initial ``w``, ``b``, ``alpha`` and the two step sizes for normalised support ``f`` and text ``t``."""
    n, d = f.shape
    onehot = F.one_hot(labels, n_classes).float()
    bound = 1 / math.sqrt(d)  # torch.nn.Linear's default bias init
    text_logits = f @ t.t()
    per_class = (onehot.t() @ text_logits) / onehot.sum(0).clamp_min(1).unsqueeze(1)  # (C, C) class means
    return {"weight": onehot.t() @ f,
            "bias": (torch.rand(n_classes, generator=gen) * 2 - 1) * bound,
            "alpha": torch.full((n_classes,), 250 * float(per_class.mean())),
            "lr_w": 4 * n / float(torch.linalg.eigvalsh((f.t() @ f).double()).max()),
            "lr_alpha": n / (4 * float(text_logits.pow(2).sum(0).max()))}


@dataclass(frozen=True)
class LpPpConfig(MethodConfig):
    epochs: int = setting(300, "full-batch iterations", Interval(int, 1))
    alpha_every: int = setting(10, "alpha takes a step every this many epochs", Interval(int, 1))
    momentum: float = setting(0.9, "SGD momentum of w and b", Interval(float, 0, 1, closed="left"))


@register_method("lp_pp")
class LpPp(FewShotMethod):
    """LP++: visual prototypes plus per-class weighted text logits, with data-driven step sizes."""

    config_cls = LpPpConfig
    trainable = ("weight", "bias", "alpha")

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        c = self.config
        f = F.normalize(views[0] if views is not None else features, dim=-1)
        self.text_features_ = text.features.float().clone()
        t = F.normalize(self.text_features_, dim=-1)
        init = lp_pp_init(f, labels, t, len(text.classnames), torch.Generator().manual_seed(c.seed))
        w = init["weight"].clone().requires_grad_(True)
        b = init["bias"].clone().requires_grad_(True)
        alpha = init["alpha"].clone().requires_grad_(True)
        opt = torch.optim.SGD([w, b], lr=init["lr_w"], momentum=c.momentum)
        text_logits = f @ t.t()
        self.history_ = {"loss": [], "lr_w": init["lr_w"], "lr_alpha": init["lr_alpha"]}
        with torch_threads(1):  # C x d full-batch steps: threads only add synchronisation
            for epoch in range(c.epochs):
                loss = F.cross_entropy(f @ w.t() + b + alpha * text_logits, labels)
                opt.zero_grad(set_to_none=True)  # w, b only: alpha's gradient accumulates, as the authors'
                loss.backward()
                opt.step()
                if (epoch + 1) % c.alpha_every == 0:
                    with torch.no_grad():
                        alpha -= init["lr_alpha"] * alpha.grad
                self.history_["loss"].append(loss.item())
        self.weight_, self.bias_, self.alpha_ = w.detach(), b.detach(), alpha.detach()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self._check_features(features), dim=-1)
        t = F.normalize(self.text_features_, dim=-1)
        return f @ self.weight_.t() + self.bias_ + self.alpha_ * (f @ t.t())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_, "alpha": self.alpha_,
                "fixed.text_features": self.text_features_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.bias_, self.alpha_ = tensors["weight"], tensors["bias"], tensors["alpha"]
        self.text_features_ = tensors["fixed.text_features"]
