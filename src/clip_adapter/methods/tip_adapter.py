"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022): a key-value cache of the few-shot training set added to zero-shot CLIP.

    f = normalize(image feature),  W = normalize(class text features),  K = cache keys,  V = one-hot labels
    logits = logit_scale * f W^T + alpha * exp(-beta * (1 - f K^T)) V

* keys ``K`` (N x d): L2-normalised training features; with augmented ``views`` the mean over the views, then
  normalised (the official ``build_cache_model`` averages its 10 augmentation epochs the same way);
* ``alpha``: weight of the cache logits ("residual ratio"); ``beta``: sharpness of the affinity;
* ``logit_scale`` is the backbone's (100 for every CLIP checkpoint; the official code hard-codes 100), so
  ``alpha = 0`` is exactly zero-shot CLIP.

**Tip-Adapter** (``tip_adapter``) is training-free: ``fit`` only builds the cache. **Tip-Adapter-F**
(``tip_adapter_f``) makes the keys learnable (the official ``adapter`` ``Linear(d, N)`` initialised with ``K``)
and fine-tunes them with cross-entropy on the augmented views: AdamW lr 1e-3, eps 1e-4, weight decay 0.01 (torch's
default, as in the official code), batch 256, 20 epochs, cosine (stepped per epoch here, per iteration there). Its
loader keeps the last partial batch (``drop_last = False``, as the official ``build_data_loader`` for
Tip-Adapter-F), so every image is seen every epoch.

Tip-Adapter-F follows the official procedure (``run_tip_adapter_F`` in ``main.py``): the keys are fine-tuned
*once*, at the initial ``(init_alpha, init_beta)`` (the official ``init_alpha`` / ``init_beta`` of the dataset
config; default: ``configs/imagenet.yaml``'s 1.17 and 1), then ``(alpha, beta)`` are searched on validation with
the fine-tuned keys over the same grid as Tip-Adapter. So ``alpha`` and ``beta`` are ``logit_params`` for both
methods (a search fits once and rescores), and only ``init_alpha`` / ``init_beta`` shape the fine-tuning.

Where the official code chooses (github.com/gaopengcuhk/Tip-Adapter): ``main.py`` (the 10 datasets) searches
alpha/beta on the *validation* features; ``main_imagenet.py`` (ImageNet, which has no val split there) searches
them on the *test* features; and Tip-Adapter-F keeps the fine-tuning epoch with the best *test* accuracy (both
scripts) before searching alpha/beta again. Here every choice is made on validation (``hp_selection``), never on
test, and Tip-Adapter-F keeps its last epoch (no epoch is selected).

Hyper-parameters (both methods): the official grid's resolution over [0.1, 13) (the official DTD grid,
``configs/dtd.yaml``: beta in 200 steps, alpha in 20 steps), extended by log-spaced values (quarter decades):
alpha from 13 to 13,000, because a backbone whose zero-shot classifier is weak (the offline ``lite``: 3 % on
flowers89) wants the cache weighted far beyond CLIP-tuned grids (the official grids themselves end at 3-13, except
Cars 20/10, FGVC 30 and Flowers 50; on lite the old [0.1, 13) grid chose its largest alpha in most runs); beta
from 13 to 41.1 (a sharper, nearest-neighbour-like cache) and from 0.01 to 0.1 (a flat affinity: with a large
alpha the cache becomes a class-mean classifier, the choice the tiny test backbones then made at beta = 0.1).
A choice on the edge is still flagged (``at_grid_edge``): alpha at 0.1 means the cache barely helps (zero-shot is
alpha = 0). Every point is a cache lookup on cached features (milliseconds): 207 beta x 33 alpha points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Interval, MethodConfig, setting
from ..prompts import ClassText
from ..training import TrainingConfig, train_loop
from .base import FewShotMethod, register_method

__all__ = ["TipAdapterConfig", "TipAdapterFConfig", "TipAdapter", "TipAdapterF", "tip_logits", "tip_parts", "build_cache"]

ALPHA_MAX = 13000.0  # alpha: 13 .. 13000, three decades beyond the official grid (a sharp cache needs a large weight)
BETA_MAX = 42.0      # beta: 13, 23.1, 41.1 (the official Flowers grid ends at 50)
BETA_MIN = 0.01      # beta: 0.01 .. 0.0562 (a flat affinity: with a large alpha, a class-mean classifier)


def _official(steps: int) -> list[float]:
    """The official search's values over [0.1, 13): ``i * (13 - 0.1) / steps + 0.1``, ``i < steps``."""
    return [round(i * (13 - 0.1) / steps + 0.1, 6) for i in range(steps)]


def _beyond(last: float) -> list[float]:
    """Quarter-decade steps from 13 up to ``last``: 13, 23.1, 41.1, 73.1, 130, ..."""
    out, k = [], 0
    while 13 * 10 ** (k / 4) <= last * (1 + 1e-9):
        out.append(round(13 * 10 ** (k / 4), 3))
        k += 1
    return out


def _below(first: float) -> list[float]:
    """Quarter-decade steps from ``first`` up to (not including) 0.1: 0.01, 0.0178, 0.0316, 0.0562."""
    n = round(4 * math.log10(0.1 / first))
    return [round(0.1 * 10 ** (-k / 4), 6) for k in range(n, 0, -1)]


# Both methods: the official resolution inside [0.1, 13), log-spaced beyond (see the module docstring).
TIP_BETA_GRID = _below(BETA_MIN) + _official(200) + _beyond(BETA_MAX)
TIP_ALPHA_GRID = _official(20) + _beyond(ALPHA_MAX)

def build_cache(features: torch.Tensor, labels: torch.Tensor, n_classes: int,
                views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache keys ``(N, d)`` (normalised; mean over ``views`` first when given) and one-hot values ``(N, C)``."""
    raw = views.float().mean(dim=0) if views is not None else features.float()
    return F.normalize(raw, dim=-1), F.one_hot(labels, n_classes).float()


def tip_parts(features: torch.Tensor, text: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              beta: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale * f W^T, exp(-beta * (1 - f K^T)) V)``: the zero-shot and cache logits (``f``, ``W`` normalised)."""
    f = F.normalize(features, dim=-1)
    clip_logits = scale * f @ F.normalize(text, dim=-1).t()
    affinity = f @ keys.t()
    return clip_logits, torch.exp(-beta * (1 - affinity)) @ values


def tip_logits(features: torch.Tensor, text: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               alpha: float, beta: float, scale: float) -> torch.Tensor:
    """``scale * f W^T + alpha * exp(-beta * (1 - f K^T)) V`` with ``f``, ``W`` normalised (keys used as given)."""
    clip_logits, cache_logits = tip_parts(features, text, keys, values, beta, scale)
    return clip_logits + alpha * cache_logits


@dataclass(frozen=True)
class TipAdapterConfig(MethodConfig):
    alpha: float = setting(1.0, "weight of the cache logits (alpha = 0: zero-shot CLIP)", Interval(float, 0))
    beta: float = setting(5.5, "sharpness of the affinity exp(-beta * (1 - cos)); paper's ImageNet value",
                          Interval(float, 0))


@dataclass(frozen=True)
class TipAdapterFConfig(TrainingConfig):
    alpha: float = setting(1.0, "weight of the cache logits (alpha = 0: zero-shot CLIP); searched after fine-tuning",
                           Interval(float, 0))
    beta: float = setting(5.5, "sharpness of the affinity exp(-beta * (1 - cos)); searched after fine-tuning",
                          Interval(float, 0))
    epochs: int = setting(20)
    batch_size: int = setting(256)
    lr: float = setting(1e-3)
    optimizer: str = setting("adamw", "AdamW, eps 1e-4 (train_loop's AdamW eps)")
    weight_decay: float = setting(0.01)
    warmup_epochs: int = setting(0, "epochs of constant lr warm-up (the official code has none)")
    init_alpha: float = setting(1.17, "alpha while the keys are fine-tuned (the official configs/imagenet.yaml "
                                      "init_alpha)", Interval(float, 0))
    init_beta: float = setting(1.0, "beta while the keys are fine-tuned (the official init_beta of every dataset)",
                               Interval(float, 0))


@register_method("tip_adapter")
class TipAdapter(FewShotMethod):
    """Tip-Adapter: training-free cache model over the few-shot training features."""

    config_cls = TipAdapterConfig
    default_grid = {"beta": TIP_BETA_GRID, "alpha": TIP_ALPHA_GRID}  # alpha varies fastest: beta's parts are reused
    logit_params = ("alpha", "beta")  # the cache does not depend on them
    finetune = False  # Tip-Adapter-F learns the keys

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        self.memo_: dict = {}
        self.text_features_ = text.features.float().clone()
        keys, self.cache_values_ = build_cache(features, labels, len(text.classnames), views)
        if self.finetune:
            self.cache_keys_ = self._finetune(keys, features, labels, views)
        else:
            self.cache_keys_ = keys

    def _finetune(self, keys, features, labels, views) -> torch.Tensor:
        c = self.config
        dev = torch.device(c.device)
        keys = torch.nn.Parameter(keys.clone().to(dev))
        text, values = self.text_features_.to(dev), self.cache_values_.to(dev)

        def logits_fn(x: torch.Tensor) -> torch.Tensor:  # fine-tuned at the initial values; searched afterwards
            return tip_logits(x, text, keys, values, c.init_alpha, c.init_beta, self.logit_scale_)

        self.history_ = train_loop([keys], logits_fn, features, labels, c, views=views, drop_last=self.drop_last)
        return keys.detach().cpu()

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        # A search over alpha rescores the same features with the same beta many times: the last parts are kept
        # (with the features object itself, so its id cannot be reused; the version counter catches in-place edits).
        key = (self.config.beta, features._version, id(self.cache_keys_))
        memo = self.__dict__.setdefault("memo_", {})   # shared by the shallow copies a search makes
        if memo.get("features") is not features or memo.get("key") != key:
            memo.update(features=features, key=key, parts=tip_parts(
                features, self.text_features_, self.cache_keys_, self.cache_values_, self.config.beta,
                self.logit_scale_))
        clip_logits, cache_logits = memo["parts"]
        return clip_logits + self.config.alpha * cache_logits

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(self._check_features(features))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        keys = "cache_keys" if self.finetune else "fixed.cache_keys"  # trained (F) or copied from the data
        return {"fixed.text_features": self.text_features_, "fixed.cache_values": self.cache_values_,
                keys: self.cache_keys_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.text_features_ = tensors["fixed.text_features"]
        self.cache_values_ = tensors["fixed.cache_values"]
        self.cache_keys_ = tensors["cache_keys" if self.finetune else "fixed.cache_keys"]


@register_method("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys (N x d) fine-tuned once at (init_alpha, init_beta), then alpha, beta searched.

    The keys are fine-tuned on the augmented views; ``(alpha, beta)`` only rescore the fine-tuned keys."""

    config_cls = TipAdapterFConfig
    finetune = True
    drop_last = False  # the official Tip-Adapter-F loader keeps the last partial batch
    trainable = ("cache_keys",)
