"""Any open_clip model as a frozen :class:`~clip_adapter.backbones.base.Backbone`: a name and a pretrained tag, a local
checkpoint, or an architecture JSON (random init unless a checkpoint is given)::

    load_backbone("RN50", pretrained="openai")          # any open_clip architecture/tag
    load_backbone("ViT-B-32", checkpoint="vitb32.pt")   # a local checkpoint file
    load_backbone("tests/tiny_clip.json")               # an architecture JSON, random init

Tiny architectures for tests and speed benchmarks (``tiny-vit``, ``tiny-rn``) ship in ``model_configs/`` and are
registered like open_clip's own.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..io import file_digest
from .base import (OPEN_CLIP, Backbone, BackboneLoadError, BackboneSpec, build_transforms, register_backbone,
                   unknown_backbone, weights_fingerprint)

__all__ = ["OpenClipBackbone", "load_open_clip", "PACKAGED_CONFIGS"]

log = logging.getLogger(__name__)

PACKAGED_CONFIGS = Path(__file__).parent / "model_configs"


class _ImageTower(torch.nn.Module):
    """An open_clip model's ``encode_image`` (unnormalised), the exact path of every model type (CLIP, CoCa...)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x, normalize=False)


class OpenClipBackbone(Backbone):
    """Any open_clip model, frozen. Build it with :func:`~clip_adapter.backbones.load_backbone`."""

    _image_tower: torch.nn.Module | None = None

    def __init__(self, model, tokenizer, spec: BackboneSpec, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.embed_dim = int(_embed_dim(model))
        self._spec = replace(spec, embed_dim=self.embed_dim)
        self.id = self._spec.id
        self.logit_scale = float(model.logit_scale.exp().item())
        visual = model.visual
        size = visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.image_size = int(size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
        std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_DATASET_STD
        self.test_transform, self.train_transform = build_transforms(size, mean, std)

    @property
    def spec(self) -> BackboneSpec:
        return self._spec

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.run_image_tower(images.to(self.device)).float().cpu()

    def image_module(self) -> torch.nn.Module:
        """``model.encode_image(x, normalize=False)`` as one module (what the encoder options compile or export)."""
        if self._image_tower is None:
            # eval: ONNX export restores the top module's mode recursively (batch norm must stay eval)
            self._image_tower = _ImageTower(self.model).eval()
        return self._image_tower

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=False).float().cpu()

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None,
                       who: str = "CoOp"):
        """open_clip's ``encode_text`` on token embeddings (:class:`~.prompt_encoder.PromptEncoder`)."""
        from .prompt_encoder import PromptEncoder, text_tower
        text_tower(self, who)  # one-line error for towers it cannot replay (CoCa-style, padding-masked)
        return PromptEncoder(self, classnames, n_ctx=n_ctx, init=init)


def _embed_dim(model) -> int:
    if getattr(model, "text_projection", None) is not None:
        proj = model.text_projection
        return proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features
    return model.visual.output_dim


def _open_clip():
    import open_clip
    # Tiny architectures (tiny-vit, tiny-rn) for tests and speed benchmarks, registered like open_clip's own.
    if "tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(PACKAGED_CONFIGS)
    return open_clip


def _architectures() -> list[str]:
    return _open_clip().list_models()


@register_backbone(OPEN_CLIP, family_names=_architectures)
def load_open_clip(name: str, pretrained: str | None = "openai", checkpoint: str | None = None,
                   device: str | torch.device = "cpu", **options: Any) -> OpenClipBackbone:
    """An open_clip architecture (or architecture JSON path) with a pretrained tag, a checkpoint or random weights;
    ``options`` go to open_clip's ``create_model_and_transforms`` (``precision=``, ``force_quick_gelu=``...)."""
    open_clip = _open_clip()
    if name.endswith(".json"):
        cfg_path = Path(name)
        _check_config_file(cfg_path)
        open_clip.add_model_config(cfg_path)
        name = cfg_path.stem
        if checkpoint is None:
            pretrained = None
    if name not in open_clip.list_models():
        raise unknown_backbone(name)
    if checkpoint is None and pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise BackboneLoadError(f"Unknown pretrained tag {pretrained!r} for open_clip model {name!r}. "
                                    f"Available: {', '.join(tags) or 'none (use pretrained=None or a checkpoint)'}.")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise BackboneLoadError(f"Checkpoint file {checkpoint} not found.")
        weights, spec = str(checkpoint), BackboneSpec(name=name, checkpoint_sha256=file_digest(checkpoint))
    else:
        weights, spec = (pretrained or None), BackboneSpec(name=name, pretrained=pretrained or None)
        if weights:
            check_weights_reachable(open_clip, name, weights)
    model = _create(open_clip, name, weights, checkpoint, pretrained, device, options)
    if weights is None:
        # Random init is only meaningful for tests and speed benchmarks; make that visible. Two random inits
        # differ, so the id carries a fingerprint of the weights (cached features must not be shared).
        log.warning("open_clip model %s has random weights (pretrained=None).", name)
        spec = BackboneSpec(name=name, fingerprint=weights_fingerprint(model))
    spec = replace(spec, model_config=open_clip.get_model_config(name) or None)
    return OpenClipBackbone(model, open_clip.get_tokenizer(name), spec, device=device)


def _cached_weights(open_clip, name: str, tag: str) -> tuple[bool, list[str]]:
    """(whether the weights of ``name``/``tag`` are already on disk, the folders looked in)."""
    from huggingface_hub import constants
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    looked, found = [], False
    if cfg.get("hf_hub"):
        repo = cfg["hf_hub"].strip("/").split("/")
        folder = Path(constants.HF_HUB_CACHE) / ("models--" + "--".join(repo[:2]))
        looked.append(str(Path(constants.HF_HUB_CACHE)))
        found = found or any((folder / "snapshots").glob("*/*"))
    if cfg.get("url"):
        clip_cache = Path("~/.cache/clip").expanduser()
        looked.append(str(clip_cache))
        found = found or (clip_cache / Path(cfg["url"]).name).is_file()
    return found, looked


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when Hugging Face is switched off (HF_HUB_OFFLINE) or its endpoint does not answer within ``timeout``."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_weights_reachable(open_clip, name: str, tag: str) -> None:
    """Fail in seconds, with one line, when the weights are neither cached nor downloadable (an offline machine),
    instead of a minute of hub retries and pages of warnings."""
    found, looked = _cached_weights(open_clip, name, tag)
    if found or _hub_reachable():
        return
    raise BackboneLoadError(f"The weights {tag!r} of open_clip model {name!r} are not on this machine (looked in "
                            f"{' and '.join(looked) or 'the Hugging Face cache'}) and the hub cannot be reached "
                            f"(offline). Pass a local checkpoint with --checkpoint FILE, or use the offline backbone "
                            f"--backbone lite.")


def _check_config_file(path: Path) -> None:
    """An open_clip architecture JSON: an object with embed_dim, vision_cfg and text_cfg (open_clip skips others)."""
    if not path.is_file():
        raise BackboneLoadError(f"Model config {path} not found; expected an open_clip architecture JSON.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BackboneLoadError(f"Model config {path} is not valid JSON ({e}).") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        found = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise BackboneLoadError(f"Model config {path} is not an open_clip architecture: expected the keys embed_dim, "
                                f"vision_cfg and text_cfg; got {found}.")


def _create(open_clip, name: str, weights: str | None, checkpoint: str | None, pretrained: str | None, device,
            options: dict[str, Any]):
    try:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=weights, device=device, **options)
    except Exception as e:  # noqa: BLE001 - open_clip raises many types for download/parse failures
        reason = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
        if checkpoint is not None:
            raise BackboneLoadError(f"Could not load checkpoint {checkpoint} into open_clip model {name!r} "
                                    f"({type(e).__name__}: {reason}); expected an open_clip/OpenAI state dict or "
                                    f"TorchScript file for this architecture.") from e
        raise BackboneLoadError(
            f"Could not load weights {pretrained!r} for open_clip model {name!r} ({type(e).__name__}: "
            f"{reason}). If this machine is offline, download the checkpoint "
            f"elsewhere and pass it with --checkpoint FILE (Python: load_backbone({name!r}, checkpoint=FILE)), "
            f"or use the offline backbone --backbone lite.") from e
    return model
