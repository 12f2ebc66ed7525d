"""Frozen image/text encoders behind one interface.

Every backbone returns **raw (un-normalised) float32 features on the CPU**, shape ``(n, dim)``: the
official CLIP-Adapter blends raw features and normalises after the blend, so each method normalises
where its own formula says.

Backbones are looked up by name with :func:`load_backbone`, open_clip style::

    load_backbone("RN50", pretrained="openai")          # any open_clip architecture/tag
    load_backbone("ViT-B-32", checkpoint="vitb32.pt")   # a local checkpoint file
    load_backbone("tests/tiny_clip.json")               # an architecture JSON, random init
    load_backbone("lite")                               # offline EfficientNet-Lite0 + MiniLM pair
"""
from __future__ import annotations

import abc
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torchvision import transforms as T

__all__ = [
    "Backbone", "OpenClipBackbone", "BackboneLoadError", "load_backbone", "register_backbone",
    "list_backbones", "build_transforms", "file_sha256", "weights_fingerprint",
]

log = logging.getLogger(__name__)

# Tip-Adapter's augmentation: random resized crop (scale 0.5-1) + horizontal flip, bicubic.
TRAIN_CROP_SCALE = (0.5, 1.0)


class BackboneLoadError(RuntimeError):
    """Weights or architecture could not be loaded; the message says what to do instead."""


def build_transforms(size: int, mean: Sequence[float], std: Sequence[float],
                     resize: int | None = None) -> tuple[Callable, Callable]:
    """(test, train) torchvision transforms: PIL image -> normalised float tensor ``(3, size, size)``.

    test: resize shorter side (bicubic) + centre crop. train: random resized crop + horizontal flip.
    """
    bicubic = T.InterpolationMode.BICUBIC
    to_tensor = [T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    test = T.Compose([T.Resize(resize or size, interpolation=bicubic), T.CenterCrop(size)] + to_tensor)
    train = T.Compose([T.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE, interpolation=bicubic),
                       T.RandomHorizontalFlip()] + to_tensor)
    return test, train


def _to_rgb(img):
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Short sha256 of all parameters and buffers (identifies randomly initialised weights)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Backbone(abc.ABC):
    """A frozen pair of encoders mapping images and texts into one ``embed_dim`` space.

    Subclasses set ``id`` (a string that changes whenever the weights change; it keys the feature
    cache and is stored with every trained adapter), ``embed_dim``, ``logit_scale`` and the two transforms.
    """

    id: str
    embed_dim: int
    logit_scale: float
    test_transform: Callable
    train_transform: Callable
    device: torch.device

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(n, 3, H, W)`` -> raw features ``(n, embed_dim)`` float32 on CPU."""

    @abc.abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> raw features ``(n, embed_dim)`` float32 on CPU."""

    def describe(self) -> dict[str, Any]:
        """Facts beyond ``id`` that determine the features (recorded with every result); none by default."""
        return {}

    def transform_id(self, kind: str) -> str:
        """Stable description of the ``"test"`` or ``"train"`` transform, part of the cache key."""
        tf = {"test": self.test_transform, "train": self.train_transform}[kind]
        return f"{kind}:{tf!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, embed_dim={self.embed_dim})"


class OpenClipBackbone(Backbone):
    """Any open_clip model, frozen. Build it with :func:`load_backbone`."""

    def __init__(self, model, tokenizer, model_id: str, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.id = model_id
        self.embed_dim = int(_embed_dim(model))
        self.logit_scale = float(model.logit_scale.exp().item())
        visual = model.visual
        size = visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
        std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_DATASET_STD
        self.test_transform, self.train_transform = build_transforms(size, mean, std)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(images.to(self.device), normalize=False)
        return feats.float().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=False).float().cpu()


def _embed_dim(model) -> int:
    if getattr(model, "text_projection", None) is not None:
        proj = model.text_projection
        return proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features
    return model.visual.output_dim


_BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str):
    """Decorator: register a factory ``f(device=..., **kw) -> Backbone`` under ``name``."""
    def deco(fn):
        if name in _BACKBONES:
            raise ValueError(f"Backbone {name!r} is already registered.")
        _BACKBONES[name] = fn
        return fn
    return deco


def list_backbones() -> list[str]:
    """Registered special backbones plus every open_clip architecture name."""
    import open_clip
    _import_builtin_backbones()
    _add_packaged_configs(open_clip)
    return sorted(_BACKBONES) + open_clip.list_models()


def load_backbone(name: str = "RN50", pretrained: str | None = "openai", checkpoint: str | None = None,
                  device: str | torch.device = "cpu") -> Backbone:
    """Load a frozen backbone.

    Args:
        name: a registered backbone (``"lite"``), an open_clip architecture (``"RN50"``, ``"ViT-B-16"``), or
            the path of an open_clip architecture JSON (random init unless ``checkpoint`` is given).
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``), or ``None`` for random init.
        checkpoint: local checkpoint file; overrides ``pretrained``. Its sha256 becomes part of the backbone id.
        device: where the encoders run; features always come back on the CPU.
    """
    _import_builtin_backbones()
    if name in _BACKBONES:
        return _BACKBONES[name](device=device)
    import open_clip
    _add_packaged_configs(open_clip)

    if name.endswith(".json"):
        cfg_path = Path(name)
        if not cfg_path.is_file():
            raise BackboneLoadError(f"Model config {cfg_path} not found; expected an open_clip architecture JSON.")
        open_clip.add_model_config(cfg_path)
        name = cfg_path.stem
        if checkpoint is None:
            pretrained = None
    if name not in open_clip.list_models():
        import difflib
        near = difflib.get_close_matches(name, list_backbones(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise BackboneLoadError(
            f"Unknown backbone {name!r}{hint}. Available: {', '.join(sorted(_BACKBONES))}, or any open_clip "
            f"model (clip-adapter backbones lists them), or the path of an open_clip model config JSON.")
    if checkpoint is None and pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise BackboneLoadError(f"Unknown pretrained tag {pretrained!r} for open_clip model {name!r}. "
                                    f"Available: {', '.join(tags) or 'none (use pretrained=None or a checkpoint)'}.")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise BackboneLoadError(f"Checkpoint file {checkpoint} not found.")
        weights, model_id = str(checkpoint), f"open_clip:{name}/sha256:{file_sha256(checkpoint)[:16]}"
    else:
        weights, model_id = (pretrained or None), f"open_clip:{name}/{pretrained or 'random-init'}"
    try:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=weights, device=device)
    except Exception as e:  # noqa: BLE001 - open_clip raises many types for download/parse failures
        if checkpoint is not None:
            raise BackboneLoadError(f"Could not load checkpoint {checkpoint} into open_clip model {name!r}: "
                                    f"{type(e).__name__}: {e}") from e
        reason = (str(e).splitlines() or [""])[0][:160]
        raise BackboneLoadError(
            f"Could not load weights {pretrained!r} for open_clip model {name!r} ({type(e).__name__}: "
            f"{reason}). If this machine is offline, download the checkpoint "
            f"elsewhere and pass it with --checkpoint FILE (Python: load_backbone({name!r}, checkpoint=FILE)), "
            f"or use the offline backbone --backbone lite.") from e
    if weights is None:
        # Random init is only meaningful for tests and speed benchmarks; make that visible. Two random inits
        # differ, so the id carries a fingerprint of the weights (cached features must not be shared).
        log.warning("open_clip model %s has random weights (pretrained=None).", name)
        model_id = f"{model_id}-{weights_fingerprint(model)}"
    return OpenClipBackbone(model, open_clip.get_tokenizer(name), model_id, device=device)


_PACKAGED_CONFIGS = Path(__file__).parent / "model_configs"


def _add_packaged_configs(open_clip) -> None:
    # Tiny architectures (tiny-vit, tiny-rn) for tests and speed benchmarks, registered like open_clip's own.
    if "tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(_PACKAGED_CONFIGS)


def _import_builtin_backbones() -> None:
    # The lite backbone registers itself on import; importing here keeps registration in one place.
    try:
        from . import lite  # noqa: F401
    except ImportError as e:  # pragma: no cover - optional heavy deps
        log.debug("lite backbone unavailable: %s", e)
