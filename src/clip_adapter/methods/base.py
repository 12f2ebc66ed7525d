"""The method interface: a frozen, validated config (PEFT style) + an estimator with fit/predict (sklearn style).

Data conventions at the method boundary:

* ``features``: raw (un-normalised) image features, float32 ``(n, dim)`` (test transform);
* ``views``: optional augmented-view features ``(V, n, dim)`` of the same images (train transform);
* ``labels``: int64 ``(n,)`` in ``0..C-1``;
* ``text``: a :class:`~clip_adapter.prompts.ClassText` (class names, templates, raw text features ``(C, dim)``
  and the backbone's logit scale).

Each method normalises where its own formula says. ``logits`` is the one place a method's formula lives;
``predict`` / ``predict_proba`` are its argmax / softmax.

The method contract (what a new method declares and implements; everything else is shared):

* class attributes: ``config_cls`` (a frozen :class:`MethodConfig`), ``default_grid`` (searched on validation),
  ``trains`` (False: ``fit`` ignores the labelled data, zero-shot), ``needs_backbone`` (True: built with
  ``backbone=bb`` because it runs the encoders, e.g. CoOp), ``trainable`` (which of its :meth:`state_tensors` ``fit``
  learns, as fnmatch patterns; the others are copied from the data or the text), ``drop_last`` (trained methods:
  whether an epoch drops its last partial batch, as the authors' code does), ``logit_params`` (config fields that
  enter only ``logits``, not ``fit``: a search over them fits once and rescores, e.g. Tip-Adapter's alpha, beta),
  ``inputs`` (``"images"``: ``fit`` and
  ``logits`` take :class:`~clip_adapter.imageset.ImageSet` s, re-augmented at every step, instead of cached
  features: CLIP-LoRA);
* ``_fit(features, labels, *, text, views)``: the method's own learning. :meth:`FewShotMethod.fit` runs the shared
  checks (shapes, dtypes, finiteness, label range, dims; then the method's :meth:`check_train_data`), records the
  class names / dim / logit scale, calls ``_fit`` and marks the model fitted. ``_fit`` returns nothing;
* ``logits``, ``state_tensors``, ``load_state_tensors``; optionally ``input_shape`` (inputs other than cached
  image features, e.g. block activations), ``check_train_data`` (a method's own needs: GDA's two features per
  class), ``refine_grid`` (a second, finer search around the first choice).

Transition: a subclass may still override ``fit`` itself and call ``_start_fit`` / ``_end_fit`` (the old contract).
"""
from __future__ import annotations

import abc
import copy
import dataclasses
import fnmatch
import json
import logging
import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..backbones.base import check_backbone
from ..config import MethodConfig, suggest
from ..io import atomic_dir, package_versions
from ..prompts import ClassText
from ..training import TrainingConfig
from .folder import (CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, check_finite_tensors, check_header, check_save_target,
                     marker, read_header, read_saved_config)

__all__ = ["MethodConfig", "check_overrides", "FewShotMethod", "NotFittedError", "register_method", "get_method", "get_method_class",
           "list_methods", "check_fitted", "check_finite", "check_save_target", "read_saved_config", "CONFIG_NAME",
           "WEIGHTS_NAME"]

log = logging.getLogger(__name__)


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


# Settings only methods that iterate have (the fields TrainingConfig declares over MethodConfig's): asked of a
# training-free method, they get an error that says why instead of a bare "unknown key".
TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainingConfig)
                      if f.name not in {g.name for g in dataclasses.fields(MethodConfig)})


def check_overrides(cls: type["FewShotMethod"], names, what: str = "key", where: str = "") -> None:
    """Every name is a field of ``cls``'s config; a training setting asked of a training-free method is a one-line
    error naming the method and what it takes instead."""
    fields = cls.config_cls.field_names()
    iterates = "lr" in fields  # trained on its own schedule (CLIP-LoRA: iterations): an unknown key is just unknown
    for k in names:
        if k in TRAINING_KEYS and k not in fields and not iterates:
            kind = "training-free (closed form)" if cls.trains else "not trained"
            raise ValueError(f"{where + ': ' if where else ''}Method {cls.name!r} is {kind}: it takes no {k!r} "
                             f"(no epochs, lr or batch size). Its settings: {', '.join(fields)}.")
    cls.config_cls.check_field_names(names, what=what, where=where)


def get_method(name: str, config: MethodConfig | dict | None = None, **kwargs) -> "FewShotMethod":
    """Build a method by name: ``get_method("clip_adapter", alpha=0.6)`` or with a config object/dict."""
    cls = get_method_class(name)
    backbone = kwargs.pop("backbone", None)
    if isinstance(config, dict):
        config = cls.config_cls.from_dict(config)
    check_overrides(cls, kwargs)
    if kwargs:
        config = (config or cls.config_cls()).replace(**kwargs)
    return cls(config, backbone=backbone)


def _shape(x: Any) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


def check_finite(x: torch.Tensor, what: str) -> None:
    """A one-line error when ``x`` holds NaN or inf (they would give NaN probabilities, not an error)."""
    if x.is_floating_point() and bool(torch.isfinite(x.sum())):
        return  # one NaN or inf makes the sum non-finite; a finite sum means every value is (one pass, no copy)
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist() if x.ndim else []
        raise ValueError(f"{what} contain {int(bad.sum())} non-finite values (NaN or inf), in rows {rows[:5]}"
                         f"{'...' if len(rows) > 5 else ''}; expected finite image features.")


def check_fitted(method: "FewShotMethod") -> None:
    if not getattr(method, "fitted_", False):
        raise NotFittedError(f"This {type(method).__name__} instance is not fitted yet; "
                             f"call fit(features, labels, text=...) first.")


class FewShotMethod(abc.ABC):
    """A few-shot classifier on frozen features.

    The constructor stores ``config`` (and an optional ``backbone`` collaborator for methods that need the
    encoders, e.g. CoOp) and nothing else. Learned state lives in attributes ending in ``_``.
    Subclasses implement ``_fit``, ``logits``, ``state_tensors`` and ``load_state_tensors`` and declare the class
    attributes below (the module docstring states the whole contract).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    #: hyper-parameter grid searched on the validation split by default (field -> values)
    default_grid: ClassVar[dict[str, list]] = {}
    #: whether ``fit`` uses the labelled data (zero-shot does not)
    trains: ClassVar[bool] = True
    #: whether the method runs the backbone's encoders itself (built with ``backbone=bb``: CoOp, the layer adapter)
    needs_backbone: ClassVar[bool] = False
    #: the :meth:`state_tensors` that ``fit`` learns (fnmatch patterns); the rest are copied from data or text
    trainable: ClassVar[tuple[str, ...]] = ()
    #: trained methods: an epoch drops its last partial batch (when n >= batch size), as the authors' code does
    drop_last: ClassVar[bool] = True
    #: config fields that only ``logits`` reads (``fit`` ignores them): a search over them fits once
    logit_params: ClassVar[tuple[str, ...]] = ()
    #: what ``fit`` and ``logits`` take from the protocol: cached ``"features"``, or ``"images"``
    #: (:class:`~clip_adapter.imageset.ImageSet`, for methods that back-propagate through the encoders)
    inputs: ClassVar[str] = "features"
    #: what a fitted model does for classes it never saw (base-to-new, cross-dataset): "transfer" (what it learned
    #: is class-agnostic and serves any class names: :meth:`for_classes`) or "zero_shot_fallback" (it is
    #: class-specific, so unseen classes are scored by zero-shot CLIP)
    unseen_classes: ClassVar[str] = "zero_shot_fallback"

    def __init__(self, config: MethodConfig | None = None, *, backbone=None):
        if config is not None and not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} expects a {self.config_cls.__name__}; got {type(config).__name__}.")
        self.config = config if config is not None else self.config_cls()
        self.backbone = backbone

    # -- to implement --------------------------------------------------------------------------------------
    def fit(self, features: torch.Tensor | None, labels: torch.Tensor | None, *, text: ClassText,
            views: torch.Tensor | None = None) -> "FewShotMethod":
        """Learn from raw ``features`` ``(n, d)`` (and augmented ``views`` ``(V, n, d)``); returns ``self``.

        Runs the shared checks, then :meth:`check_train_data`, then the method's ``_fit``; refitting replaces the
        previous fit. A method that does not train (``trains = False``) may be given ``None`` for both."""
        if features is None and labels is None and not self.trains:
            features = torch.zeros(0, text.features.shape[1])
            labels = torch.zeros(0, dtype=torch.long)
        self._start_fit(features, labels, text, views)
        self.check_train_data(features, labels, views)
        if self.inputs == "features":
            features, views = features.float(), None if views is None else views.float()
        self._fit(features, labels, text=text, views=views)
        return self._end_fit()

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        """The method's own learning, on checked inputs (float32 features). Sets the ``_``-suffixed state."""
        raise NotImplementedError(f"{type(self).__name__} must implement _fit (or, before the contract change, fit).")

    def check_train_data(self, features: torch.Tensor, labels: torch.Tensor, views: torch.Tensor | None) -> None:
        """What this method needs of the training data beyond the shared checks (e.g. two features per class for a
        covariance); raise a one-line ``ValueError`` naming the method and what it needs. Nothing by default."""

    def input_shape(self) -> tuple[int, ...] | None:
        """Shape of one input row of ``fit`` / ``logits`` when it is not a cached image feature ``(dim,)`` (e.g.
        block activations ``(tokens, width)``); ``None`` = image features of the backbone's dim."""
        return None

    @classmethod
    def refine_grid(cls, grid: dict[str, list], chosen: dict[str, Any]) -> dict[str, list]:
        """A second, finer grid around ``chosen`` (searched after ``grid``; its candidates compete with the first
        pass's). Empty (no refinement) by default."""
        return {}

    @classmethod
    def fit_many(cls, configs: "list[MethodConfig]", features: torch.Tensor, labels: torch.Tensor, *,
                 text: ClassText, views: torch.Tensor | None = None, backbone=None,
                 stack: bool | None = None) -> "list[FewShotMethod]":
        """One fitted model per config, each as ``cls(config).fit(...)`` would give. Trained methods may fit them
        all at once (``stack``: True/False forces it, None lets the method decide; e.g. with
        :func:`~clip_adapter.training.train_stacked`) as long as every model equals its own ``fit``; this
        default fits them one after another."""
        return [cls(c, backbone=backbone).fit(features, labels, text=text, views=views) for c in configs]

    #: whether :meth:`fit_many_data` can fit points with different data in one pass (else it fits one by one)
    stacks_data: ClassVar[bool] = False

    @classmethod
    def fit_many_data(cls, configs: "list[MethodConfig]", features: Sequence[torch.Tensor],
                      labels: Sequence[torch.Tensor], *, text: ClassText,
                      views: "Sequence[torch.Tensor | None]", backbone=None) -> "list[FewShotMethod]":
        """One fitted model per config, config ``i`` on its own data ``features[i]``, ``labels[i]``, ``views[i]``
        (an experiment's seeds: each its own few-shot sample), each as ``cls(config).fit(...)`` on that data would
        give. This default fits them one after another; a method with ``stacks_data`` fits them at once."""
        return [cls(c, backbone=backbone).fit(f, y, text=text, views=v)
                for c, f, y, v in zip(configs, features, labels, views)]

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

    def trainable_tensor_names(self) -> list[str]:
        """The names of :meth:`state_tensors` that ``fit`` learns (matching a ``trainable`` pattern)."""
        return [k for k in self.state_tensors() if any(fnmatch.fnmatchcase(k, p) for p in self.trainable)]
    def unseen_mode(self) -> str:
        """:attr:`unseen_classes` of this model (a method may depend on its config: CoOp's class-specific context)."""
        return self.unseen_classes

    def for_classes(self, text: ClassText) -> "FewShotMethod":
        """A copy of this fitted model that scores ``text``'s classes: the learned part kept, the class text
        features replaced (only when :meth:`unseen_mode` is "transfer")."""
        check_fitted(self)
        if self.unseen_mode() != "transfer":
            raise ValueError(f"{type(self).__name__} cannot score classes it never saw ({self.unseen_mode()}: its "
                             f"learned part is class-specific); use zero-shot CLIP for them.")
        new = copy.copy(self)
        new.text_features_ = text.features.float().clone()
        new.classes_, new.templates_ = list(text.classnames), list(text.templates)
        return new

    def num_trainable_parameters(self) -> int:
        """Parameters learned by ``fit`` (0 for zero-shot and for training-free caches)."""
        tensors = self.state_tensors()
        return sum(tensors[k].numel() for k in self.trainable_tensor_names())

    # -- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, backbone_id: str | None = None,
                        extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``directory`` atomically.

        ``directory`` must be new, empty, or (with ``overwrite=True``) a model this tool saved holding nothing
        else (:func:`~clip_adapter.methods.folder.check_save_target`)."""
        check_fitted(self)
        check_save_target(directory, overwrite=overwrite)
        meta = {**marker(), "method": self.name, "config": self.config.to_dict(), "classnames": self.classes_,
                "templates": self.templates_, "embed_dim": self.embed_dim_, "logit_scale": self.logit_scale_,
                "backbone_id": backbone_id or getattr(self.backbone, "id", None),
                "versions": package_versions(), **(extra or {})}
        directory = Path(directory)
        # Serialised in memory, then written by Python: a full disk is an OSError naming the folder (atomic_dir),
        # not a SafetensorError naming nothing.
        weights = safetensors_bytes({k: v.detach().float().contiguous().cpu() for k, v in self.state_tensors().items()},
                                    metadata={"method": self.name})
        with atomic_dir(directory, what="model folder") as tmp:
            (tmp / WEIGHTS_NAME).write_bytes(weights)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
            if "model_card" in (extra or {}):
                (tmp / CARD_NAME).write_text(str(extra["model_card"]))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, backbone=None) -> "FewShotMethod":
        """Load a method saved by :meth:`save_pretrained` (never unpickles). Called on the base class, the
        method class is found by the saved name.

        Everything is checked before anything is built: the config (types, finiteness, unique class names), the
        tensors' dtypes and shapes against the safetensors header, then a dry run of the loading on torch's
        ``meta`` device (no memory) that must use exactly the file's tensors; the weights must be finite."""
        directory = Path(directory)
        meta = read_saved_config(directory)
        cfg_file, w_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
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
        header = read_header(w_file)
        check_header(header, meta, w_file, cfg_file)
        _dry_run(klass, config, meta, header, w_file)
        try:
            tensors = load_file(str(w_file))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{w_file} could not be read as safetensors ({e}).") from None
        check_finite_tensors(tensors, w_file)
        obj = klass(config, backbone=backbone)
        _set_facts(obj, meta)
        try:
            obj.load_state_tensors(tensors, meta)
        except KeyError as e:
            raise _lacks(w_file, klass, e.args[0], tensors) from None
        except (RuntimeError, ValueError) as e:  # torch's load_state_dict: size mismatches, many lines
            raise _misfit(w_file, klass, meta, e) from None
        obj.fitted_ = True
        obj.metadata_ = meta
        return obj


def _set_facts(obj: FewShotMethod, meta: dict[str, Any]) -> None:
    obj.classes_ = list(meta["classnames"])
    obj.templates_ = list(meta.get("templates") or [])
    obj.embed_dim_ = int(meta["embed_dim"])
    obj.logit_scale_ = float(meta["logit_scale"])


def _lacks(w_file: Path, klass: type[FewShotMethod], name: str, tensors) -> ValueError:
    return ValueError(f"{w_file} lacks the tensor {name!r} of a {klass.name!r} model (it holds "
                      f"{', '.join(sorted(tensors)) or 'no tensors'}); it was written by another method or is damaged.")


def _misfit(w_file: Path, klass: type[FewShotMethod], meta: dict[str, Any], e: Exception) -> ValueError:
    return ValueError(f"{w_file} does not fit a {klass.name!r} model of dim {meta['embed_dim']} "
                      f"({str(e).strip().splitlines()[-1].strip()}).")


_STATE_DICT_ERROR = re.compile(r"size mismatch|Missing key|Unexpected key|shape")


def _dry_run(klass: type[FewShotMethod], config: MethodConfig, meta: dict[str, Any],
             header: dict[str, tuple[str, tuple[int, ...]]], w_file: Path) -> None:
    """Load the method on torch's ``meta`` device from tensors shaped as the header says: what the config would
    build is checked against the file (shapes, tensors missing or unused) without allocating any memory."""
    fake = {k: torch.empty(shape, dtype=torch.float32, device="meta") for k, (_, shape) in header.items()}
    obj = klass(config, backbone=None)
    _set_facts(obj, meta)
    try:
        with torch.device("meta"):
            obj.load_state_tensors(fake, meta)
            state = obj.state_tensors()
    except KeyError as e:
        raise _lacks(w_file, klass, e.args[0], header) from None
    except ValueError as e:  # the method's own checks of the saved config
        raise _misfit(w_file, klass, meta, e) from None
    except RuntimeError as e:  # torch's load_state_dict reports shapes and keys; anything else is the meta device's
        if _STATE_DICT_ERROR.search(str(e)):
            raise _misfit(w_file, klass, meta, e) from None
        return
    except Exception:  # noqa: BLE001 - a step the meta device cannot run: the real load below decides
        return
    for name, t in state.items():
        if name in header and tuple(t.shape) != header[name][1]:
            raise ValueError(f"{w_file}: tensor {name!r} has shape {header[name][1]}; a {klass.name!r} model with "
                             f"this config has {tuple(t.shape)}.")
    unused = sorted(set(header) - set(state))
    if unused:
        raise ValueError(f"{w_file} holds tensors that a {klass.name!r} model does not use ({', '.join(unused[:5])}"
                         f"{', ...' if len(unused) > 5 else ''}); it was written by another method or edited.")
