"""The generalisation protocols on top of the few-shot run: base-to-new (CoCoOp), domain shift and cross-dataset
transfer. Each is one :func:`~clip_adapter.protocol.run_one` plus extra scoring of the chosen model, stored in the
same record (:data:`~clip_adapter.protocol.OPTIONAL_FIELDS`).

* :func:`run_base_to_new`: the few-shot train and val sets are sampled from all classes, then cut to the base half
  (:mod:`clip_adapter.datasets.base_new`, CoCoOp's order); the method is fitted and selected on base images only;
  ``accuracy`` = ``base_accuracy`` is on the base test images with the base classifier; ``new_accuracy`` on the new
  test images with a classifier of the new class names only: the fitted model's :meth:`for_classes` when its
  method transfers (``unseen_classes = "transfer"``: CoOp's context, CLIP-Adapter's adapters), else zero-shot
  CLIP (``"zero_shot_fallback"``: a linear probe's rows, Tip-Adapter's cache). The record says which.
* :func:`score_on`: a fitted model on another dataset's test split. When the target's classes are the model's
  (matched by wnid, else by name; ImageNet-V2/-Sketch, or the 200-class ImageNet-A/-R scored on their 200 logits)
  every method applies; otherwise only a transferring method can be scored, with the target's class names.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from .datasets.base_new import base_new_labels, class_subset, subsample_items
from .datasets.class_ids import class_ids, map_classes
from .datasets.types import Dataset
from .evaluation import evaluate_predictions
from .features import FeatureCache
from .methods import FewShotMethod, get_method, get_method_class
from .prompts import ClassText, encode_class_texts
from .protocol import RunSpec, fewshot_items, run_one

__all__ = ["run_base_to_new", "base_to_new_split", "score_on", "harmonic_mean", "transfer_after"]

log = logging.getLogger(__name__)


def harmonic_mean(base: float, new: float) -> float:
    """``2 * base * new / (base + new)`` (0 when both are 0)."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def _labels(items) -> torch.Tensor:
    return torch.tensor([it.label for it in items], dtype=torch.long)


def base_to_new_split(dataset: Dataset, spec: RunSpec) -> tuple[Dataset, Dataset, RunSpec]:
    """(base dataset, new dataset, the spec of the base run): CoCoOp's order. The few-shot train/val sets are
    sampled from every class (or read from the spec's index file), the labels of that train set are split
    (:func:`~clip_adapter.datasets.base_new.base_new_labels`), and every split is cut to each half."""
    trains = get_method_class(spec.method).trains
    if trains:
        train, val = fewshot_items(dataset, spec)
        labels = [it.label for it in train]
    else:  # zero-shot samples nothing; the split is over the classes of the train split
        train = val = []
        labels = [it.label for it in dataset.split("train")] or list(range(dataset.num_classes))
    base_ids, _ = base_new_labels(labels)
    base_ds, new_ds = class_subset(dataset, "base", labels), class_subset(dataset, "new", labels)
    if not new_ds.classnames:
        raise ValueError(f"Dataset {dataset.name} has {len(base_ds.classnames)} class(es); base-to-new needs at "
                         f"least 2 (half of them are held out as new classes).")
    base_spec = spec.replace(train_items=subsample_items(train, base_ids) if trains else None,
                             val_items=subsample_items(val, base_ids) if trains else None)
    return base_ds, new_ds, base_spec


def _features(cache, items) -> torch.Tensor:
    stream = getattr(cache, "iter_features", None)  # block activations are streamed in chunks
    return torch.cat(list(stream(items))) if stream is not None else cache.features(items)


def _new_classes_after(base_ds: Dataset, new_ds: Dataset, backbone, cache,
                       templates: list[str]) -> Callable[[FewShotMethod, dict], dict]:
    def after(model: FewShotMethod, record: dict) -> dict:
        text = encode_class_texts(backbone, new_ds.classnames, templates)
        mode = model.unseen_mode()
        scorer = model.for_classes(text) if mode == "transfer" else get_method("zero_shot").fit(text=text)
        items = new_ds.split("test")
        m = evaluate_predictions(scorer.predict(_features(cache, items)), _labels(items), new_ds.classnames)
        base = record["accuracy"]
        return {"protocol": "base_to_new", "base_accuracy": base, "new_accuracy": m["accuracy"],
                "harmonic_mean": harmonic_mean(base, m["accuracy"]), "unseen_classes": mode,
                "base_classes": list(base_ds.classnames), "new_classes": list(new_ds.classnames),
                "n_test_new": m["n"]}
    return after


def run_base_to_new(dataset: Dataset, backbone, spec: RunSpec, cache: FeatureCache | None = None,
                    output: str | Path | None = None, save_model: str | Path | None = None,
                    extra: dict[str, Any] | None = None, overwrite: bool = False) -> dict:
    """One base-to-new run (see the module docstring); returns (and writes, with ``output``) its record, whose
    ``dataset`` is the full dataset's name and ``accuracy`` the base accuracy (``save_model``, ``overwrite``: as
    :func:`~clip_adapter.protocol.run_one`; the model saved is the base-class model)."""
    cache = cache or FeatureCache(backbone)
    base_ds, new_ds, base_spec = base_to_new_split(dataset, spec)
    templates = spec.templates or dataset.templates
    if get_method_class(spec.method).unseen_classes != "transfer":
        log.info("%s is class-specific: the new classes of %s are scored by zero-shot CLIP (zero-shot fallback).",
                 spec.method, dataset.name)
    return run_one(base_ds, backbone, base_spec, cache=cache, output=output, save_model=save_model, extra=extra,
                   overwrite=overwrite, after=_new_classes_after(base_ds, new_ds, backbone, cache, templates))


# -- domain shift and cross-dataset transfer -------------------------------------------------------------------
def score_on(model: FewShotMethod, target: Dataset, backbone, cache, *, model_ids: list[str] | None = None,
             templates: list[str] | None = None, text: ClassText | None = None) -> dict[str, Any]:
    """The fitted ``model`` on ``target``'s test split: ``{dataset, accuracy, macro_f1, n_test, classes, matched}``,
    or ``{dataset, applicable: False, reason}`` when its classes are not the model's and the method cannot score
    classes it never saw.

    Args:
        model_ids: the wnids of the model's classes (its training dataset's :func:`class_ids`).
        templates, text: the target's prompt templates or class text features (for a transferring method).
    """
    items = target.split("test")
    if not items:
        raise ValueError(f"Dataset {target.name} has no test images; nothing to score.")
    try:
        index, how = map_classes(target.classnames, class_ids(target), model.classes_, model_ids,
                                 f"Dataset {target.name}")
    except ValueError as unmapped:
        if model.unseen_mode() != "transfer":
            return {"dataset": target.name, "applicable": False,
                    "reason": f"{type(model).name} is class-specific ({model.unseen_mode()}); {unmapped}"}
        text = text or encode_class_texts(backbone, target.classnames, templates or target.templates)
        scorer, index, how = model.for_classes(text), None, "transfer (the target's class names)"
    else:
        scorer = model
    with torch.no_grad():
        logits = scorer.logits(_features(cache, items))
    if index is not None:  # only the target's classes are scored (ImageNet-A/-R: 200 of 1000 logits)
        logits = logits[:, torch.tensor(index, dtype=torch.long)]
    m = evaluate_predictions(logits.argmax(dim=-1), _labels(items), target.classnames)
    return {"dataset": target.name, "applicable": True, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "n_test": m["n"], "classes": len(target.classnames), "matched": how}


def transfer_after(source: Dataset, targets: list[Dataset], backbone, cache,
                   texts: dict[str, ClassText] | None = None) -> Callable[[FewShotMethod, dict], dict]:
    """The ``after`` hook of a source run: its model scored on every target (the record's ``transfer`` list)."""
    ids = class_ids(source)

    def after(model: FewShotMethod, record: dict) -> dict:
        return {"transfer": [score_on(model, t, backbone, cache, model_ids=ids, text=(texts or {}).get(t.name))
                             for t in targets]}
    return after
