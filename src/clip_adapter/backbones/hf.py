"""Hugging Face ``transformers`` dual encoders as frozen backbones: ``hf:<folder>`` or ``hf:<hub id>``.

    load_backbone("hf:/models/clip-vit-base-patch32")        # a folder written by save_pretrained (offline)
    load_backbone("hf:google/siglip-base-patch16-224")        # a hub id (downloaded, or from the HF cache)

The folder's ``config.json`` says which model it is (``model_type``); each supported type is one file registered
with :func:`register_model_type` (``hf_clip.py``: ``CLIPModel``; ``hf_siglip.py``: ``SiglipModel``). The tokenizer
and the image preprocessing (size, mean, std) come from the same folder (``AutoTokenizer``,
``preprocessor_config.json``). Features are the models' projected embeddings, raw (not normalised), float32 on CPU.

Ids: ``hf:<folder name>/sha256:<16 hex>`` for a folder (the digest of its weights files: other weights under the
same folder name get another id, so cached features are never mixed up), ``hf:<hub id>@<revision>`` for a hub id.

A model saved with a folder's backbone records the folder's absolute path and a digest of its other files
(:attr:`BackboneSpec.source`); loading it without ``backbone=`` rebuilds the backbone from that folder only when it
still exists, holds safetensors weights and both digests still match (:func:`check_saved_folder`). A hub id, or a
folder that moved or changed, is never opened from a saved model: a one-line error says to pass ``backbone=``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..io import file_digest
from .base import Backbone, BackboneLoadError, BackboneSpec, build_transforms, register_backbone

__all__ = ["HF", "HFBackbone", "load_hf", "register_model_type", "model_types", "check_saved_folder"]

log = logging.getLogger(__name__)

HF = "hf"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# The files besides the weights that loading reads (config, tokenizer, image processor): their digest is saved too.
SETTINGS_SUFFIXES = (".json", ".txt", ".model")
_MODEL_TYPES: dict[str, type["HFBackbone"]] = {}


def register_model_type(model_type: str) -> Callable[[type["HFBackbone"]], type["HFBackbone"]]:
    """Class decorator: ``config.json``'s ``model_type`` -> the :class:`HFBackbone` subclass that wraps it."""
    def deco(cls: type["HFBackbone"]) -> type["HFBackbone"]:
        if model_type in _MODEL_TYPES:
            raise ValueError(f"Hugging Face model type {model_type!r} is already registered.")
        _MODEL_TYPES[model_type] = cls
        return cls
    return deco


def model_types() -> list[str]:
    """The supported ``model_type`` values."""
    return sorted(_MODEL_TYPES)


class HFBackbone(Backbone):
    """A frozen ``transformers`` dual encoder. Subclasses set :attr:`model_class` and :attr:`default_mean_std`
    and may override :meth:`tokenize` (padding rules differ: SigLIP pads to the full length)."""

    model_class: str = ""                          # the transformers class name (CLIPModel...)
    default_mean_std: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5,) * 3, (0.5,) * 3)
    logit_bias: float = 0.0

    def __init__(self, model: Any, tokenizer: Any, spec: BackboneSpec, processor: dict[str, Any],
                 device: str | torch.device = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.logit_scale = float(model.logit_scale.exp().item())
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = float(bias.item()) if bias is not None else 0.0
        size, resize, mean, std = self._preprocessing(processor)
        self.test_transform, self.train_transform = build_transforms(size, mean, std, resize=resize)
        with torch.no_grad():  # the width of the projected features, whatever the config calls it
            self.embed_dim = int(self.encode_images(torch.zeros(1, 3, size, size)).shape[1])
        self._spec = replace(spec, embed_dim=self.embed_dim)
        self.id = self._spec.id

    @property
    def spec(self) -> BackboneSpec:
        return self._spec

    def _preprocessing(self, p: dict[str, Any]) -> tuple[int, int | None, Sequence[float], Sequence[float]]:
        """(crop size, resize of the shorter side, mean, std) from ``preprocessor_config.json`` (or the model's
        image size and :attr:`default_mean_std`). A processor that resizes to a square without cropping (SigLIP)
        is approximated by resizing the shorter side and centre-cropping, like every backbone here."""
        image_size = int(self.model.config.vision_config.image_size)
        size_cfg, crop_cfg = p.get("size") or {}, p.get("crop_size") or {}
        crop = (crop_cfg.get("height") if p.get("do_center_crop", bool(crop_cfg)) and isinstance(crop_cfg, dict)
                else None) or image_size
        resize = size_cfg.get("shortest_edge") or size_cfg.get("height") if isinstance(size_cfg, dict) else None
        mean = p.get("image_mean") or self.default_mean_std[0]
        std = p.get("image_std") or self.default_mean_std[1]
        return int(crop), (int(resize) if resize else None), mean, std

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids (and attention mask) of ``texts``, cut to the text encoder's length."""
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                                   return_tensors="pt"))

    @staticmethod
    def _pooled(out: Any) -> torch.Tensor:
        # transformers >= 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=images.to(self.device, torch.float32))
        return self._pooled(out).float().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if not len(texts):
            return torch.zeros(0, self.embed_dim)
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return self._pooled(self.model.get_text_features(**tokens)).float().cpu()

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None,
                       who: str = "CoOp"):
        """The model's ``get_text_features`` on prompt token embeddings
        (:class:`~.prompt_encoder.HFPromptEncoder`)."""
        from .prompt_encoder import HFPromptEncoder
        return HFPromptEncoder(self, classnames, n_ctx=n_ctx, init=init)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hf_model_type": self.model.config.model_type, "logit_bias": self.logit_bias}


def _folder_id(folder: Path) -> str:
    """``<folder name>/sha256:<16 hex>``: the digest of the folder's weights files (and their index)."""
    files = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        files += sorted({folder / f for f in index.get("weight_map", {}).values()})
    if not files:
        raise BackboneLoadError(f"Hugging Face model folder {folder} has no weights ({', '.join(WEIGHT_FILES)}); "
                                f"expected a folder written by save_pretrained.")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_digest(f)}\n".encode())
    return f"{folder.name}/sha256:{h.hexdigest()[:16]}"


def _settings_digest(folder: Path) -> str:
    """sha256 of the folder's top-level config, tokenizer and processor files (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in SETTINGS_SUFFIXES and not f.name.startswith("."):
            h.update(f"{f.name}:{file_digest(f)}\n".encode())
    return h.hexdigest()


def check_saved_folder(spec: BackboneSpec, where: str) -> BackboneSpec:
    """The recipe of a saved model's ``hf:`` backbone, rebuilt only from the local folder recorded at save time:
    an absolute path to a folder that still exists, holds safetensors weights (nothing unpickled) whose digest is the
    id's, and whose config, tokenizer and processor files are unchanged. Returns the spec to load; otherwise a
    one-line ``ValueError`` saying to pass the backbone. A hub id is never opened from a saved model."""
    hint = ("load that backbone yourself and pass it: --backbone hf:PATH on the command line, "
            "AdaptedClassifier.from_pretrained(dir, backbone=load_backbone('hf:PATH')) in Python")
    source = spec.source if isinstance(spec.source, dict) else {}
    path, files = source.get("path"), source.get("files_sha256")
    if "/sha256:" not in spec.variant:
        raise ValueError(f"{where}: backbone {spec.id!r:.100} is a Hugging Face hub model; a saved model never opens "
                         f"a hub repo; {hint}.")
    if not isinstance(path, str) or not Path(path).is_absolute() or not isinstance(files, str):
        raise ValueError(f"{where}: backbone {spec.id!r:.100} records no local folder to rebuild it from (an absolute "
                         f"path and its files' digest; got {path!r:.100}); {hint}.")
    folder, shown = Path(path), repr(path)[:160]   # the path comes from the file: quoted, one line
    if not folder.is_dir():
        raise ValueError(f"{where}: the folder {shown} of backbone {spec.id!r:.100} no longer exists; {hint}.")
    if not any((folder / f).is_file() for f in SAFE_WEIGHT_FILES):
        raise ValueError(f"{where}: the folder {shown} holds no safetensors weights ({' or '.join(SAFE_WEIGHT_FILES)}"
                         f"); a saved model never unpickles a backbone; {hint}.")
    try:
        actual = _folder_id(folder)
    except (OSError, ValueError, BackboneLoadError) as e:  # a shard listed in the index is missing or unreadable
        raise ValueError(f"{where}: the weights in {shown} cannot be read ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]:.120}); {hint}.") from None
    if actual != spec.variant:
        raise ValueError(f"{where}: the weights in {shown} are not the ones the model was saved with (hf:{actual}, "
                         f"saved {spec.id!r:.100}); {hint}.")
    if _settings_digest(folder) != files:
        raise ValueError(f"{where}: the config, tokenizer or processor files in {shown} changed since the model was "
                         f"saved; {hint}.")
    return replace(spec, name=f"{HF}:{folder}")


def _read_processor(source: str, local: bool) -> dict[str, Any]:
    if local:
        path = Path(source) / "preprocessor_config.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    try:
        from transformers.utils import cached_file
        path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        return json.loads(Path(path).read_text()) if path else {}
    except Exception:  # noqa: BLE001 - an absent processor config falls back to the model's defaults
        return {}


@register_backbone(HF, family_names=lambda: [], saved_recipe=check_saved_folder)
def load_hf(name: str, pretrained: str | None = None, checkpoint: str | None = None,
            device: str | torch.device = "cpu", **options: Any) -> HFBackbone:
    """``hf:<folder or hub id>``: a transformers model of a registered ``model_type`` (options go to its
    ``from_pretrained``, e.g. ``revision=``, ``torch_dtype=``)."""
    if checkpoint is not None:
        raise BackboneLoadError("A Hugging Face backbone reads its weights from its folder; drop --checkpoint and "
                                "pass the folder as --backbone hf:PATH.")
    try:
        import transformers
    except ImportError:
        raise BackboneLoadError("--backbone hf:... needs transformers: pip install 'clip-adapter[hf]'.") from None
    folder = Path(name).expanduser()
    local = folder.is_dir()
    source = str(folder) if local else name
    if not local and ("/" not in name or name.startswith((".", "/", "~"))):
        raise BackboneLoadError(f"Hugging Face model {name!r} not found: expected a folder written by "
                                f"save_pretrained or a hub id such as openai/clip-vit-base-patch32.")
    try:
        config = transformers.AutoConfig.from_pretrained(source, **{k: v for k, v in options.items()
                                                                    if k == "revision"})
    except Exception as e:  # noqa: BLE001 - offline, missing or malformed: one line with the reason
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise BackboneLoadError(f"Could not read the Hugging Face config of {source!r} ({type(e).__name__}: "
                                f"{reason}); offline, pass a local folder written by save_pretrained.") from None
    cls = _MODEL_TYPES.get(config.model_type)
    if cls is None:
        raise BackboneLoadError(f"Hugging Face model {source!r} is a {config.model_type!r}; supported: "
                                f"{', '.join(model_types())}.")
    model = getattr(transformers, cls.model_class).from_pretrained(source, **options)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **{k: v for k, v in options.items()
                                                                      if k == "revision"})
    if local:
        folder = folder.resolve()
        spec = BackboneSpec(family=HF, name=f"{HF}:{folder}", variant=_folder_id(folder),
                            source={"path": str(folder), "files_sha256": _settings_digest(folder)})
    else:
        spec = BackboneSpec(family=HF, name=f"{HF}:{name}",
                            variant=f"{name}@{getattr(config, '_commit_hash', None) or 'main'}")
    return cls(model, tokenizer, spec, _read_processor(source, local), device=device)
