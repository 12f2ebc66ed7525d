"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPR-W 2024):
low-rank updates of the attention projections of both CLIP towers, trained end to end on augmented images.

For every targeted projection ``W`` (query, key and value of every transformer block of the image and text towers,
by default) the adapted layer computes

    h = W x + (alpha / sqrt(r)) * B A dropout(x),      A: (r, d) Kaiming-uniform,  B: (d, r) zeros

(the authors' rank-stabilised scaling ``alpha / sqrt(r)``; ``r = 2``, ``alpha = 1``, dropout 0.25), and the classifier
is CLIP's own: ``logit_scale * normalize(f_image) @ normalize(f_text).T`` with the adapted image features and the
adapted text features of ``template.format(class name)`` (the authors train and evaluate with one template,
``"a photo of a {}."``). Only ``A`` and ``B`` train, by cross-entropy with AdamW (lr 2e-4, weight decay 1e-2), batch
32, ``500 x N`` iterations for N shots, a cosine schedule from lr to 1e-6 stepped every iteration, and every image
re-augmented at every step (random resized crop of scale 0.08-1 + horizontal flip). Nothing is searched: the authors
fix these values for every dataset and shot count.

Implementation: open_clip's blocks use ``nn.MultiheadAttention``, whose query/key/value weights are one fused
``in_proj_weight``. A LoRA on that fused matrix (what ``peft`` offers for ``nn.MultiheadAttention``) would share one
rank-``r`` factor over q, k and v; the paper adapts each of them with its own rank-``r`` pair. So each targeted
attention is re-wrapped as :class:`SplitAttention` (the same weights as separate ``q_proj``/``k_proj``/``v_proj``/
``out_proj`` linears, computing the same attention), as the authors' code does, and ``peft`` injects the LoRA layers
into the chosen linears. The method adapts a private copy of the backbone's model: the backbone stays frozen and
shared. Saved: the LoRA tensors (safetensors) and the adapted class text features.

It back-propagates through the encoders, so it trains on images (:class:`~clip_adapter.imageset.ImageSet`), not on
cached features: the GPU method of the toolkit (``device="cuda"``).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Bool, Interval, MethodConfig, NoneOr, Options, Predicate, setting
from ..features import default_num_workers
from ..imageset import ImageSet
from ..prompts import ClassText
from ..training import _is_device
from .base import FewShotMethod, check_finite, check_fitted, register_method
from .common import cosine_logits

__all__ = ["ClipLoraConfig", "ClipLora", "SplitAttention", "check_adaptable", "lora_model", "lora_state"]

log = logging.getLogger(__name__)

PREDICT_BATCH = 64  # images per encoder call when scoring an ImageSet
_PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


def _is_params(v: Any) -> bool:
    return isinstance(v, str) and bool(v) and set(v) <= set(_PROJ) and len(set(v)) == len(v)


@dataclass(frozen=True)
class ClipLoraConfig(MethodConfig):
    """CLIP-LoRA's settings; the defaults are the paper's (its ``run_utils.py``)."""

    r: int = setting(2, "LoRA rank", Interval(int, 1))
    alpha: float = setting(1.0, "LoRA scaling alpha / sqrt(r) (rank-stabilised, as the authors' code)",
                           Interval(float, 0, closed="neither"))
    dropout: float = setting(0.25, "dropout on the LoRA branch's input", Interval(float, 0, 1, closed="left"))
    params: str = setting("qkv", "projections adapted in every block: letters of q, k, v, o (output)",
                          Predicate(_is_params, "a non-empty string of distinct letters among 'q', 'k', 'v', 'o'"))
    encoder: str = setting("both", "towers adapted: 'both', 'vision' or 'text'", Options(("both", "vision", "text")))
    iters_per_shot: int = setting(500, "total iterations = iters_per_shot x shots (the paper's 500 x N)",
                                  Interval(int, 1))
    iters: int | None = setting(None, "a fixed total number of iterations instead (None: iters_per_shot x shots)",
                                NoneOr(Interval(int, 1)))
    batch_size: int = setting(32, "training images per iteration", Interval(int, 1))
    lr: float = setting(2e-4, "AdamW learning rate, cosine-annealed per iteration to min_lr",
                        Interval(float, 0, closed="neither"))
    weight_decay: float = setting(1e-2, "AdamW weight decay", Interval(float, 0))
    min_lr: float = setting(1e-6, "the cosine schedule's final learning rate", Interval(float, 0))
    min_crop: float = setting(0.08, "random resized crop scale (min_crop, 1), bicubic, + horizontal flip",
                              Interval(float, 0, 1, closed="right"))
    template: str = setting("a photo of a {}.", "the one prompt trained and evaluated (the authors', every dataset)",
                            Predicate(lambda v: isinstance(v, str) and v.count("{}") == 1, "a string with one '{}'"))
    amp: bool = setting(True, "fp16 autocast + gradient scaling on CUDA, as the authors; ignored on the CPU", Bool())
    device: str = setting("cpu", "torch device of training",
                          Predicate(_is_device, "a torch device such as 'cpu', 'cuda' or 'cuda:1'"))
    num_workers: int | None = setting(None, "image loaders (None: a few on CUDA, none on the CPU); results do not "
                                      "change", NoneOr(Interval(int, 0)))


# ------------------------------------------------------------------------------------------------ the model

class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` (self- or cross-attention, batch-first or not) with its fused input projection split
    into ``q_proj``/``k_proj``/``v_proj`` linears (plus ``out_proj``), so each can carry its own LoRA. Same weights,
    same outputs (up to float rounding); returns ``(output, None)`` like ``nn.MultiheadAttention`` without weights."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim:
            raise ValueError("SplitAttention expects an nn.MultiheadAttention with kdim = vdim = embed_dim.")
        d = mha.embed_dim
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
        bias = mha.in_proj_bias is not None
        # skip_init: the weights are copied below, so no random init (and no draw from the caller's RNG).
        self.q_proj, self.k_proj, self.v_proj = (nn.utils.skip_init(nn.Linear, d, d, bias=bias) for _ in range(3))
        self.out_proj = nn.utils.skip_init(nn.Linear, d, d, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            for i, lin in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                lin.weight.copy_(mha.in_proj_weight[i * d:(i + 1) * d])
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * d:(i + 1) * d])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if self.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.to(mha.out_proj.weight.device, mha.out_proj.weight.dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, **_: Any) -> tuple[torch.Tensor, None]:
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, e = query.shape
        h = self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, x.shape[1], h, e // h).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        mask = _additive_mask(attn_mask, key_padding_mask, b, h, lq, k.shape[2], q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, e))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive_mask(attn_mask, key_padding_mask, b: int, h: int, lq: int, lk: int, dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = masked out; float: added) as one additive (b, h, lq, lk) mask."""
    def additive(m: torch.Tensor) -> torch.Tensor:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.reshape(b, h, lq, lk) if mask.ndim == 3 else mask
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).reshape(b, 1, 1, lk)
        mask = pad if mask is None else mask + pad
    return mask


def _towers(model: nn.Module) -> dict[str, nn.Module]:
    """The transformer of each open_clip tower that has one: ``{"vision": ..., "text": ...}``."""
    out = {}
    visual = getattr(model, "visual", None)
    if hasattr(getattr(visual, "transformer", None), "resblocks"):
        out["vision"] = visual.transformer
    text = getattr(model, "text", model)  # CLIP keeps its text transformer at the top; CustomTextCLIP under .text
    if hasattr(getattr(text, "transformer", None), "resblocks") and text is not visual:
        out["text"] = text.transformer
    return {k: t for k, t in out.items()
            if any(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in t.resblocks)}


def check_adaptable(backbone, encoder: str = "both") -> None:
    """One-line error unless ``backbone`` has the transformer towers CLIP-LoRA adapts (``encoder``: which)."""
    bid = getattr(backbone, "id", type(backbone).__name__)
    model = getattr(backbone, "model", None)
    towers = _towers(model) if isinstance(model, nn.Module) and hasattr(model, "encode_image") else {}
    need = ("vision", "text") if encoder == "both" else (encoder,)
    missing = [t for t in need if t not in towers]
    if missing:
        has = f"has attention only in its {' and '.join(towers)} tower" if towers else "has no such tower"
        are = "s are transformers" if len(missing) > 1 else " is a transformer"
        raise ValueError(f"clip_lora needs an open_clip backbone whose {' and '.join(missing)} tower{are} "
                         f"(nn.MultiheadAttention) to adapt; {bid!r} {has} (use a ViT CLIP such as --backbone ViT-B-16"
                         f"{', or encoder=' + repr(next(iter(towers))) if towers and encoder == 'both' else ''}).")


def lora_model(backbone, config: ClipLoraConfig, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str]]:
    """A private copy of ``backbone.model`` with LoRA (through ``peft``) on the projections ``config.params`` of every
    block of the towers ``config.encoder``; returns the model and the adapted module names. Only LoRA tensors
    require grad; the LoRA init is seeded by ``config.seed``."""
    peft = _peft()
    check_adaptable(backbone, config.encoder)
    model = copy.deepcopy(backbone.model).to(device).requires_grad_(False)
    prefix = {id(m): n for n, m in model.named_modules()}
    towers = _towers(model)
    targets = []
    for tower in (("vision", "text") if config.encoder == "both" else (config.encoder,)):
        for block in towers[tower].resblocks:
            if isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                block.attn = SplitAttention(block.attn)
                targets += [f"{prefix[id(block)]}.attn.{_PROJ[p]}" for p in config.params]
    lora = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, use_rslora=True,
                      target_modules=targets, bias="none", init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):  # seeded A init, the caller's RNG untouched
        torch.manual_seed(config.seed)
        model = peft.inject_adapter_in_model(lora, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model.to(device), targets


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("clip_lora needs the peft package: pip install 'clip-adapter[lora]'.") from None
    return peft


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model`` (peft's names, adapter name stripped)."""
    return {k: v.detach().float().cpu().contiguous() for k, v in _peft().get_peft_model_state_dict(model).items()}


# ----------------------------------------------------------------------------------------------------- method

def _train_transform(images: ImageSet, min_crop: float):
    """The backbone's train transform with the random resized crop's scale set to ``(min_crop, 1)``."""
    tf = copy.deepcopy(images.train_transform)
    crops = [t for t in getattr(tf, "transforms", []) if type(t).__name__ == "RandomResizedCrop"]
    if not crops:
        raise ValueError(f"clip_lora expects the backbone's train transform to contain a RandomResizedCrop; got {tf}.")
    crops[0].scale = (min_crop, 1.0)
    return tf


def _schedule(n: int, iters: int, batch_size: int, seed: int, drop_last: bool) -> list[list[tuple[int, int]]]:
    """``iters`` batches of ``(image index, augmentation seed)`` over reshuffled epochs; with ``drop_last`` an
    epoch's short last batch is skipped when a full one exists (CLIP-LoRA's authors keep it)."""
    gen = torch.Generator().manual_seed(seed)
    batches: list[list[tuple[int, int]]] = []
    while len(batches) < iters:
        order = torch.randperm(n, generator=gen).tolist()
        seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
        for start in range(0, n, batch_size):
            if drop_last and n >= batch_size and start + batch_size > n:
                break
            batches.append([(i, seeds[i]) for i in order[start:start + batch_size]])
            if len(batches) == iters:
                break
    return batches


@register_method("clip_lora")
class ClipLora(FewShotMethod):
    """CLIP-LoRA: ``ClipLora(config, backbone=bb).fit(images, labels, text=text)`` with an
    :class:`~clip_adapter.imageset.ImageSet`; load with ``FewShotMethod.from_pretrained(dir, backbone=bb)``.

    ``logits`` takes an :class:`~clip_adapter.imageset.ImageSet`, preprocessed images ``(n, 3, H, W)``, or image
    features ``(n, dim)`` from this method's own :meth:`encode_images` (the adapted image tower).
    """

    config_cls = ClipLoraConfig
    needs_backbone = True
    inputs = "images"
    trainable = ("lora.*",)
    drop_last = False  # the authors' loader keeps an epoch's last partial batch
    default_grid: dict[str, list] = {}  # the paper fixes every value; nothing is searched

    # -- fit ---------------------------------------------------------------------------------------------------
    def _start_fit(self, features, labels, text, views) -> None:
        if not isinstance(features, ImageSet):
            raise ValueError(f"clip_lora trains on images, not features: pass an ImageSet "
                             f"(clip_adapter.imageset.ImageSet.of(items, backbone)); got "
                             f"{type(features).__name__}{tuple(getattr(features, 'shape', ()))}.")
        if views is not None:
            raise ValueError("clip_lora augments its images at every step; it takes no cached views (views=None).")
        if self.backbone is None:
            raise ValueError("clip_lora needs the backbone it adapts: ClipLora(config, backbone=bb).")
        check_adaptable(self.backbone, self.config.encoder)
        if text.features.shape[1] != self.backbone.embed_dim:
            raise ValueError(f"Text features have dim {text.features.shape[1]}, the backbone "
                             f"{self.backbone.embed_dim}.")
        if len(features) == 0:
            raise ValueError("clip_lora needs at least one training image; got an empty ImageSet.")
        missing = [p for p in features.paths if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"clip_lora: {len(missing)} of {len(features)} training images not found "
                             f"(first: {missing[0]}).")
        # The generic checks (labels, classes) on a stand-in of the image-feature shape.
        super()._start_fit(torch.zeros(len(features), text.features.shape[1]), labels, text, None)

    def _fit(self, features: ImageSet, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        """Train the LoRA tensors on the images ``features`` (an :class:`ImageSet`) with ``labels``."""
        c, dev = self.config, torch.device(self.config.device)
        counts = torch.bincount(labels, minlength=len(text.classnames))
        self.shots_ = int(counts.max())
        self.iters_ = c.iters if c.iters is not None else c.iters_per_shot * self.shots_
        model, self.targets_ = lora_model(self.backbone, c, dev)
        images = dataclasses.replace(features, train_transform=_train_transform(features, c.min_crop))
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(c.seed)  # LoRA dropout
            self.history_ = self._train(model, images, labels, dev)
        self.history_["seconds"] = time.perf_counter() - t0
        self.model_ = model.eval()
        self.text_features_ = self._text_features(grad=False).float().cpu()
        self.lora_ = lora_state(model)

    def _workers(self, dev: torch.device) -> int:
        """Image-loading processes: the config's, else a few when a GPU would otherwise wait for JPEG decoding."""
        n = self.config.num_workers
        return n if n is not None else (default_num_workers() if dev.type == "cuda" else 0)

    def _tokens(self) -> torch.Tensor:
        prompts = [self.config.template.format(name.replace("_", " ")) for name in self.classes_]
        return self.backbone.tokenizer(prompts)

    def _autocast(self, dev: torch.device):
        on = self.config.amp and dev.type == "cuda"
        return torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=on)

    def _text_features(self, grad: bool) -> torch.Tensor:
        dev = next(self.model_.parameters()).device
        with torch.set_grad_enabled(grad), self._autocast(dev):
            return self.model_.encode_text(self._tokens().to(dev), normalize=False).float()

    def _train(self, model: nn.Module, images: ImageSet, labels: torch.Tensor, dev: torch.device) -> dict:
        c = self.config
        self.model_ = model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, 0.999))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.iters_, eta_min=c.min_lr)
        scaler = torch.amp.GradScaler(dev.type, enabled=c.amp and dev.type == "cuda")
        train_text = c.encoder in ("both", "text")
        fixed_text = None if train_text else self._text_features(grad=False)
        batches = _schedule(len(images), self.iters_, c.batch_size, c.seed, self.drop_last)
        workers = self._workers(dev)
        history: dict = {"loss": [], "steps": 0}
        for batch, x in zip(batches, images.augmented(batches, workers)):
            y = labels[[i for i, _ in batch]].to(dev)
            text = self._text_features(grad=True) if train_text else fixed_text
            with self._autocast(dev), torch.set_grad_enabled(c.encoder != "text"):
                img = model.encode_image(x.to(dev), normalize=False)
            loss = F.cross_entropy(cosine_logits(img.float(), text, self.logit_scale_), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            history["steps"] += 1
            history["loss"].append(float(loss.detach()))
        return history

    # -- predict -----------------------------------------------------------------------------------------------
    def _model(self) -> nn.Module:
        if getattr(self, "model_", None) is None:
            if self.backbone is None:
                raise ValueError("clip_lora needs the backbone it adapted to encode images: "
                                 "FewShotMethod.from_pretrained(dir, backbone=bb) or AdaptedClassifier.from_pretrained"
                                 "(dir).")
            self.model_ = self._rebuild()
        return self.model_

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(n, 3, H, W)`` -> features of the adapted image tower ``(n, dim)`` (what
        :meth:`logits` takes as 2-D input), float32 on the CPU."""
        check_fitted(self)
        model = self._model()
        dev = next(model.parameters()).device
        with self._autocast(dev):
            return model.encode_image(images.to(dev), normalize=False).float().cpu()

    @torch.no_grad()
    def logits(self, features) -> torch.Tensor:
        check_fitted(self)
        if isinstance(features, ImageSet):
            workers = self._workers(next(self._model().parameters()).device)
            chunks = [self.encode_images(x) for x in features.batches(PREDICT_BATCH, workers)]
            feats = torch.cat(chunks) if chunks else torch.zeros(0, self.embed_dim_)
        elif isinstance(features, torch.Tensor) and features.ndim == 4 and features.shape[1] == 3:
            feats = torch.cat([self.encode_images(features[i:i + PREDICT_BATCH])
                               for i in range(0, len(features), PREDICT_BATCH)] or [torch.zeros(0, self.embed_dim_)])
        else:
            feats = self._check_features(features)
        check_finite(feats, "image features")
        return cosine_logits(feats, self.text_features_, self.logit_scale_)

    # -- persistence -------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**{"lora." + k: v for k, v in self.lora_.items()}, "fixed.text_features": self.text_features_}

    def _rebuild(self) -> nn.Module:
        """The adapted model from the backbone and the saved LoRA tensors (evaluation mode, on the CPU)."""
        model, targets = lora_model(self.backbone, self.config, self.backbone.device)
        state = {k: v.to(self.backbone.device) for k, v in self.lora_.items()}
        result = _peft().set_peft_model_state_dict(model, state)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        unexpected = list(getattr(result, "unexpected_keys", []))
        if missing or unexpected or len(self.lora_) != 2 * len(targets):
            raise ValueError(f"The saved LoRA tensors do not fit {len(targets)} {self.config.params!r} projections of "
                             f"{getattr(self.backbone, 'id', '?')!r} (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}).")
        return model.eval()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.text_features_ = tensors["fixed.text_features"]
        self.lora_ = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
        if not self.lora_:
            raise KeyError("lora.*")
        self.model_ = None
        if self.backbone is not None:
            self.model_ = self._rebuild()
            self.targets_ = sorted({k.rsplit(".lora_", 1)[0] for k in self.lora_})
