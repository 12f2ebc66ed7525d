"""Zero-shot CLIP: cosine similarity between image features and class text features, times the logit scale."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import MethodConfig
from ..prompts import ClassText
from .base import FewShotMethod, register_method
from .common import cosine_logits


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    """Zero-shot CLIP has no hyper-parameters."""


@register_method("zero_shot")
class ZeroShot(FewShotMethod):
    """Zero-shot CLIP (Radford et al., 2021): no training; ``fit`` only stores the text head."""

    config_cls = ZeroShotConfig
    trains = False
    unseen_classes = "transfer"   # the classifier is the class names' text features

    def fit(self, features: torch.Tensor | None = None, labels: torch.Tensor | None = None, *, text: ClassText,
            views: torch.Tensor | None = None) -> "ZeroShot":
        """Stores the text head; ``features``/``labels`` may be omitted (they are not used)."""
        return super().fit(features, labels, text=text, views=views)

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        self.text_features_ = text.features.float().clone()
        self.logit_bias_ = float(text.logit_bias)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's own zero-shot logits (with SigLIP's logit bias; 0 for CLIP)."""
        return cosine_logits(self._check_features(features), self.text_features_, self.logit_scale_,
                             getattr(self, "logit_bias_", 0.0))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        bias = getattr(self, "logit_bias_", 0.0)
        return {"fixed.text_features": self.text_features_, **({"fixed.logit_bias": torch.tensor([bias])} if bias
                                                               else {})}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.text_features_ = tensors["fixed.text_features"]
        self.logit_bias_ = float(tensors["fixed.logit_bias"].item()) if "fixed.logit_bias" in tensors else 0.0
