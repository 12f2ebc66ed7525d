"""The method interface: a frozen, validated config (PEFT style) + an estimator with fit/predict (sklearn style).

Data conventions at the method boundary:

* ``features``: raw (un-normalised) image features, float32 ``(n, dim)`` (test transform);
* ``views``: optional augmented-view features ``(V, n, dim)`` of the same images (train transform);
* ``labels``: int64 ``(n,)`` in ``0..C-1``;
* ``text``: a :class:`~clip_adapter.prompts.ClassText` (class names, templates, raw text features ``(C, dim)``
  and the backbone's logit scale).

Each method normalises where its own formula says. ``logits`` is the one place a method's formula lives;
``predict`` / ``predict_proba`` are its argmax / softmax.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from ..backbones.base import check_backbone
from ..config import MethodConfig, suggest
from ..io import atomic_dir, package_versions
from ..prompts import ClassText

__all__ = ["MethodConfig", "FewShotMethod", "NotFittedError", "register_method", "get_method", "get_method_class",
           "list_methods", "check_fitted", "check_finite", "check_save_target", "read_saved_config", "CONFIG_NAME",
           "WEIGHTS_NAME"]

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class NotFittedError(RuntimeError):
    """A method was used before ``fit``."""


_METHODS: dict[str, type["FewShotMethod"]] = {}


def register_method(name: str):
    """Class decorator: register a :class:`FewShotMethod` under a snake_case ``name`` (its file name)."""
    def deco(cls):
        if name != name.lower() or "-" in name:
            raise ValueError(f"Method name {name!r} must be lowercase snake_case.")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"Method {name!r} is already registered by {_METHODS[name].__qualname__}.")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method_class(name: str) -> type["FewShotMethod"]:
    key = name.replace("-", "_").lower()
    if key not in _METHODS:
        raise ValueError(f"Unknown method {name!r}. Available: {', '.join(list_methods())}{suggest(key, _METHODS)}")
    return _METHODS[key]


def get_method(name: str, config: MethodConfig | dict | None = None, **kwargs) -> "FewShotMethod":
    """Build a method by name: ``get_method("clip_adapter", alpha=0.6)`` or with a config object/dict."""
    cls = get_method_class(name)
    backbone = kwargs.pop("backbone", None)
    if isinstance(config, dict):
        config = cls.config_cls.from_dict(config)
    if kwargs:
        config = dataclasses.replace(config or cls.config_cls(), **kwargs)
    return cls(config, backbone=backbone)


def _shape(x: Any) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


def check_finite(x: torch.Tensor, what: str) -> None:
    """A one-line error when ``x`` holds NaN or inf (they would give NaN probabilities, not an error)."""
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist() if x.ndim else []
        raise ValueError(f"{what} contain {int(bad.sum())} non-finite values (NaN or inf), in rows {rows[:5]}"
                         f"{'...' if len(rows) > 5 else ''}; expected finite image features.")


def check_save_target(directory: str | Path) -> None:
    """A model folder may replace a saved model, never a file or another folder with content."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"Cannot save the model to {d}: it is an existing file; expected a folder (new, or a saved "
                         f"model to replace).")
    if d.is_dir() and any(d.iterdir()) and not (d / CONFIG_NAME).is_file():
        raise ValueError(f"Cannot save the model to {d}: it is a folder with other content (no {CONFIG_NAME}); "
                         f"refusing to replace it. Choose a new folder.")


def check_fitted(method: "FewShotMethod") -> None:
    if not getattr(method, "fitted_", False):
        raise NotFittedError(f"This {type(method).__name__} instance is not fitted yet; "
                             f"call fit(features, labels, text=...) first.")


class FewShotMethod(abc.ABC):
    """A few-shot classifier on frozen features.

    The constructor stores ``config`` (and an optional ``backbone`` collaborator for methods that need the
    encoders, e.g. CoOp) and nothing else. Learned state lives in attributes ending in ``_``.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    #: hyper-parameter grid searched on the validation split by default (field -> values)
    default_grid: ClassVar[dict[str, list]] = {}
    #: whether ``fit`` uses the labelled data (zero-shot does not)
    trains: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None, *, backbone=None):
        if config is not None and not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} expects a {self.config_cls.__name__}; got {type(config).__name__}.")
        self.config = config if config is not None else self.config_cls()
        self.backbone = backbone

    # -- to implement --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
            views: torch.Tensor | None = None) -> "FewShotMethod":
        """Learn from raw ``features`` ``(n, d)`` (and augmented ``views`` ``(V, n, d)``); returns ``self``."""

    @classmethod
    def fit_many(cls, configs: "list[MethodConfig]", features: torch.Tensor, labels: torch.Tensor, *,
                 text: ClassText, views: torch.Tensor | None = None, backbone=None,
                 stack: bool | None = None) -> "list[FewShotMethod]":
        """One fitted model per config, each as ``cls(config).fit(...)`` would give. Trained methods may fit them
        all at once (``stack``: True/False forces it, None lets the method decide; e.g. with
        :func:`~clip_adapter.training.train_stacked`) as long as every model equals its own ``fit``; this
        default fits them one after another."""
        return [cls(c, backbone=backbone).fit(features, labels, text=text, views=views) for c in configs]

    @abc.abstractmethod
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores ``(n, C)`` for raw image features ``(n, d)``."""

    @abc.abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every learned tensor needed to rebuild ``logits`` (saved as safetensors)."""

    @abc.abstractmethod
    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Inverse of :meth:`state_tensors`; ``meta`` is the saved JSON config."""

    # -- shared behaviour ----------------------------------------------------------------------------------
    def _start_fit(self, features: torch.Tensor, labels: torch.Tensor, text: ClassText,
                   views: torch.Tensor | None) -> None:
        if not isinstance(features, torch.Tensor) or features.ndim != 2:
            raise ValueError(f"features must be a (n, dim) tensor; got {_shape(features)}.")
        check_finite(features, "features")
        if views is not None:
            check_finite(views, "views")
        if not isinstance(labels, torch.Tensor) or labels.dtype in (torch.float16, torch.float32, torch.float64):
            raise ValueError(f"labels must be an int64 tensor; got {_shape(labels)}.")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels must be ({features.shape[0]},); got shape {tuple(labels.shape)}.")
        if text.features.shape[1] != features.shape[1]:
            raise ValueError(f"Image features have dim {features.shape[1]}, text features {text.features.shape[1]}.")
        if views is not None and (views.ndim != 3 or views.shape[1:] != features.shape):
            raise ValueError(f"views must be (V, {features.shape[0]}, {features.shape[1]}); got {tuple(views.shape)}.")
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(text.classnames)):
            raise ValueError(f"labels must lie in 0..{len(text.classnames) - 1}; got {labels.min()}..{labels.max()}.")
        self.classes_ = list(text.classnames)
        self.templates_ = list(text.templates)
        self.embed_dim_ = int(features.shape[1])
        self.logit_scale_ = float(text.logit_scale)
        self.fitted_ = False

    def _end_fit(self) -> "FewShotMethod":
        self.fitted_ = True
        return self

    def _check_features(self, features: torch.Tensor) -> torch.Tensor:
        check_fitted(self)
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[1] != self.embed_dim_:
            raise ValueError(f"{type(self).__name__} expects features of shape (n, {self.embed_dim_}); "
                             f"got {_shape(features)}.")
        check_finite(features, "features")
        return features.float()

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).softmax(dim=-1)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=-1)

    def num_trainable_parameters(self) -> int:
        """Parameters learned by ``fit`` (0 for zero-shot)."""
        return sum(t.numel() for k, t in self.state_tensors().items() if not k.startswith("fixed."))

    # -- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, backbone_id: str | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``directory`` atomically."""
        check_fitted(self)
        check_save_target(directory)
        meta = {"method": self.name, "config": self.config.to_dict(), "classnames": self.classes_,
                "templates": self.templates_, "embed_dim": self.embed_dim_, "logit_scale": self.logit_scale_,
                "backbone_id": backbone_id or getattr(self.backbone, "id", None),
                "versions": package_versions(), **(extra or {})}
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_tensors().items()},
                      str(tmp / WEIGHTS_NAME), metadata={"method": self.name})
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
            if "model_card" in (extra or {}):
                (tmp / "README.md").write_text(str(extra["model_card"]))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, backbone=None) -> "FewShotMethod":
        """Load a method saved by :meth:`save_pretrained` (never unpickles). Called on the base class, the
        method class is found by the saved name."""
        directory = Path(directory)
        meta = read_saved_config(directory)
        cfg_file = directory / CONFIG_NAME
        try:
            klass = get_method_class(meta["method"]) if cls is FewShotMethod or not cls.name else cls
        except ValueError as e:
            raise ValueError(f"{cfg_file}: {e}") from None
        if cls.name and meta["method"] != cls.name:
            raise ValueError(f"{directory} holds a {meta['method']!r} model, not {cls.name!r}.")
        if backbone is not None:
            check_backbone(meta.get("backbone_id"), meta["embed_dim"], backbone, where=f"Adapter in {directory}")
        try:
            config = klass.config_cls.from_dict(meta["config"], source=str(cfg_file))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{cfg_file}: {str(e).splitlines()[0]}") from None
        obj = klass(config, backbone=backbone)
        w_file = directory / WEIGHTS_NAME
        try:
            tensors = load_file(str(w_file))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{w_file} could not be read as safetensors ({e}).") from None
        text = tensors.get("fixed.text_features")
        if text is not None and (text.ndim != 2 or text.shape != (len(meta["classnames"]), int(meta["embed_dim"]))):
            raise ValueError(f"{w_file}: its class text features have shape {tuple(text.shape)}, but {cfg_file} lists "
                             f"{len(meta['classnames'])} classes of dim {meta['embed_dim']}.")
        obj.classes_ = list(meta["classnames"])
        obj.templates_ = list(meta.get("templates") or [])
        obj.embed_dim_ = int(meta["embed_dim"])
        obj.logit_scale_ = float(meta["logit_scale"])
        try:
            obj.load_state_tensors(tensors, meta)
        except KeyError as e:
            raise ValueError(f"{w_file} lacks the tensor {e.args[0]!r} of a {klass.name!r} model (it holds "
                             f"{', '.join(sorted(tensors)) or 'no tensors'}); it was written by another method or "
                             f"is damaged.") from None
        except (RuntimeError, ValueError) as e:  # torch's load_state_dict: size mismatches, many lines
            raise ValueError(f"{w_file} does not fit a {klass.name!r} model of dim {meta['embed_dim']} "
                             f"({str(e).strip().splitlines()[-1].strip()}).") from None
        obj.fitted_ = True
        obj.metadata_ = meta
        return obj


REQUIRED_KEYS = ("method", "config", "classnames", "embed_dim", "logit_scale")


def read_saved_config(directory: str | Path) -> dict[str, Any]:
    """The ``adapter_config.json`` of a saved model folder, checked; one-line errors name the file."""
    directory = Path(directory)
    cfg_file, w_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not directory.is_dir():
        raise FileNotFoundError(f"Model directory {directory} not found.")
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found; expected a folder written by save_pretrained "
                                    f"(clip-adapter run --save-model DIR).")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_file} is not valid JSON ({e}).") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object; got {type(meta).__name__}.")
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise ValueError(f"{cfg_file} lacks the required key {key!r}.")
    checks = {"method": isinstance(meta["method"], str), "config": isinstance(meta["config"], dict),
              "classnames": isinstance(meta["classnames"], list) and bool(meta["classnames"])
              and all(isinstance(c, str) for c in meta["classnames"]),
              "embed_dim": isinstance(meta["embed_dim"], int) and not isinstance(meta["embed_dim"], bool)
              and meta["embed_dim"] > 0,
              "logit_scale": isinstance(meta["logit_scale"], (int, float)) and meta["logit_scale"] > 0}
    expected = {"method": "a method name", "config": "an object", "classnames": "a non-empty list of strings",
                "embed_dim": "an int > 0", "logit_scale": "a number > 0"}
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{cfg_file}: {key!r} must be {expected[key]}. Got {meta[key]!r} instead.")
    return meta
