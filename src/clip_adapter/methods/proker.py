"""ProKeR (Bendou et al., "ProKeR: A Kernel Perspective on Few-Shot Adaptation of Large Vision-Language Models",
CVPR 2025): kernel ridge regression of the zero-shot predictor's residual, closed form (training-free).

    f = normalize(image feature),  t = normalize(class text features),  f_zs(x) = x t^T      (cosine, unscaled)
    k(x, y) = exp(-beta * (1 - x . y))                          (an RBF kernel on the sphere)
    A = (K_SS / lambda + I)^-1 (Y - f_zs(S))                    (S: the N training samples, Y: one-hot labels)
    logits(x) = f_zs(x) + k(x, S) A

It is the minimiser of sum_i ||y_i - f(s_i)||^2 + lambda ||f - f_zs||_H^2 over the kernel's RKHS: a proximal
regulariser that keeps the adapted predictor near zero-shot (lambda -> 0: zero-shot CLIP). Nothing is trained by
gradient; ``A`` (N x C) is solved for. With beta and lambda fixed this is Tip-Adapter's cache with values solved
instead of copied.

Training samples (``views``): ``"all"`` makes every cached augmented view a sample of its own (N = views x images),
as the authors' code does for the 10 datasets (``main.py --augment-epoch 10``); ``"mean"`` (default) uses one sample
per image, the L2-normalised mean of its views (Tip-Adapter's cache keys): the solve costs O(N^3) and N x N memory,
so "all" does not fit 100 classes x 16 shots x 10 views in seconds on a CPU (the authors themselves keep one
augmentation epoch for ImageNet, ``configs_proker/imagenet.yaml``). Without views, the clean features. The solve
uses the eigendecomposition of K_SS (remembered per training set and beta), so a lambda search costs one
decomposition per beta. Hyper-parameters: ``beta`` and ``lambda`` on
validation. The authors' per-dataset grids (``configs/RN50/configs_proker/*.yaml``) mostly use beta in
linspace(0.1, 10, 20) x lambda in linspace(0.001, 10, 100), searched on a K-shot validation set by default (or the
full val set with their ``tip-adapter`` setting, or ImageNet-averaged values for ImageNet). We keep their beta grid
and the same lambda range on a log scale, 5 values per decade (21 instead of 100: their linear steps of 0.1 leave
one value below 0.1, where their DTD choices lie, 0.2-0.6); 420 points, each a refit that reuses the kernel's
decomposition for its beta.
Authors' code: github.com/ybendou/ProKeR (mirrored as omarnust/BReg-Adapter); re-implemented, no code copied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hashlib

import torch
import torch.nn.functional as F

from ..config import Interval, MethodConfig, Options, setting
from ..prompts import ClassText
from .base import FewShotMethod, register_method
from .common import view_samples

__all__ = ["ProKeRConfig", "ProKeR", "rbf_kernel"]

BETA_GRID = [round(0.1 + i * (10 - 0.1) / 19, 6) for i in range(20)]          # linspace(0.1, 10, 20)
LAMBDA_GRID = [round(10.0 ** (e / 5), 6) for e in range(-15, 6)]               # 1e-3 .. 10, 5 per decade


_EIGEN: dict[tuple[str, float], tuple[torch.Tensor, torch.Tensor]] = {}  # the last few K_SS decompositions


def _kernel_eigh(s: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and vectors of K_SS (float64), remembered for the last few (training set, beta): a search over
    lambda refits with the same samples and beta many times. A memo of a deterministic result: values never
    depend on whether it was cached."""
    key = (hashlib.sha1(s.contiguous().numpy().tobytes()).hexdigest(), float(beta))
    if key not in _EIGEN:
        if len(_EIGEN) >= 4:
            _EIGEN.pop(next(iter(_EIGEN)))
        _EIGEN[key] = torch.linalg.eigh(rbf_kernel(s.double(), s.double(), beta))
    return _EIGEN[key]


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(-beta * (1 - x y^T))`` for L2-normalised rows."""
    return torch.exp(-beta * (1 - x @ y.t()))


@dataclass(frozen=True)
class ProKeRConfig(MethodConfig):
    # (defaults: the authors' ImageNet 16-shot values, configs_proker/hyperparameters.json)
    beta: float = setting(1.7, "kernel sharpness exp(-beta * (1 - cos)); searched on validation",
                          Interval(float, 0, closed="neither"))
    lmbda: float = setting(0.1, "proximal weight lambda: small = stay near zero-shot; searched on validation",
                           Interval(float, 0, closed="neither"))
    views: str = setting("mean", "training samples: 'mean' of each image's views, or 'all' views as samples",
                         Options(("mean", "all")))


@register_method("proker")
class ProKeR(FewShotMethod):
    """ProKeR: zero-shot CLIP plus the kernel ridge regression of its residual on the training samples."""

    config_cls = ProKeRConfig
    default_grid = {"beta": BETA_GRID, "lmbda": LAMBDA_GRID}
    trainable = ("dual_coef",)  # solved in closed form

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        if self.config.views == "mean" and views is not None:
            samples, sample_labels = F.normalize(views.mean(dim=0), dim=-1), labels
        else:
            samples, sample_labels = view_samples(features, labels, views)
        s = F.normalize(samples, dim=-1)
        t = F.normalize(text.features.float(), dim=-1)
        residual = F.one_hot(sample_labels, len(text.classnames)).double() - (s @ t.t()).double()
        # (K / lambda + I)^-1 = U diag(lambda / (ev + lambda)) U^T with K = U diag(ev) U^T (K is PSD).
        ev, u = _kernel_eigh(s, self.config.beta)
        lam = self.config.lmbda
        self.dual_coef_ = (u @ ((lam / (ev.clamp_min(0) + lam)).unsqueeze(1) * (u.t() @ residual))).float()
        self.support_ = s
        self.text_features_ = text.features.float().clone()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self._check_features(features), dim=-1)
        zero_shot = f @ F.normalize(self.text_features_, dim=-1).t()
        return zero_shot + rbf_kernel(f, self.support_, self.config.beta) @ self.dual_coef_

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"dual_coef": self.dual_coef_, "fixed.support": self.support_,
                "fixed.text_features": self.text_features_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.dual_coef_, self.support_ = tensors["dual_coef"], tensors["fixed.support"]
        self.text_features_ = tensors["fixed.text_features"]
