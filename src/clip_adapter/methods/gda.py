"""GDA (Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024): Gaussian
discriminant analysis on the few-shot features, added to zero-shot CLIP.

    f = normalize(image feature),  t_c = normalize(class text feature c)
    mu_c = mean of the class-c training features (normalised; every augmented view is a sample)
    S = sum_i (f_i - mu_{y_i}) (f_i - mu_{y_i})^T          (pooled within-class scatter, N samples)
    P = d * (S + tr(S / (N - 1)) * I)^+                      (the authors' shrunk precision; ^+ = pseudo-inverse)
    w_c = P mu_c,   b_c = log(1 / C) - mu_c^T P mu_c / 2     (equal class priors)
    logits = logit_scale * f t^T + alpha * (f W^T + b)

Nothing is trained by gradient: ``fit`` estimates the means and the shared precision in closed form (``W``, ``b``
are saved as learned tensors). ``alpha`` weighs the GDA classifier against zero-shot; the authors search it over
{1e-4, ..., 100} on the validation split (on the test split for ImageNet, ``main_few_shots.py``); we search the
same decades plus half-decades on our validation split (``hp_selection``).

Training samples: as the authors' code (``main_few_shots.py``: ``augment_epoch`` = 10 passes of random-resized-crop
+ flip), every cached augmented view is a sample; without views the clean features are. The covariance needs more
samples than classes (N > C), so one image per class without views is an error.
Authors' code: github.com/mrflogs/ICLR24 (re-implemented here from the paper; no code copied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Interval, MethodConfig, setting
from ..prompts import ClassText
from .base import FewShotMethod, register_method
from .common import cosine_logits, view_samples

__all__ = ["GDAConfig", "GDA", "gda_classifier"]

# The authors' grid (1e-4 .. 100, decades) with half-decades in between: a training-free search costs milliseconds.
ALPHA_GRID = [round(10.0 ** (e / 2), 6) for e in range(-8, 5)]


def gda_classifier(samples: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (C, d), b (C,))`` of the GDA classifier on L2-normalised ``samples`` (float64 inside; a Cholesky
    inverse, equal to the authors' pseudo-inverse since the shrunk scatter is positive definite, and 10x faster)."""
    x = F.normalize(samples.double(), dim=-1)
    d = x.shape[1]
    onehot = F.one_hot(labels, n_classes).double()
    mus = (onehot.t() @ x) / onehot.sum(0).clamp_min(1).unsqueeze(1)
    centered = x - mus[labels]
    scatter = centered.t() @ centered                     # (N - 1) * cov (the centred samples have mean 0)
    shrink = torch.trace(scatter) / (x.shape[0] - 1)      # tr(cov)
    a = scatter + shrink * torch.eye(d, dtype=x.dtype)
    chol, info = torch.linalg.cholesky_ex(a)   # a is SPD whenever shrink > 0: its inverse is the pseudo-inverse
    precision = d * (torch.cholesky_inverse(chol) if int(info) == 0 else torch.linalg.pinv(a))
    w = mus @ precision
    b = torch.log(torch.tensor(1.0 / n_classes, dtype=x.dtype)) - 0.5 * (w * mus).sum(-1)
    return w.float(), b.float()


@dataclass(frozen=True)
class GDAConfig(MethodConfig):
    alpha: float = setting(1.0, "weight of the GDA logits against zero-shot's; searched on validation (ALPHA_GRID)",
                           Interval(float, 0))


@register_method("gda")
class GDA(FewShotMethod):
    """GDA: zero-shot CLIP plus a closed-form Gaussian discriminant (class means, one shared shrunk precision)."""

    config_cls = GDAConfig
    default_grid = {"alpha": ALPHA_GRID}
    logit_params = ("alpha",)  # the means and precision do not depend on it
    trainable = ("weight", "bias")  # estimated in closed form from the training features

    def check_train_data(self, features: torch.Tensor, labels: torch.Tensor, views: torch.Tensor | None) -> None:
        n = len(labels) * (views.shape[0] if views is not None else 1)
        n_classes = len(self.classes_)
        if n <= n_classes:
            raise ValueError(f"Method 'gda' needs more training samples than classes to estimate its shared "
                             f"covariance; got {n} (images x views) for {n_classes} classes. Use 2+ shots or "
                             f"augmented views (--views).")

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        samples, sample_labels = view_samples(features, labels, views)
        self.weight_, self.bias_ = gda_classifier(samples, sample_labels, len(text.classnames))
        self.text_features_ = text.features.float().clone()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self._check_features(features), dim=-1)
        return cosine_logits(f, self.text_features_, self.logit_scale_) + \
            self.config.alpha * (f @ self.weight_.t() + self.bias_)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_, "fixed.text_features": self.text_features_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.bias_ = tensors["weight"], tensors["bias"]
        self.text_features_ = tensors["fixed.text_features"]
