"""The adapted model as an artefact: a frozen backbone plus a fitted method, saved to and loaded from one folder.

    >>> from clip_adapter import AdaptedClassifier
    >>> model = AdaptedClassifier.from_pretrained("models/dtd")    # + checkpoint=FILE for a local-checkpoint backbone
    >>> model.predict(["a.jpg", "b.jpg"])                          # class names, one per image
    >>> model.predict_proba(["a.jpg"])                             # (n, C) probabilities, columns = model.classes_
    >>> for rec in model.predict_stream(paths): ...                # one dict per image, bounded memory

A saved model is a folder, PEFT style:

* ``adapter_config.json``: method, its hyper-parameters, class names, templates, feature dim, logit scale, package
  versions, the backbone id and a ``"backbone"`` block that rebuilds it
  (:meth:`~clip_adapter.backbones.BackboneSpec.to_dict`: ``name``, ``pretrained`` tag, ``checkpoint_sha256`` of a
  local checkpoint, ``embed_dim``, the open_clip architecture ``model_config``, and for a Hugging Face folder its
  ``source``: the absolute path and a digest of its files, rebuilt only while unchanged);
* ``adapter_model.safetensors``: the learned tensors only, never the backbone;
* ``README.md``: a short model card (dataset, shots, measured accuracy when known).

Loading reads JSON and safetensors only: nothing is unpickled (weights of the backbone itself are open_clip's
business). A model trained on a local checkpoint needs that file again (``checkpoint=``); its sha256 is checked.

Inputs of :meth:`AdaptedClassifier.predict` / :meth:`~AdaptedClassifier.predict_proba`:

* a path, a PIL image, or a list mixing them: decoded and preprocessed with the backbone's test transform;
* a 4-D tensor ``(n, 3, H, W)`` (or 3-D ``(3, H, W)``): images **already preprocessed** with
  ``model.transform`` (resized, cropped, normalised), sent to the image encoder;
* a 2-D tensor ``(n, embed_dim)``: **raw image features** from ``backbone.encode_images`` (or the feature cache),
  classified directly without running the encoder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..backbones.base import OPEN_CLIP, BackboneSpec, builds_by_name, check_backbone, saved_recipe
from ..config import invalid_value
from ..datasets.class_ids import class_ids, map_classes
from ..evaluation import evaluate_predictions
from ..features import FeatureCache, default_num_workers
from ..imageset import ImageSet
from ..io import package_versions, progress_bar
from ..methods import CONFIG_NAME, FewShotMethod, check_fitted, read_saved_config
from .card import model_card
from ..datasets.images import to_rgb
from .images import SafeImages, collate_safe, open_rgb

__all__ = ["AdaptedClassifier", "check_recipe"]

log = logging.getLogger(__name__)


class AdaptedClassifier:
    """A frozen backbone plus a fitted few-shot method: an image classifier that saves to and loads from a folder.

    Args:
        backbone: the :class:`~clip_adapter.backbone.Backbone` the method was fitted on (checked by id and dim).
        method: a fitted :class:`~clip_adapter.methods.FewShotMethod`.
        info: extra facts kept with the model (``dataset``, ``shots``, ``seed``, ``test_accuracy``, ``model_card``).
        batch_size: images per encoder call in ``predict*``.
    """

    def __init__(self, backbone, method: FewShotMethod, *, info: dict[str, Any] | None = None, batch_size: int = 32):
        check_fitted(method)
        check_backbone((getattr(method, "metadata_", None) or {}).get("backbone_id"), method.embed_dim_, backbone)
        _check_count("batch_size", batch_size, 1)
        self.backbone = backbone
        self.method = method
        self.info = dict(info or {})
        self.batch_size = batch_size

    # -- facts --------------------------------------------------------------------------------------------------
    @property
    def classes_(self) -> list[str]:
        """Class names; column ``j`` of :meth:`predict_proba` is ``classes_[j]``."""
        return list(self.method.classes_)

    @property
    def transform(self):
        """PIL image -> preprocessed tensor ``(3, H, W)``: the backbone's test transform."""
        return self.backbone.test_transform

    def __repr__(self) -> str:
        return (f"AdaptedClassifier(method={self.method.name!r}, backbone={self.backbone.id!r}, "
                f"classes={len(self.classes_)})")

    # -- persistence --------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, model_card: str | None = None, overwrite: bool = False,
                        **info: Any) -> Path:
        """Write ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md`` into ``directory``
        (atomically: the folder is replaced as a whole). ``info`` (e.g. ``dataset=``, ``test_accuracy=``) is
        stored in the JSON and shown in the card. An existing saved model is replaced only with ``overwrite=True``;
        a folder holding anything else is never replaced."""
        facts = {**{k: v for k, v in self.info.items() if k != "model_card"}, **info}
        facts["backbone"] = self.backbone.spec.to_dict()
        facts["model_card"] = model_card or self.info.get("model_card") or self.card(**facts)
        return self.method.save_pretrained(directory, backbone_id=self.backbone.id, extra=facts, overwrite=overwrite)

    def fingerprint(self) -> str:
        """Short sha256 of what decides this model's predictions (method, config, classes, backbone id, learned
        tensors); prediction records carry it so that a resumed output file mixes no two models."""
        h = hashlib.sha256()
        head = {"method": self.method.name, "config": self.method.config.to_dict(), "classes": self.classes_,
                "backbone": self.backbone.id, "logit_scale": float(self.method.logit_scale_)}
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        for k, v in sorted(self.method.state_tensors().items()):
            h.update(k.encode())
            h.update(v.detach().float().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def card(self, **facts: Any) -> str:
        """The model card of this model (see :func:`~clip_adapter.model.card.model_card`)."""
        return model_card(self.method.name, self.backbone.id, self.classes_,
                          list(getattr(self.method, "templates_", [])), facts)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        checkpoint: str | os.PathLike | None = None, *, backbone=None,
                        batch_size: int = 32) -> "AdaptedClassifier":
        """Load a folder written by :meth:`save_pretrained` (or ``run_one(save_model=...)``); never unpickles.

        The backbone is rebuilt from the saved description on ``device``, unless ``backbone`` is given: a loaded
        :class:`~clip_adapter.backbones.Backbone`, or a name for :func:`~clip_adapter.backbones.load_backbone`
        (``"hf:PATH"``; the CLI's ``--backbone NAME``), loaded on ``device`` with the saved pretrained tag and
        ``checkpoint``. Either is the caller's explicit choice, so it may be a path the saved recipe would not open;
        its id must equal the saved one. A model trained on a local checkpoint needs ``checkpoint=FILE``; the file's
        sha256 must match the saved one.
        """
        directory = Path(directory)
        meta = read_saved_config(directory)
        bid = meta.get("backbone_id")
        if bid is not None and not isinstance(bid, str):
            raise ValueError(f"{directory / CONFIG_NAME}: 'backbone_id' must be a string. Got {bid!r:.80} instead.")
        if isinstance(meta.get("backbone"), dict):
            spec = BackboneSpec.from_dict(meta["backbone"])
        else:  # written before the "backbone" block existed: the id says enough for named backbones
            spec = BackboneSpec.parse(str(bid), int(meta["embed_dim"])) if bid else BackboneSpec(family="")
        if backbone is None:
            spec = check_recipe(spec, directory / CONFIG_NAME)
            backbone = spec.load(device, None if checkpoint is None else str(checkpoint), where=f"Model {directory}")
        elif isinstance(backbone, (str, os.PathLike)):
            backbone = _chosen_backbone(str(backbone), spec, bid, directory / CONFIG_NAME, device, checkpoint)
        check_backbone(bid, meta["embed_dim"], backbone, where=f"Adapter in {directory}")
        method = FewShotMethod.from_pretrained(directory, backbone=backbone)
        keep = ("dataset", "shots", "seed", "test_accuracy", "model_card", "class_ids")
        return cls(backbone, method, info={k: meta[k] for k in keep if k in meta}, batch_size=batch_size)

    # -- prediction ---------------------------------------------------------------------------------------------
    def features(self, images) -> torch.Tensor:
        """Raw image features ``(n, embed_dim)`` of ``images`` (see the module docstring for accepted inputs).

        Raises ``FileNotFoundError``/``OSError`` naming the file when an image cannot be read; use
        :meth:`predict_stream` to skip bad images instead.
        """
        dim = int(self.backbone.embed_dim)
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if isinstance(images, torch.Tensor):
            if images.ndim == 2:
                if images.shape[1] != dim:
                    raise ValueError(f"A 2-D tensor is read as raw features (n, {dim}); got {tuple(images.shape)}. "
                                     f"Preprocessed images must be (n, 3, H, W).")
                return images.float().cpu()
            if images.ndim == 3:
                images = images.unsqueeze(0)
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"A tensor must be preprocessed images (n, 3, H, W) (model.transform of a PIL image) "
                                 f"or raw features (n, {dim}); got {tuple(images.shape)}.")
            return self._encode_tensor(images)
        items = list(images)
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = [self._preprocess(x) for x in items[start:start + self.batch_size]]
            out.append(self.encode_batch(torch.stack(chunk)))
        return torch.cat(out) if out else torch.zeros(0, dim)

    def _preprocess(self, x) -> torch.Tensor:
        if isinstance(x, Image.Image):
            return self.transform(to_rgb(x))
        if isinstance(x, (str, os.PathLike)):
            return self.transform(open_rgb(x))
        if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] == 3:
            return x.float()
        raise TypeError(f"Cannot classify a {type(x).__name__}; expected a path, a PIL image or a preprocessed "
                        f"(3, H, W) tensor.")

    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """What the method consumes: raw features, or a layer adapter's activations (its own ``encode_images``)."""
        encode = getattr(self.method, "encode_images", None) or self.backbone.encode_images
        return encode(images).float().cpu()

    def _encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        chunks = [self.encode_batch(images[i:i + self.batch_size])
                  for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, int(self.backbone.embed_dim))

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        """Class scores ``(n, C)``."""
        return self.method.logits(self.features(images))

    @torch.no_grad()
    def predict_proba(self, images) -> torch.Tensor:
        """Class probabilities ``(n, C)`` (softmax of the method's logits); column ``j`` is ``classes_[j]``."""
        return self.method.predict_proba(self.features(images))

    def predict(self, images) -> list[str]:
        """The most likely class name of each image (a list, also for one image)."""
        idx = self.method.predict(self.features(images))
        return [self.method.classes_[i] for i in idx.tolist()]

    def top_records(self, probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
        """One prediction record per row of ``probs``: the top class, its probability and the top ``k``."""
        vals, idx = probs.topk(min(k, probs.shape[1]), dim=1)
        out = []
        for v, i in zip(vals.tolist(), idx.tolist()):
            top = [{"class": self.method.classes_[j], "probability": p} for j, p in zip(i, v)]
            out.append({"prediction": top[0]["class"], "probability": top[0]["probability"], "top_k": top})
        return out

    def predict_stream(self, images: Sequence[str | os.PathLike], *, top_k: int = 5, batch_size: int | None = None,
                       num_workers: int | None = None, progress: bool = False) -> Iterator[dict[str, Any]]:
        """One record per image path, in input order, computed batch by batch (bounded memory).

        A record is ``{"path", "prediction", "probability", "top_k": [{"class", "probability"}, ...]}``, or
        ``{"path", "error"}`` for an image that cannot be read (logged as a warning, then skipped). Decoding runs in
        ``num_workers`` DataLoader processes (default: half the cores, at most 4) while the encoder works.
        """
        paths = [str(p) for p in images]
        _check_count("top_k", top_k, 1)
        if batch_size is not None:
            _check_count("batch_size", batch_size, 1)
        if num_workers is not None:
            _check_count("num_workers", num_workers, 0)
        if not paths:
            return
        bs = batch_size or self.batch_size
        workers = default_num_workers() if num_workers is None else num_workers
        workers = workers if len(paths) > bs else 0  # starting a process costs more than it saves on one batch
        loader = DataLoader(SafeImages(paths, self.transform), batch_size=bs, shuffle=False, num_workers=workers,
                            collate_fn=collate_safe)
        with progress_bar(len(paths), "predict", "img", enabled=progress) as bar:
            for idx, batch, errors in loader:
                recs: list[tuple[int, dict[str, Any]]] = []
                if batch is not None:
                    probs = self.method.predict_proba(self.encode_batch(batch))
                    recs += [(i, {"path": paths[i], **r}) for i, r in zip(idx, self.top_records(probs, top_k))]
                for i, err in errors:
                    log.warning("Skipped %s: %s", paths[i], err)
                    recs.append((i, {"path": paths[i], "error": err}))
                bar.update(len(recs))
                for _, rec in sorted(recs, key=lambda t: t[0]):
                    yield rec

    # -- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, dataset, split: str = "test", cache=None,
                 class_map: dict[str, str] | str | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1 and per-class accuracy on ``dataset``'s ``split``, features through ``cache``
        (a :class:`~clip_adapter.features.FeatureCache` of this backbone; a default one when ``None``).

        The dataset's classes must be the model's (in any order). Otherwise ``class_map`` says how they correspond:
        ``{dataset class: model class}`` (classes it does not name map to the model class of the same name), or
        ``"by-name"`` to score a dataset whose classes are a subset of the model's, or ``"shared"`` to score only
        the classes both have by name (images of the dataset's other classes are left out and counted). When both the dataset and the
        model know their classes' wnids (:func:`~clip_adapter.datasets.class_ids.class_ids`; a model saved by
        ``run_one`` keeps them), classes are mapped by wnid without a ``class_map`` (ImageNet-V2/-Sketch/-A/-R). A
        dataset with a subset of the model's classes is scored on those classes' logits only, as the ImageNet-A/-R
        papers do.
        """
        items = dataset.split(split)
        if not items:
            raise ValueError(f"Split {split!r} of dataset {dataset.name} is empty.")
        remap = self.label_map(dataset, class_map)
        n_split = len(items)
        items = [it for it in items if remap[it.label] >= 0]  # "shared": images of classes the model lacks are left out
        if not items:
            raise ValueError(f"Split {split!r} of dataset {dataset.name} has no image of a class the model knows.")
        labels = remap[torch.tensor([it.label for it in items], dtype=torch.long)]
        scored = remap[remap >= 0].unique()  # a subset of the model's classes (-A/-R, shared): only its logits count
        if self.method.inputs == "images":  # its encoders are adapted: the backbone's cached features do not apply
            logits = self.method.logits(ImageSet.of(items, self.backbone))
        else:
            cache = cache or FeatureCache(self.backbone)
            if cache.backbone.id != self.backbone.id:
                raise ValueError(f"The feature cache is for {cache.backbone.id!r}; the model uses "
                                 f"{self.backbone.id!r}.")
            logits = self.method.logits(cache.features(items))
        pred = scored[logits[:, scored].argmax(dim=-1)]
        m = evaluate_predictions(pred, labels, self.classes_)
        return {"dataset": dataset.name, "split": split, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                "per_class_accuracy": m["per_class_accuracy"], "n": m["n"], "method": self.method.name,
                "backbone": self.backbone.id, "saved_test_accuracy": self.info.get("test_accuracy"),
                "class_map": class_map if isinstance(class_map, (str, type(None))) else dict(class_map),
                "scored_classes": [self.classes_[i] for i in scored.tolist()], "left_out_images": n_split - len(items),
                "versions": package_versions(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def label_map(self, dataset, class_map: dict[str, str] | str | None = None) -> torch.Tensor:
        """Dataset label -> model label (a tensor indexed by the dataset's labels); see :meth:`evaluate`."""
        model, data = self.classes_, list(dataset.classnames)
        if class_map == "shared":  # the classes both label sets have, by name; -1 marks a class the model lacks
            common = set(data) & set(model)
            if not common:
                raise ValueError(f"Dataset {dataset.name} and the model share no class name (dataset: {data[:5]}..., "
                                 f"model: {model[:5]}...); map them with a class map instead.")
            return torch.tensor([model.index(c) if c in common else -1 for c in data], dtype=torch.long)
        data_ids, model_ids = class_ids(dataset), self.info.get("class_ids")
        if class_map is None and sorted(data) != sorted(model) and data_ids is not None and model_ids is not None:
            # both sides know their wnids (ImageNet and its variants): map by them, naming what does not map
            return torch.tensor(map_classes(data, data_ids, model, model_ids, f"Dataset {dataset.name}")[0])
        if class_map is None and data_ids is not None and set(data) < set(model):
            class_map = "by-name"  # an ImageNet variant's subset (-A, -R) of a model that did not keep its wnids
        if class_map is None:
            if sorted(data) != sorted(model):
                only_data, only_model = sorted(set(data) - set(model)), sorted(set(model) - set(data))
                raise ValueError(f"Dataset {dataset.name} and the model have different classes (only in the dataset: "
                                 f"{only_data[:10] or 'none'}; only in the model: {only_model[:10] or 'none'}); map "
                                 f"them explicitly: class_map={{dataset class: model class}}, or 'by-name' for a "
                                 f"subset (CLI: --class-map FILE.json | a=b,c=d | by-name).")
            class_map = "by-name"
        if isinstance(class_map, str) and class_map != "by-name":
            raise ValueError(f"class_map must be a mapping, 'by-name' or 'shared'. Got {class_map!r} instead.")
        mapping = {} if class_map == "by-name" else dict(class_map)
        unknown = sorted(set(mapping) - set(data))
        if unknown:
            raise ValueError(f"class_map names {unknown[0]!r}, which is not a class of dataset {dataset.name}.")
        out, source = [], {}
        for c in data:
            target = mapping.get(c, c)
            if target not in model:
                raise ValueError(f"Dataset class {c!r} maps to {target!r}, which is not a class of the model "
                                 f"(its classes: {model[:20]}).")
            if target in source:  # two dataset classes scored as one would count confusions between them as right
                raise ValueError(f"Dataset classes {source[target]!r} and {c!r} both map to the model class "
                                 f"{target!r}; a class map must map each dataset class to its own model class.")
            source[target] = c
            out.append(model.index(target))
        return torch.tensor(out, dtype=torch.long)


def _chosen_backbone(name: str, spec: BackboneSpec, bid: str | None, cfg_file: Path, device, checkpoint) -> Any:
    """The backbone the user named (``--backbone NAME``): loaded as asked (an explicit choice, so the #17 rule that a
    saved model opens nothing unapproved is kept), then refused in one line unless its id is the saved one."""
    chosen = BackboneSpec.of(name, pretrained=None, checkpoint=None if checkpoint is None else str(checkpoint),
                             device=str(device))
    if chosen.family == OPEN_CLIP == spec.family:   # an open_clip architecture: with the saved pretrained tag
        chosen = replace(chosen, pretrained=spec.pretrained)
    loaded = chosen.build()   # seeded, as experiments build it: a random init is the same model again
    if bid and loaded.id != bid:
        raise ValueError(f"{cfg_file}: the backbone given ({name!r:.100}) is {loaded.id!r:.100}, but the model was "
                         f"saved with {bid!r:.100}; pass the backbone it was trained on.")
    return loaded


# What open_clip reads from an architecture config to fetch other weights or code: a saved model may not name them.
_FETCHING_KEYS = ("hf_model_name", "hf_tokenizer_name", "hf_model_pretrained", "timm_model_pretrained")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}")


def check_recipe(spec: BackboneSpec, cfg_file: Path) -> BackboneSpec:
    """A saved backbone description is rebuilt only if it is a recipe this tool writes: a name a registered
    backbone factory builds (:func:`~clip_adapter.backbones.base.builds_by_name`), a recipe its family's own check
    accepts (:func:`~clip_adapter.backbones.base.saved_recipe`: an ``hf:`` folder only at the path recorded at save
    time, unchanged), or an open_clip architecture under a plain name with its config saved next to it, naming no
    Hugging Face model or other weights to fetch. Never a hub repo or any other path. Returns the spec to load."""
    if not spec.family or builds_by_name(spec.family, spec.name):
        return spec  # no family: nothing to rebuild (from_pretrained says to pass the backbone)
    rebuilt = saved_recipe(spec, str(cfg_file))
    if rebuilt is not None:
        return rebuilt
    name = spec.name or ""
    if spec.family != OPEN_CLIP:
        raise ValueError(f"{cfg_file}: backbone {spec.id!r:.100} is not one this clip-adapter builds (family "
                         f"{spec.family!r:.40}, name {name!r:.60}); refusing to load it. Pass the backbone yourself: "
                         f"--backbone NAME on the command line, from_pretrained(dir, backbone=bb) in Python.")
    if not _PLAIN_NAME.fullmatch(name) or name.endswith(".json"):
        raise ValueError(f"{cfg_file}: the backbone {name!r:.80} is not a registered open_clip architecture name (a "
                         f"path, hub repo or folder is never opened from a saved model); refusing to load it. Pass "
                         f"it yourself if you trust it: --backbone NAME on the command line, "
                         f"from_pretrained(dir, backbone=bb) in Python.")
    cfg = spec.model_config
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"{cfg_file}: the backbone {name!r} is not a known open_clip architecture and no valid "
                         f"architecture config is saved with the model; refusing to load it.")
    bad = _fetching(cfg)
    if bad:
        raise ValueError(f"{cfg_file}: the saved architecture of backbone {name!r} names weights or code to fetch "
                         f"({bad}); a saved model may not. Load that backbone yourself and pass it: "
                         f"--backbone NAME on the command line, from_pretrained(dir, backbone=bb) in Python.")
    return spec


def _fetching(obj: Any, path: str = "") -> str | None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _FETCHING_KEYS and v not in (None, False, ""):
                return f"{path}{k}={v!r:.60}"
            found = _fetching(v, f"{path}{k}.")
            if found:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _fetching(v, path)
            if found:
                return found
    return None


def _check_count(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise invalid_value(name, value, f"an int >= {low}", owner="AdaptedClassifier")
