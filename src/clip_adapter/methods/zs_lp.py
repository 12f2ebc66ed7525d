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
import torch.nn.functional as F
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

    def penalty_lambda(self) -> torch.Tensor | None:
        """The per-class weights ``lambda_c`` when :meth:`penalty` is CLAP's ``mean_c lambda_c ||w_c - t_c||^2``
        (then the hand-written step computes it); None otherwise."""
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

        penalty = self.penalty(weight, labels, features, views)
        pull = self.penalty_lambda()
        # ZS-LP, and CLAP's pull, train through a hand-written step (autograd's operations, the same bits).
        step = _ProbeStep(weight, self.text_features_.to(dev), scale, pull) \
            if penalty is None or pull is not None else None
        self.history_ = train_loop([weight], logits_fn, features, labels, c, views=views, drop_last=self.drop_last,
                                   penalty=None if step is not None else penalty, step=step)
        self.weight_ = weight.detach().cpu()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self._check_features(features), self.weight_, self.logit_scale_)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "fixed.text_features": self.text_features_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.text_features_ = tensors["weight"], tensors["fixed.text_features"]


class _ProbeStep:
    """One training step of the cosine probe (``train_loop``'s ``step``), with CLAP's pull when ``lam`` is given:
    forward and backward by hand, the operations autograd runs for ``logits_fn`` (+ the penalty), in its order,
    so the gradient is the same bits (tests/test_fastfit.py)."""

    def __init__(self, weight: nn.Parameter, text: torch.Tensor, scale: float, lam: torch.Tensor | None):
        self.weight, self.text, self.scale = weight, text, scale
        self.lam = None if lam is None else lam.to(weight.device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight.detach()
        scaled = F.normalize(x, dim=-1) * self.scale
        norm = torch.linalg.vector_norm(w, 2, -1, keepdim=True)
        denom = norm.clamp_min(1e-12).expand_as(w)
        logits = torch.mm(scaled, (w / denom).t())
        logp = torch.log_softmax(logits, 1)
        loss, total = torch.ops.aten.nll_loss_forward(logp, y, None, 1, -100)
        g = torch.ops.aten.nll_loss_backward(torch.ones((), dtype=w.dtype, device=w.device), logp, y, None, 1,
                                             -100, total)
        g = torch._log_softmax_backward_data(g, logp, 1, logp.dtype)
        g_unit = torch.mm(g.t(), scaled)                              # mm's backward for the (C, d) side
        g_div = g_unit / denom                                        # F.normalize's backward, term by term
        g_den = (-g_unit * ((w / denom) / denom)).sum(-1, keepdim=True)
        g_norm = torch.where(norm >= 1e-12, g_den, torch.zeros((), dtype=w.dtype, device=w.device)) \
            * (w / norm).masked_fill_(norm == 0, 0)
        if self.lam is None:
            self.weight.grad = g_div + g_norm
            return loss, logits
        diff = w - self.text                                          # CLAP: mean_c lam_c ||w_c - t_c||^2
        loss = loss + (self.lam * diff.pow(2).sum(-1)).mean()
        n = w.shape[0]
        g_sum = ((torch.ones((), dtype=w.dtype, device=w.device).expand(n) / n) * self.lam).unsqueeze(-1)
        g_pull = g_sum.expand_as(w) * (2 * diff.pow(1))
        self.weight.grad = (g_div + g_pull) + g_norm                  # the order autograd accumulates them in
        return loss, logits
