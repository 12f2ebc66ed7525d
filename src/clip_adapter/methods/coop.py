"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022): learned prompt context.

The prompt of class ``c`` is ``[SOS] [V]_1 ... [V]_M [CLASS_c] . [EOS]``: M learnable context vectors in the
token-embedding space (one set shared by all classes, or one per class with ``class_specific=True``) followed
by the class name's own token embeddings (the class token sits at the end). The frozen text encoder turns each
prompt into a class text feature; only the context vectors are trained, with cross-entropy on

    logits = logit_scale * normalize(f_image) @ normalize(g(prompt_c)).T

over cached image features (the image encoder never runs during training). The text encoder is the backbone's own
prompt encoder (its ``prompt_encoder`` hook, :mod:`clip_adapter.backbones.prompt_encoder`): open_clip's
``encode_text`` replayed on token *embeddings*; for the offline ``lite`` backbone MiniLM on token embeddings,
mean-pooled, normalised and mapped by the backbone's alignment map; for Hugging Face ``CLIPModel`` / ``SiglipModel``
the model's own ``get_text_features`` on the prompt's embeddings. CoOp never looks inside the backbone. With SigLIP
the fitted model's logits add its logit bias (SigLIP's own sigmoid scores, as zero-shot's); the bias is the same for
every class, so the cross-entropy training does not see it.

Schedule (paper): SGD lr 2e-3, momentum 0.9, weight decay 5e-4, batch 32, cosine after one constant warm-up
epoch at 1e-5; 50 epochs for 1 shot, 100 for 2-4 shots, 200 for 8-16 shots (``epochs=None`` picks these from
the number of training images per class).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

# The encoders live with the backbones (their prompt_encoder hook); re-exported for the old import path.
from ..backbones.prompt_encoder import (PLACEHOLDER, ContextPromptEncoder, LitePromptEncoder,  # noqa: F401
                                        PromptEncoder, encode_token_embeddings, text_tower)
from ..backbones.base import no_prompt_encoder
from ..config import Bool, Interval, NoneOr, Predicate, setting
from ..prompts import ClassText
from ..training import TrainingConfig, train_loop
from .base import FewShotMethod, register_method
from .common import cosine_logits

__all__ = ["CoOpConfig", "CoOp", "PromptEncoder", "LitePromptEncoder", "prompt_encoder", "epochs_for_shots",
           "text_tower"]

log = logging.getLogger(__name__)


def epochs_for_shots(shots: int) -> int:
    """CoOp's schedule: 50 epochs for 1 shot, 100 for 2-4 shots, 200 for more (the paper's 8 and 16)."""
    if shots <= 1:
        return 50
    if shots <= 4:
        return 100
    return 200


@dataclass(frozen=True)
class CoOpConfig(TrainingConfig):
    epochs: int | None = setting(None, "training epochs; None: by shots per class as in the paper (1: 50, 2-4: 100, "
                                 "8-16: 200)", NoneOr(Interval(int, 1), none="None (by shots per class)"))
    n_ctx: int = setting(16, "M, number of learned context vectors (ignored with `init`: M = its token count)",
                         Interval(int, 1))
    init: str | None = setting(None, "e.g. 'a photo of a': start the context from this phrase's token embeddings",
                               Predicate(lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
                                         "None or a non-empty phrase such as 'a photo of a'"))
    class_specific: bool = setting(False, "CSC: one context per class (C x M x width) instead of one unified context",
                                   Bool())
    init_std: float = setting(0.02, "std of the random normal context init (without `init`)",
                              Interval(float, 0, closed="neither"))


def prompt_encoder(backbone, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None,
                   who: str = "CoOp") -> ContextPromptEncoder:
    """The backbone's prompt encoder (its :meth:`~clip_adapter.backbones.Backbone.prompt_encoder` hook); a one-line
    ``ValueError`` for backbones without a token-level text encoder."""
    hook = getattr(backbone, "prompt_encoder", None)
    if hook is None:  # a duck-typed backbone that is not a Backbone subclass
        raise no_prompt_encoder(backbone, who)
    return hook(classnames, n_ctx=n_ctx, init=init, who=who)


# ---------------------------------------------------------------------------------------------------- method

@register_method("coop")
class CoOp(FewShotMethod):
    """CoOp: learns M context vectors of the prompt with the frozen text encoder in the loop.

    Build it with the backbone whose text encoder it trains through: ``CoOp(config, backbone=bb)``; load it
    with ``FewShotMethod.from_pretrained(dir, backbone=bb)`` (without a backbone it still predicts, from the
    saved class text features, but cannot check them).
    """

    config_cls = CoOpConfig
    needs_backbone = True
    trainable = ("ctx",)
    default_grid: dict[str, list] = {}  # the paper fixes the schedule; nothing is searched
    unseen_classes = "transfer"         # the context is shared by all classes (unless class_specific)

    def _encoder(self, classnames: Sequence[str], n_ctx: int) -> ContextPromptEncoder:
        if self.backbone is None:
            raise ValueError("CoOp needs the backbone whose text encoder it trains: CoOp(config, backbone=bb).")
        return prompt_encoder(self.backbone, classnames, n_ctx=n_ctx, init=self.config.init)

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        c = self.config
        encoder = self._encoder(text.classnames, c.n_ctx)
        bdim = getattr(self.backbone, "embed_dim", features.shape[1])
        if bdim != features.shape[1]:
            raise ValueError(f"CoOp's backbone {getattr(self.backbone, 'id', '?')!r} has dim {bdim}; "
                             f"features have dim {features.shape[1]}.")
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(c.seed)
            ctx = encoder.init_context(c.class_specific, c.init_std, from_phrase=c.init is not None)
        self.ctx_ = nn.Parameter(ctx)
        counts = torch.bincount(labels, minlength=len(text.classnames))
        self.shots_ = int(counts.max()) if counts.numel() else 0
        self.epochs_ = c.epochs if c.epochs is not None else epochs_for_shots(self.shots_)
        scale = self.logit_scale_

        def logits_fn(x: torch.Tensor) -> torch.Tensor:
            return cosine_logits(x, encoder(self.ctx_).float().to(x.device), scale)

        self.history_ = train_loop([self.ctx_], logits_fn, features, labels,
                                   c.replace(epochs=self.epochs_), views=views, drop_last=self.drop_last)
        with torch.no_grad():
            self.text_features_ = encoder(self.ctx_).float().cpu()
        self.ctx_ = self.ctx_.detach().cpu()
        self.n_ctx_ = encoder.n_ctx
        self.logit_bias_ = float(text.logit_bias)  # SigLIP's (0 for CLIP): a constant shift, not trained through

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cos(image, learned prompt) + logit_bias`` (the bias: SigLIP's, 0 for CLIP)."""
        return cosine_logits(self._check_features(features), self.text_features_, self.logit_scale_,
                             getattr(self, "logit_bias_", 0.0))

    def unseen_mode(self) -> str:
        """A unified context serves any class name; a class-specific one (CSC) has no prompt for a new class."""
        return "zero_shot_fallback" if self.config.class_specific else "transfer"

    def for_classes(self, text: ClassText) -> "CoOp":
        """The learned context with ``text``'s class names (CoCoOp's base-to-new / cross-dataset evaluation)."""
        new = super().for_classes(text)
        new.text_features_ = self.prompt_features(text.classnames)
        return new

    def prompt_features(self, classnames: Sequence[str] | None = None) -> torch.Tensor:
        """Raw text features of the learned prompts (for other class names too, with a unified context)."""
        if classnames is not None and self.config.class_specific:
            raise ValueError("A class-specific context only has prompts for its training classes.")
        names = list(classnames) if classnames is not None else self.classes_
        with torch.no_grad():
            enc = self._encoder(names, int(self.ctx_.shape[-2]))
            return enc(self.ctx_.to(enc._device)).float().cpu()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        bias = getattr(self, "logit_bias_", 0.0)
        return {"ctx": self.ctx_, "fixed.text_features": self.text_features_,
                **({"fixed.logit_bias": torch.tensor([bias])} if bias else {})}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.ctx_ = tensors["ctx"]
        self.text_features_ = tensors["fixed.text_features"]
        bias = tensors.get("fixed.logit_bias")
        if bias is not None and tuple(bias.shape) != (1,):
            raise ValueError(f"the tensor 'fixed.logit_bias' must hold one number; got shape {tuple(bias.shape)}")
        # On the meta device (loading's dry run) the value is unknown: any non-zero stand-in keeps the tensor listed.
        self.logit_bias_ = 0.0 if bias is None else 1.0 if bias.is_meta else float(bias.item())
        self.n_ctx_ = int(self.ctx_.shape[-2])
        if self.backbone is not None:
            # The saved features are what logits use (bit-exact); the backbone re-derives them from the context.
            again = self.prompt_features()
            if not torch.allclose(again, self.text_features_, rtol=1e-4, atol=1e-4):
                diff = float((again - self.text_features_).abs().max())
                warnings.warn(f"CoOp context re-encoded with {getattr(self.backbone, 'id', '?')!r} differs from the "
                              f"saved class text features (max abs diff {diff:.2e}); predictions use the saved "
                              f"features.", stacklevel=3)
