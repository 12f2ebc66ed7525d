"""Linear-probe CLIP: multinomial logistic regression on L2-normalised image features (scikit-learn)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Interval, MethodConfig, setting
from ..prompts import ClassText
from .base import FewShotMethod, register_method


@dataclass(frozen=True)
class LinearProbeConfig(MethodConfig):
    C: float = setting(1.0, "inverse L2 regularisation strength; chosen on val by the experiment runner",
                       Interval(float, 0, closed="neither", text="a float in the range (0, inf)"))
    max_iter: int = setting(1000, "L-BFGS iterations at most", Interval(int, 1))


@register_method("linear_probe")
class LinearProbe(FewShotMethod):
    """Linear probe (Radford et al., 2021; CoOp's baseline): sklearn ``LogisticRegression(C)`` on normalised
    features. Logits are recomputed in torch from ``coef_``/``intercept_`` so a loaded model is exact."""

    config_cls = LinearProbeConfig
    # CoOp's lpclip search, one decade finer: C = 1e6 .. 1e-6, then quarter-decades around the best (refine_grid).
    # Largest first, as lpclip's list: a tie (a plateau of small C is common on a few-shot val set) keeps the larger C.
    default_grid = {"C": [10.0 ** k for k in range(6, -7, -1)]}
    trainable = ("coef", "intercept")

    @classmethod
    def refine_grid(cls, grid: dict[str, list], chosen: dict[str, Any]) -> dict[str, list]:
        """Quarter-decades within one decade of the chosen C (CoOp's lpclip refines around its coarse choice)."""
        if "C" not in chosen:
            return {}
        return {"C": [float(chosen["C"] * 10.0 ** (j / 4)) for j in (-3, -2, -1, 1, 2, 3)]}

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        from sklearn.linear_model import LogisticRegression
        n_classes = len(text.classnames)
        x = F.normalize(features.float(), dim=-1).numpy()
        y = labels.numpy()
        present = sorted(set(y.tolist()))
        clf = LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, random_state=self.config.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at tiny C is expected in the C search
            clf.fit(x, y)
        coef = torch.full((n_classes, x.shape[1]), 0.0)
        intercept = torch.full((n_classes,), -1e4)  # a class absent from training is never predicted
        if len(present) == 2:  # sklearn's binary case stores one row; expand to two logits
            w, b = torch.from_numpy(clf.coef_[0]).float(), float(clf.intercept_[0])
            coef[present[0]], coef[present[1]] = -w / 2, w / 2
            intercept[present[0]], intercept[present[1]] = -b / 2, b / 2
        else:
            coef[present] = torch.from_numpy(clf.coef_).float()
            intercept[present] = torch.from_numpy(clf.intercept_).float()
        self.coef_, self.intercept_ = coef, intercept

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self._check_features(features), dim=-1)
        return x @ self.coef_.t() + self.intercept_

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]
