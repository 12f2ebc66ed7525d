"""CLIP-Adapter (Gao et al., IJCV 2024): a bottleneck MLP on frozen CLIP features, blended residually.

    f' = alpha * A(f) + (1 - alpha) * f,    A = Linear(d, d/r) -> ReLU -> Linear(d/r, d) -> ReLU
    logits = logit_scale * normalize(img') @ normalize(txt').T

The adapter acts on the raw features and both sides are L2-normalised after the blend, as in the official
``clip_adapter.py``. It can sit on the image side, the text side, or both (each with its own alpha).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Bool, Interval, Options
from ..prompts import ClassText
from ..training import TrainingConfig, train_loop
from .base import FewShotMethod, register_method
from .common import Adapter, blend, cosine_logits

__all__ = ["ClipAdapterConfig", "ClipAdapter"]


@dataclass(frozen=True)
class ClipAdapterConfig(TrainingConfig):
    alpha: float = 0.2          # residual ratio of the image adapter: alpha * A(f) + (1 - alpha) * f
    alpha_text: float = 0.2     # residual ratio of the text adapter (target "text" or "both")
    target: str = "image"       # where adapters sit: "image", "text" or "both"
    reduction: int = 4          # hidden = dim // reduction
    bias: bool = False
    final_relu: bool = True

    constraints = {"alpha": Interval(float, 0, 1), "alpha_text": Interval(float, 0, 1),
                   "target": Options(("image", "text", "both")), "reduction": Interval(int, 1),
                   "bias": Bool(), "final_relu": Bool()}


@register_method("clip_adapter")
class ClipAdapter(FewShotMethod):
    """CLIP-Adapter: trains the adapter(s) with cross-entropy on cached (augmented) features."""

    config_cls = ClipAdapterConfig
    default_grid = {"alpha": [0.2, 0.4, 0.6, 0.8]}
    trainable = ("image_adapter.*", "text_adapter.*")
    unseen_classes = "transfer"   # the adapters map any feature: new class names need only their text features

    def _build(self, dim: int) -> None:
        c = self.config
        # Seeded init without touching the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.image_adapter_ = Adapter(dim, c.reduction, c.bias, c.final_relu) if c.target != "text" else None
            self.text_adapter_ = Adapter(dim, c.reduction, c.bias, c.final_relu) if c.target != "image" else None

    def _adapters(self) -> list[nn.Module]:
        return [a for a in (self.image_adapter_, self.text_adapter_) if a is not None]

    def _logits(self, img: torch.Tensor) -> torch.Tensor:
        img = blend(img, self.image_adapter_, self.config.alpha)
        txt = blend(self.text_features_, self.text_adapter_, self.config.alpha_text)
        return cosine_logits(img, txt, self.logit_scale_)

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        self.text_features_ = text.features.float().clone().to(self.config.device)
        self._build(features.shape[1])
        params = []
        for a in self._adapters():
            a.to(self.config.device).train()
            params += list(a.parameters())
        self.history_ = train_loop(params, self._logits, features, labels, self.config, views=views, drop_last=self.drop_last)
        for a in self._adapters():
            a.cpu().eval().requires_grad_(False)
        self.text_features_ = self.text_features_.cpu()

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(self._check_features(features))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"fixed.text_features": self.text_features_}
        for prefix, a in (("image_adapter.", self.image_adapter_), ("text_adapter.", self.text_adapter_)):
            if a is not None:
                out.update({prefix + k: v for k, v in a.state_dict().items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.text_features_ = tensors["fixed.text_features"]
        self._build(int(meta["embed_dim"]))
        for prefix, a in (("image_adapter.", self.image_adapter_), ("text_adapter.", self.text_adapter_)):
            if a is not None:
                sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                a.load_state_dict(sd, strict=True)
                a.eval().requires_grad_(False)
