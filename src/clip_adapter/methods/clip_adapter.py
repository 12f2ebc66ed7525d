"""CLIP-Adapter (Gao et al., IJCV 2024): a bottleneck MLP on frozen CLIP features, blended residually.

    f' = alpha * A(f) + (1 - alpha) * f,    A = Linear(d, d/r) -> ReLU -> Linear(d/r, d) -> ReLU
    logits = logit_scale * normalize(img') @ normalize(txt').T

The adapter acts on the raw features and both sides are L2-normalised after the blend, as in the official
``clip_adapter.py``. It can sit on the image side, the text side, or both (each with its own alpha).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Bool, Interval, Options, setting
from ..prompts import ClassText
from ..training import TrainingConfig, can_stack, train_loop, train_stacked
from .base import FewShotMethod, register_method
from .common import Adapter, blend, cosine_logits

__all__ = ["ClipAdapterConfig", "ClipAdapter"]


@dataclass(frozen=True)
class ClipAdapterConfig(TrainingConfig):
    alpha: float = setting(0.2, "residual ratio of the image adapter: alpha * A(f) + (1 - alpha) * f",
                           Interval(float, 0, 1))
    alpha_text: float = setting(0.2, "residual ratio of the text adapter (target 'text' or 'both')",
                                Interval(float, 0, 1))
    target: str = setting("image", "where adapters sit: 'image', 'text' or 'both'", Options(("image", "text", "both")))
    reduction: int = setting(4, "bottleneck: hidden = dim // reduction", Interval(int, 1))
    bias: bool = setting(False, "the adapter's linear layers have biases", Bool())
    final_relu: bool = setting(True, "a ReLU after the adapter's second layer (the paper's)", Bool())


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

    @classmethod
    def fit_many(cls, configs: Sequence[ClipAdapterConfig], features: torch.Tensor, labels: torch.Tensor, *,
                 text: ClassText, views: torch.Tensor | None = None, backbone=None,
                 stack: bool | None = None) -> list["ClipAdapter"]:
        """Fit every config as one vectorised model (:func:`~clip_adapter.training.train_stacked`): the adapters
        of all points stacked, one pass over the batches; each point equals its own :meth:`fit` (logits to float
        rounding). ``stack=False`` fits them one by one; points with different architectures or optimisation
        settings are always fitted one by one. Stacked is the default: on the CPU 4 alphas cost 2.3x one fit
        stacked vs 2.9x one by one (benchmarks/batched_search.py); off the CPU a step of these tiny models is
        launch overhead, which stacking pays once instead of once per point."""
        same_arch = len({(c.target, c.reduction, c.bias, c.final_relu) for c in configs}) == 1
        if stack is False or not (same_arch and can_stack(configs)):
            return super().fit_many(configs, features, labels, text=text, views=views, backbone=backbone)
        models = [cls(c, backbone=backbone) for c in configs]
        for m in models:            # what fit() does before _fit
            m._start_fit(features, labels, text, views)
            m.check_train_data(features, labels, views)
            m.text_features_ = text.features.float().clone()
            m._build(features.shape[1])
        features, views = features.float(), None if views is None else views.float()
        stacked = _StackedClipAdapter(models)
        histories = train_stacked(stacked, configs, features, labels, views=views, drop_last=cls.drop_last)
        stacked.write_back()
        for m, h in zip(models, histories):
            m.history_ = h
            for a in m._adapters():
                a.cpu().eval().requires_grad_(False)
            m._end_fit()
        return models

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


class _StackedAdapters(nn.Module):
    """The adapters of ``P`` models on one side (image or text), weights stacked transposed ``(P, in, out)``,
    applied with batched matrix products to ``(P, n, d)``: the same maths as :class:`~.common.Adapter` on each
    slice. Transposed so that the gradients come out contiguous: SGD's element-wise updates on a transposed
    gradient were 10x slower than the products themselves (measured)."""

    def __init__(self, adapters: list[nn.Module]):
        super().__init__()
        linears = [[m for m in a.fc if isinstance(m, nn.Linear)] for a in adapters]
        self.weights = nn.ParameterList([nn.Parameter(torch.stack([ls[j].weight.detach().t() for ls in linears]).contiguous())
                                         for j in range(2)])
        self.biases = nn.ParameterList([nn.Parameter(torch.stack([ls[j].bias.detach() for ls in linears]))
                                        for j in range(2)] if linears[0][0].bias is not None else [])
        self.final_relu = isinstance(adapters[0].fc[-1], nn.ReLU)
        self.targets = linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, w in enumerate(self.weights):
            x = torch.baddbmm(self.biases[j].unsqueeze(1), x, w) if self.biases else torch.bmm(x, w)
            if j == 0 or self.final_relu:
                x = torch.relu(x)
        return x

    @torch.no_grad()
    def write_back(self) -> None:
        for p, ls in enumerate(self.targets):
            for j, lin in enumerate(ls):
                lin.weight.copy_(self.weights[j][p].t())
                if self.biases:
                    lin.bias.copy_(self.biases[j][p])


class _StackedClipAdapter(nn.Module):
    """``P`` CLIP-Adapter models (one per grid point) as one module: ``(P, B, d)`` -> logits ``(P, B, C)``, each
    slice equal to that model's :meth:`ClipAdapter._logits`."""

    def __init__(self, models: list[ClipAdapter]):
        super().__init__()
        first = models[0]
        self.image = _StackedAdapters([m.image_adapter_ for m in models]) if first.image_adapter_ else None
        self.text = _StackedAdapters([m.text_adapter_ for m in models]) if first.text_adapter_ else None
        self.scale = first.logit_scale_
        self.register_buffer("text_features", torch.stack([m.text_features_ for m in models]))
        # Each factor rounded once from a Python float, as blend() does with alpha and 1 - alpha.
        for name, vals in (("alpha", [m.config.alpha for m in models]),
                           ("alpha_text", [m.config.alpha_text for m in models])):
            self.register_buffer(name, torch.tensor([[a, 1 - a] for a in vals], dtype=torch.float32)[:, :, None, None])

    @staticmethod
    def _blend(x: torch.Tensor, adapters: _StackedAdapters | None, ab: torch.Tensor) -> torch.Tensor:
        return x if adapters is None else ab[:, 0] * adapters(x) + ab[:, 1] * x

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = self._blend(img, self.image, self.alpha)
        txt = self._blend(self.text_features, self.text, self.alpha_text)
        return torch.bmm(self.scale * F.normalize(img, dim=-1), F.normalize(txt, dim=-1).mT)   # as cosine_logits

    def write_back(self) -> None:
        for side in (self.image, self.text):
            if side is not None:
                side.write_back()
