"""Insertion-layer ablation of CLIP-Adapter for ViT image towers: the adapter after transformer block ``k``.

    x_k' = alpha * A(x_k) + (1 - alpha) * x_k       (on the class token, or on every token)
    f = proj(ln_post(blocks_{k+1..L}(x_k'))[class token]),   logits = logit_scale * normalize(f) @ normalize(t).T

``A`` is CLIP-Adapter's bottleneck MLP (:class:`~clip_adapter.methods.common.Adapter`) at the tower's token
width; blocks ``k+1..L``, ``ln_post`` and ``proj`` are frozen and run once per forward. The inputs of ``fit`` /
``logits`` are the cached activations after block ``k`` (:mod:`clip_adapter.layers`), shape ``(n, T, width)``,
not image features. At ``k = L`` (``layer=-1``, the default) the input is the image feature ``(n, dim)`` and this
is exactly CLIP-Adapter with ``target="image"`` (same weights, same logits).

Use :func:`clip_adapter.ablations.layer_sweep` for the accuracy-vs-layer table of a dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Bool, Interval, Options, Predicate, setting
from ..layers import ViTTail, activation_shape, block_activations, num_blocks
from ..prompts import ClassText
from ..training import TrainingConfig, train_loop
from .base import FewShotMethod, check_finite, check_fitted, register_method
from .common import Adapter, blend, cosine_logits

__all__ = ["ClipAdapterLayerConfig", "ClipAdapterLayer"]

PREDICT_CHUNK = 256  # images per tail forward in logits (bounds attention memory on large test splits)


@dataclass(frozen=True)
class ClipAdapterLayerConfig(TrainingConfig):
    layer: int = setting(-1, "insertion position k: after block k (1..L, or -1 = after the last = feature level)",
                         Predicate(lambda v: isinstance(v, int) and not isinstance(v, bool) and v != 0,
                                   "a non-zero int (1..L, or negative from the end)"))
    alpha: float = setting(0.2, "residual ratio alpha * A(x) + (1 - alpha) * x", Interval(float, 0, 1))
    tokens: str = setting("cls", "tokens the adapter blends (k < L): 'cls' (class token) or 'all'",
                          Options(("cls", "all")))
    reduction: int = setting(4, "bottleneck: hidden = width // reduction", Interval(int, 1))
    bias: bool = setting(False, "the adapter's linear layers have biases", Bool())
    final_relu: bool = setting(True, "a ReLU after the adapter's second layer (the paper's)", Bool())


@register_method("clip_adapter_layer")
class ClipAdapterLayer(FewShotMethod):
    """CLIP-Adapter inserted after block ``layer`` of an open_clip ViT: ``ClipAdapterLayer(config, backbone=bb)``."""

    config_cls = ClipAdapterLayerConfig
    default_grid = {"alpha": [0.2, 0.4, 0.6, 0.8]}
    needs_backbone = True
    unseen_classes = "transfer"   # an image-side adapter: new class names need only their text features
    trainable = ("adapter.*",)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _make_tail(self) -> ViTTail:
        if self.backbone is None:
            raise ValueError("clip_adapter_layer needs the ViT backbone whose blocks follow the adapter: "
                             "ClipAdapterLayer(config, backbone=bb) or FewShotMethod.from_pretrained(dir, backbone=bb).")
        return ViTTail(self.backbone, self.config.layer)

    def _build(self, dim: int) -> None:
        c = self.config
        with torch.random.fork_rng(devices=[]):  # the same seeded init as ClipAdapter's image adapter
            torch.manual_seed(c.seed)
            self.adapter_ = Adapter(dim, c.reduction, c.bias, c.final_relu)

    def _start_fit(self, features, labels, text, views) -> None:
        self.tail_ = self._make_tail()
        shape = activation_shape(self.backbone, self.config.layer)
        if tuple(features.shape[1:]) != shape:
            raise ValueError(f"clip_adapter_layer at layer {self.tail_.layer} expects activations of shape "
                             f"(n, {', '.join(map(str, shape))}); got {tuple(features.shape)} "
                             f"(extract them with clip_adapter.layers.ActivationCache).")
        if views is not None and tuple(views.shape[1:]) != tuple(features.shape):
            raise ValueError(f"views must be (V, {', '.join(map(str, features.shape))}); got {tuple(views.shape)}.")
        if text.features.shape[1] != self.backbone.embed_dim:
            raise ValueError(f"Text features have dim {text.features.shape[1]}, the backbone "
                             f"{self.backbone.embed_dim}.")
        # The generic checks (labels, classes) on a stand-in of the image-feature shape.
        check_finite(features, "activations")
        if views is not None:
            check_finite(views, "views")
        super()._start_fit(torch.zeros(features.shape[0], text.features.shape[1]), labels, text, None)
        self.input_shape_ = shape
        self.layer_ = self.tail_.layer
        self.num_blocks_ = self.tail_.n_blocks

    def _check_features(self, features: torch.Tensor) -> torch.Tensor:
        check_fitted(self)
        if tuple(features.shape[1:]) != tuple(self.input_shape_):
            raise ValueError(f"clip_adapter_layer (layer {self.layer_}) expects activations of shape "
                             f"(n, {', '.join(map(str, self.input_shape_))}); got {tuple(features.shape)}.")
        check_finite(features, "activations")
        return features.float()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        a, alpha = self.adapter_, self.config.alpha
        if x.ndim == 3 and self.config.tokens == "cls":
            x = torch.cat([blend(x[:, :1], a, alpha), x[:, 1:]], dim=1)
        else:
            x = blend(x, a, alpha)
        img = self.tail_(x) if self.tail_ is not None else x  # no tail: feature level (k = L)
        return cosine_logits(img, self.text_features_.to(img.device), self.logit_scale_)

    # -- interface -----------------------------------------------------------------------------------------------
    def input_shape(self) -> tuple[int, ...]:
        """Block activations at the adapter's layer, ``(tokens, width)`` (or ``(dim,)`` after the last block)."""
        if self.backbone is None:
            self._make_tail()  # raises the "needs the ViT backbone" error
        return tuple(activation_shape(self.backbone, self.config.layer))

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        dev = torch.device(self.config.device)
        self.text_features_ = text.features.float().clone().to(dev)
        self._build(self.input_shape_[-1])
        self.adapter_.to(dev).train()
        self.history_ = train_loop(self.adapter_.parameters(), self._logits, features, labels, self.config,
                                   views=views, drop_last=self.drop_last)
        self.adapter_.cpu().eval().requires_grad_(False)
        self.text_features_ = self.text_features_.cpu()

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = self._check_features(features)
        if getattr(self, "tail_", None) is None and len(self.input_shape_) > 1:
            self.tail_ = self._make_tail()
        return torch.cat([self._logits(x[i:i + PREDICT_CHUNK]) for i in range(0, max(len(x), 1), PREDICT_CHUNK)])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(n, 3, H, W)`` -> this adapter's inputs (activations at its layer), so a predictor
        can use ``method.encode_images`` where other methods take ``backbone.encode_images``."""
        check_fitted(self)
        if self.backbone is None:
            self._make_tail()  # raises the "needs the ViT backbone" error
        return block_activations(self.backbone, images, self.layer_)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"fixed.text_features": self.text_features_,
                **{"adapter." + k: v for k, v in self.adapter_.state_dict().items()}}

    def save_pretrained(self, directory: str | Path, *, backbone_id: str | None = None,
                        extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
        check_fitted(self)
        info = {"input_shape": list(self.input_shape_), "layer": self.layer_, "num_blocks": self.num_blocks_}
        return super().save_pretrained(directory, backbone_id=backbone_id, extra={**info, **(extra or {})},
                                       overwrite=overwrite)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for key in ("input_shape", "layer", "num_blocks"):
            if key not in meta:
                raise ValueError(f"The saved clip_adapter_layer config lacks the required key {key!r}.")
        self.input_shape_ = tuple(int(s) for s in meta["input_shape"])
        self.layer_, self.num_blocks_ = int(meta["layer"]), int(meta["num_blocks"])
        self.text_features_ = tensors["fixed.text_features"]
        self._build(self.input_shape_[-1])
        self.adapter_.load_state_dict({k[len("adapter."):]: v for k, v in tensors.items()
                                       if k.startswith("adapter.")}, strict=True)
        self.adapter_.eval().requires_grad_(False)
        self.tail_ = None
        if self.backbone is not None:
            if num_blocks(self.backbone) != self.num_blocks_ or \
                    activation_shape(self.backbone, self.layer_) != self.input_shape_:
                raise ValueError(f"clip_adapter_layer was trained after block {self.layer_} of a "
                                 f"{self.num_blocks_}-block ViT with activations {self.input_shape_}; the backbone "
                                 f"{getattr(self.backbone, 'id', '?')!r} does not match.")
            self.tail_ = self._make_tail()
