"""The backbone interface, the registry of backbone factories, and :class:`BackboneSpec` (ids built and parsed here).

Every backbone returns **raw (un-normalised) float32 features on the CPU**, shape ``(n, dim)``: the official
CLIP-Adapter blends raw features and normalises after the blend, so each method normalises where its own formula
says.

A backbone's ``id`` names its weights (it keys the feature cache and is stored with every trained adapter):

* ``open_clip:<arch>/<tag>``: an open_clip architecture with a pretrained tag (``open_clip:RN50/openai``);
* ``open_clip:<arch>/sha256:<16 hex>``: a local checkpoint, by the start of its sha256;
* ``open_clip:<arch>/random-init-<12 hex>``: random weights, by a fingerprint of them (tests, speed benchmarks);
* ``<name>:<variant>``: a registered backbone (``lite:efficientnet-lite0+minilm-l6``).

:class:`BackboneSpec` is the only code that writes or reads these strings: ``BackboneSpec.parse(id)`` gives the parts
back, ``spec.load()`` rebuilds the backbone. Factories register themselves (:func:`register_backbone`), timm style;
:mod:`clip_adapter.backbones` imports the built-in ones, so this module never imports them.
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torchvision import transforms as T

from ..config import suggest
from ..io import file_digest
from .encoder import EncoderOptions, ImageRunner, OnnxGraphCache, Resolved, resolve

__all__ = [
    "Backbone", "BackboneLoadError", "BackboneSpec", "load_backbone", "register_backbone", "list_backbones",
    "build_transforms", "weights_fingerprint", "check_backbone", "check_device", "normalise_pretrained",
    "no_prompt_encoder", "saved_recipe",
    "OPEN_CLIP", "TRAIN_CROP_SCALE",
]

log = logging.getLogger(__name__)

# The parts of an open_clip id: open_clip:<arch>/<tag>, the tag being a pretrained name, sha256:<hex> or random-init.
OPEN_CLIP, SHA_PREFIX, RANDOM_INIT = "open_clip", "sha256:", "random-init"
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


class Backbone(abc.ABC):
    """A frozen pair of encoders mapping images and texts into one ``embed_dim`` space.

    Subclasses set ``id`` (see the module docstring; build it with :class:`BackboneSpec`), ``embed_dim``,
    ``logit_scale`` (and ``logit_bias`` when it is not 0), ``device`` and the two transforms.
    """

    id: str
    embed_dim: int
    logit_scale: float
    logit_bias: float = 0.0   # added to every logit (SigLIP's sigmoid scoring); 0 for CLIP's softmax
    test_transform: Callable
    train_transform: Callable
    device: torch.device
    image_size: int = 224     # the side of preprocessed images (the ONNX export's sample input)
    # Measured faster with ONNX Runtime than torch on the CPU, features equal within 1e-3: runtime "auto" picks it.
    onnx_by_default: bool = False
    encoder_options: EncoderOptions = EncoderOptions()
    _encoder: Resolved | None = None
    _runner: ImageRunner | None = None
    _onnx_cache: OnnxGraphCache | None = None

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(n, 3, H, W)`` -> raw features ``(n, embed_dim)`` float32 on CPU."""

    @abc.abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> raw features ``(n, embed_dim)`` float32 on CPU."""

    def describe(self) -> dict[str, Any]:
        """Facts beyond ``id`` that determine the features (recorded with every result): how the image tower ran
        (``encoder``: precision, runtime, compile, gpu_decode, variant) when not today's path (fp32 on torch); records
        without ``encoder`` come from today's path."""
        return {"encoder": self.encoder.record()} if self.encoder.variant else {}

    # -- how the image tower runs (precision, compile, runtime: encoder.py) ---------------------------------------
    def image_module(self) -> torch.nn.Module | None:
        """The image tower as one module, preprocessed images on ``device`` -> raw features, for ``torch.compile`` and
        ONNX export; ``None`` (this default) when the backbone has none (only precision then applies)."""
        return None

    def configure_encoder(self, options: EncoderOptions | None = None, **kw: Any) -> "Backbone":
        """Set how the image tower runs (:class:`~.encoder.EncoderOptions`, or its fields as keywords); checked now
        (one-line errors), applied on the next :meth:`encode_images`. Returns ``self``."""
        options = options if options is not None else EncoderOptions(**kw)
        module = self.image_module()
        self._encoder = resolve(options, torch.device(self.device), module is not None, self.onnx_by_default,
                                self.id)
        self.encoder_options, self._runner = options, None
        self._onnx_cache = OnnxGraphCache()   # the cache folder as of now (the lite alignment map does the same)
        return self

    @property
    def encoder(self) -> Resolved:
        """The encoder options decided for this backbone and device (``auto`` resolved); see ``variant``."""
        if self._encoder is None:
            self.configure_encoder(self.encoder_options)
        return self._encoder

    def run_image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """One batch through the image tower as :attr:`encoder` says (the module itself for today's path)."""
        enc = self.encoder
        module = self.image_module()
        if module is None:
            raise NotImplementedError(f"{type(self).__name__} has no image_module(); override encode_images.")
        if self._runner is None:
            self._runner = ImageRunner(module, enc, torch.device(self.device), self.id,
                                       (1, 3, self.image_size, self.image_size), self._onnx_cache)
        return self._runner(images)

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None,
                       who: str = "CoOp") -> Any:
        """The hook of prompt-learning methods: a :class:`~clip_adapter.backbones.prompt_encoder.ContextPromptEncoder`
        mapping a learned context (``n_ctx`` token embeddings, or those of the phrase ``init``) plus each class name
        to raw class text features, differentiably. Backbones without a token-level text encoder raise a one-line
        ``ValueError`` (this default)."""
        raise no_prompt_encoder(self, who)

    @property
    def spec(self) -> "BackboneSpec":
        """What rebuilds this backbone (parsed from ``id``)."""
        return BackboneSpec.parse(self.id, self.embed_dim)

    def transform_id(self, kind: str) -> str:
        """Stable description of the ``"test"`` or ``"train"`` transform, part of the cache key."""
        tf = {"test": self.test_transform, "train": self.train_transform}[kind]
        return f"{kind}:{tf!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, embed_dim={self.embed_dim})"


def no_prompt_encoder(backbone: Any, who: str = "CoOp") -> ValueError:
    """The one-line error for a backbone (any object with an ``id``) that has no token-level text encoder."""
    bid = getattr(backbone, "id", type(backbone).__name__)
    return ValueError(f"{who} needs a backbone with a token-level text encoder; {bid!r} ({type(backbone).__name__}) "
                      f"only exposes sentence features; use an open_clip backbone (e.g. --backbone RN50 or ViT-B-16) "
                      f"or --backbone lite.")


def check_backbone(trained_id: str | None, trained_dim: int, backbone: Any, where: str = "Adapter") -> None:
    """The one check that features come from the backbone an adapter was trained on (same id and dim)."""
    if int(trained_dim) != int(backbone.embed_dim) or (trained_id and trained_id != backbone.id):
        raise ValueError(f"{where} was trained on {trained_id or 'a backbone'!r} (dim {trained_dim}); features come "
                         f"from {backbone.id!r} (dim {backbone.embed_dim}).")


# -- registry ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Factory:
    build: Callable[..., Backbone]
    names: Callable[[], list[str]] | None   # a family (open_clip) lists the names it builds; None: just its own
    saved: Callable[["BackboneSpec", str], "BackboneSpec"] | None = None   # see register_backbone(saved_recipe=)


_REGISTRY: dict[str, _Factory] = {}


def register_backbone(name: str, *, family_names: Callable[[], list[str]] | None = None,
                      saved_recipe: Callable[["BackboneSpec", str], "BackboneSpec"] | None = None):
    """Decorator: register a factory under ``name`` (an id prefix, like ``lite``).

    A plain factory is called as ``f(device=..., **options)``. With ``family_names`` it is a *family* that builds many
    named models: it is called as ``f(name, pretrained=, checkpoint=, device=, **options)`` for every name it lists
    (open_clip: a bare architecture name) and for ``"<family>:<name>"`` (``hf:PATH``).

    ``saved_recipe(spec, where)`` is for a family whose ids do not say how to rebuild the backbone (``hf:``): it
    checks the recipe a saved model carries (:attr:`BackboneSpec.source`) and returns the spec to load (its ``name``
    set), or raises a one-line ``ValueError`` (``where`` names the file) when it may not be rebuilt.
    """
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"Backbone {name!r} is already registered.")
        _REGISTRY[name] = _Factory(fn, family_names, saved_recipe)
        return fn
    return deco


def _families() -> dict[str, _Factory]:
    return {k: f for k, f in _REGISTRY.items() if f.names is not None}


def list_backbones() -> list[str]:
    """Registered backbones plus every name of every family (all open_clip architectures)."""
    plain = sorted(k for k, f in _REGISTRY.items() if f.names is None)
    return plain + [n for f in _families().values() for n in f.names()]


def builds_by_name(family: str, name: str | None) -> bool:
    """Whether a registered factory builds ``name`` of ``family`` by name: a plain registered backbone, or a name
    its family lists. A saved model's backbone is rebuilt only from such a recipe (never a path or hub repo)."""
    factory = _REGISTRY.get(family)
    return factory is not None and (factory.names is None or name in factory.names())


def saved_recipe(spec: "BackboneSpec", where: str) -> "BackboneSpec | None":
    """The family's check of a saved model's backbone recipe (see :func:`register_backbone`): the spec to load, a
    one-line ``ValueError``, or ``None`` when the family has no such check."""
    factory = _REGISTRY.get(spec.family)
    return None if factory is None or factory.saved is None else factory.saved(spec, where)


def load_backbone(name: str = "RN50", pretrained: str | None = "openai", checkpoint: str | None = None,
                  device: str | torch.device = "cpu", **options: Any) -> Backbone:
    """Load a frozen backbone.

    Args:
        name: a registered backbone (``"lite"``), an open_clip architecture (``"RN50"``, ``"ViT-B-16"``), the path
            of an open_clip architecture JSON (random init unless ``checkpoint`` is given), or ``<family>:<name>``
            for a registered family (``"hf:openai/clip-vit-base-patch32"``, ``"hf:/path/to/saved_model"``).
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``); ``None`` or ``"none"`` for
            random init.
        checkpoint: local checkpoint file; overrides ``pretrained``. Its sha256 becomes part of the backbone id.
        device: where the encoders run; features always come back on the CPU.
        **options: how the image tower runs, for every backbone (:class:`~.encoder.EncoderOptions`:
            ``precision="fp32"|"bf16"|"fp16"``, ``compile=False``, ``runtime="auto"|"torch"|"onnx"``,
            ``gpu_decode=False``); the others go to the factory, as timm's ``create_model(**kwargs)`` does
            (``templates=`` for lite, open_clip's ``create_model`` keywords such as ``force_quick_gelu=``).
    """
    pretrained = normalise_pretrained(pretrained)
    check_device(device)
    options = dict(options)
    encoder = EncoderOptions.pop(options)   # checked before the (slow) weights are loaded
    return _build(name, pretrained, checkpoint, device, options).configure_encoder(encoder)


def _build(name: str, pretrained: str | None, checkpoint: str | None, device: str | torch.device,
           options: dict[str, Any]) -> Backbone:
    factory = _REGISTRY.get(name)
    if factory is not None and factory.names is None:
        return factory.build(device=device, **options)
    prefix, sep, rest = name.partition(":")
    family = _families().get(prefix) if sep and prefix != OPEN_CLIP else None
    if family is not None:
        return family.build(rest, pretrained=pretrained, checkpoint=checkpoint, device=device, **options)
    family = _families().get(OPEN_CLIP)
    if family is None:  # pragma: no cover - clip_adapter.backbones registers it
        raise BackboneLoadError(f"Unknown backbone {name!r}; no open_clip family is registered.")
    return family.build(rest if sep and prefix == OPEN_CLIP else name, pretrained=pretrained, checkpoint=checkpoint,
                        device=device, **options)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists on this machine; a one-line error otherwise."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BackboneLoadError(f"Unknown device {device!r}; expected cpu, cuda, cuda:N or mps.") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise BackboneLoadError(f"Device {device!r} asked, but torch sees no CUDA GPU here (a CPU-only build of "
                                    f"torch, or no driver); use --device cpu.")
        if d.index is not None and d.index >= n:
            raise BackboneLoadError(f"Device {device!r} asked, but this machine has {n} CUDA GPU(s) "
                                    f"(cuda:0..cuda:{n - 1}).")
    if d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BackboneLoadError(f"Device {device!r} asked, but MPS is not available here; use --device cpu.")
    return d


def normalise_pretrained(tag: str | None) -> str | None:
    """``None``, ``""`` and ``"none"`` (any case) all mean random init: ``None``."""
    return None if tag is None or str(tag).lower() in ("none", "") else str(tag)


def unknown_backbone(name: str) -> BackboneLoadError:
    """The one-line error for a name no factory knows."""
    plain = sorted(k for k, f in _REGISTRY.items() if f.names is None)
    return BackboneLoadError(
        f"Unknown backbone {name!r}{suggest(name, list_backbones())}. Available: {', '.join(plain)}, or any open_clip "
        f"model (clip-adapter backbones lists them), or the path of an open_clip model config JSON.")


# -- ids -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneSpec:
    """The one recipe of a backbone: described well enough to rebuild it (``BackboneSpec.of("RN50").build()``), and
    its id: the only place ids are built and parsed.

    Attributes:
        family: ``"open_clip"`` or a registered backbone's name (``"lite"``).
        name: the open_clip architecture (``"RN50"``) or the registered name; ``None`` when unknown.
        pretrained: open_clip pretrained tag.
        checkpoint_sha256: sha256 (or its first 16 hex digits) of a local checkpoint.
        fingerprint: weights fingerprint of a random init (:func:`weights_fingerprint`).
        variant: for registered backbones, what follows ``"<family>:"`` in the id.
        embed_dim: feature width.
        model_config: the open_clip architecture config, so that a JSON architecture unknown on the loading machine
            can be rebuilt.
        checkpoint, device, options: the recipe's local checkpoint file, device and factory options
            (:meth:`of` / :meth:`build`; the experiment config's ``backbone`` and Ray workers use it).
        source: where a family read its weights, saved so that a model can rebuild its backbone when the id does
            not say how (``hf:``: ``{"path": <absolute folder>, "files_sha256": <digest of its other files>}``);
            only that family's ``saved_recipe`` check decides whether it is opened.
    """

    family: str = OPEN_CLIP
    name: str | None = None
    pretrained: str | None = None
    checkpoint_sha256: str | None = None
    fingerprint: str | None = None
    variant: str = ""
    embed_dim: int | None = None
    model_config: dict | None = None
    # The recipe side (what load_backbone is given; none of it is part of the id):
    checkpoint: str | None = None              # a local checkpoint file (its digest goes in checkpoint_sha256)
    device: str = "cpu"                        # where the encoders run
    options: dict = field(default_factory=dict)   # factory keyword options (load_backbone's **options)
    source: dict | None = None                 # where a family's weights were read (a local hf: folder)

    @classmethod
    def of(cls, name: str = "RN50", pretrained: str | None = "openai", checkpoint: str | None = None,
           device: str = "cpu", **options: Any) -> "BackboneSpec":
        """The recipe of a backbone as a user names it (``load_backbone``'s arguments); :meth:`build` loads it."""
        prefix, sep, _ = str(name).partition(":")
        factory = _REGISTRY.get(name)
        family = name if factory is not None and factory.names is None else (
            prefix if sep and prefix in _families() else OPEN_CLIP)
        return cls(family=family, name=str(name), pretrained=normalise_pretrained(pretrained), checkpoint=checkpoint,
                   device=str(device), options=dict(options))

    def build(self, device: str | torch.device | None = None) -> "Backbone":
        """Load this recipe (``device`` overrides its own), seeded so that a random init is the same model in every
        process, as its feature-cache address assumes; pretrained weights are unaffected."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return load_backbone(str(self.name), pretrained=self.pretrained, checkpoint=self.checkpoint,
                                 device=device or self.device, **self.options)

    @property
    def id(self) -> str:
        if self.family != OPEN_CLIP:
            return f"{self.family}:{self.variant}"
        if self.checkpoint_sha256:
            tag = SHA_PREFIX + self.checkpoint_sha256[:16]
        elif self.pretrained:
            tag = self.pretrained
        else:
            tag = RANDOM_INIT + (f"-{self.fingerprint}" if self.fingerprint else "")
        return f"{OPEN_CLIP}:{self.name}/{tag}"

    @property
    def random_init(self) -> bool:
        return self.family == OPEN_CLIP and not self.checkpoint_sha256 and not self.pretrained

    @classmethod
    def parse(cls, bid: str, embed_dim: int | None = None) -> "BackboneSpec":
        """The parts of an id (see the module docstring); an id without ``family:`` gives a spec with no name."""
        family, sep, rest = str(bid).partition(":")
        if not sep:
            return cls(family="", variant=str(bid), embed_dim=embed_dim)
        if family != OPEN_CLIP:  # a registered backbone rebuilds from its name; a family id (hf:) does not say how
            plain = family in _REGISTRY and _REGISTRY[family].names is None
            return cls(family=family, name=family if plain else None, variant=rest, embed_dim=embed_dim)
        name, _, tag = rest.partition("/")
        kw: dict[str, Any] = {}
        if tag.startswith(SHA_PREFIX):
            kw["checkpoint_sha256"] = tag[len(SHA_PREFIX):]
        elif tag.startswith(RANDOM_INIT):
            kw["fingerprint"] = tag[len(RANDOM_INIT) + 1:] or None
        elif tag:
            kw["pretrained"] = tag
        return cls(name=name or None, embed_dim=embed_dim, **kw)

    def to_dict(self) -> dict[str, Any]:
        """The ``"backbone"`` block of a saved model's ``adapter_config.json``."""
        out: dict[str, Any] = {"id": self.id if self.family else self.variant, "embed_dim": self.embed_dim,
                               "name": self.name, "pretrained": self.pretrained,
                               "checkpoint_sha256": self.checkpoint_sha256}
        if self.model_config:
            out["model_config"] = self.model_config
        if self.source:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        """Inverse of :meth:`to_dict` (the id is authoritative; a longer checkpoint digest is kept)."""
        spec = cls.parse(str(d.get("id")), d.get("embed_dim"))
        sha = d.get("checkpoint_sha256")
        if sha and spec.checkpoint_sha256 and str(sha).startswith(spec.checkpoint_sha256):
            spec = replace(spec, checkpoint_sha256=str(sha))
        source = d.get("source") if isinstance(d.get("source"), dict) else None
        return replace(spec, model_config=d.get("model_config") or None, source=source)

    def with_checkpoint_digest(self, sha256: str | None) -> "BackboneSpec":
        """This spec with the full sha256 of its checkpoint, when ``sha256`` extends the id's 16 digits."""
        if sha256 and self.checkpoint_sha256 and sha256.startswith(self.checkpoint_sha256):
            return replace(self, checkpoint_sha256=sha256)
        return self

    def load(self, device: str | torch.device = "cpu", checkpoint: str | None = None,
             where: str = "This model") -> Backbone:
        """Rebuild the backbone; a checkpoint-trained one needs that ``checkpoint`` (its sha256 is checked)."""
        if not self.name:
            raise ValueError(f"{where} does not say how to rebuild its backbone {self.id!r}; load that backbone "
                             f"yourself and pass it: --backbone NAME on the command line, "
                             f"AdaptedClassifier.from_pretrained(dir, backbone=bb) in Python.")
        self._check_checkpoint(checkpoint, where)
        if self.random_init:
            raise ValueError(f"{where} was trained on a randomly initialised backbone ({self.id}); a rebuilt one has "
                             f"other random weights. Pass the original: --backbone NAME on the command line "
                             f"(checked by its weights' fingerprint), from_pretrained(dir, backbone=bb) in Python.")
        if self.family == OPEN_CLIP and self.model_config and self.name not in list_backbones():
            # An architecture JSON not registered here: rebuild it from the copy saved with the model.
            with tempfile.TemporaryDirectory() as tmp:
                cfg_path = Path(tmp) / f"{self.name}.json"
                cfg_path.write_text(json.dumps(self.model_config))
                return load_backbone(str(cfg_path), pretrained=None, checkpoint=checkpoint, device=device)
        return load_backbone(self.name, pretrained=self.pretrained, checkpoint=checkpoint, device=device)

    def _check_checkpoint(self, checkpoint: str | None, where: str) -> None:
        sha = self.checkpoint_sha256
        if not sha:
            if checkpoint is not None:
                raise ValueError(f"{where} was trained on {self.id!r}, not on a local checkpoint; a checkpoint file "
                                 f"would give a backbone with another id. Drop checkpoint= (--checkpoint).")
            return
        if checkpoint is None:
            raise ValueError(f"{where} was trained on a local checkpoint of {self.name!r} (sha256 {sha[:16]}...); "
                             f"pass that file with checkpoint=FILE (CLI: --checkpoint FILE).")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"Checkpoint file {checkpoint} not found.")
        actual = file_digest(checkpoint)
        if not actual.startswith(sha):
            raise ValueError(f"Checkpoint {checkpoint} has sha256 {actual[:16]}..., but {where} was trained on a "
                             f"checkpoint with sha256 {sha[:16]}...: wrong file.")
