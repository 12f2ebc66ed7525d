"""The few-shot protocol of one run, and the only builder of a result record.

One run = one ``(dataset, method, shots, seed)``: K images per class from train (seeded), validation subsampled to
min(K, 4) per class (``hp_selection``: ``few_shot_val``; or the whole val split, ``full_val``; or no search,
``none``), hyper-parameters chosen on that validation set only (:func:`~clip_adapter.selection.select`),
then the full test split is encoded and scored once. :func:`run_one` does exactly that; ``clip-adapter run``,
the experiment grid, the ablations and the demo all produce their records through it, so every record has the
fields of :data:`RECORD_FIELDS` (plus the producer's own, listed in :data:`OPTIONAL_FIELDS`).
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .datasets.class_ids import class_ids
from .datasets.types import Dataset, Item
from .evaluation import evaluate_predictions
from .features import FeatureCache
from .fewshot import check_shots, sample_k_shot, sample_val
from .imageset import ImageSource
from .io import package_versions, write_json
from .config import Bool, Config, Interval, MethodConfig, NoneOr, Options, Predicate, Text, setting
from .methods import FewShotMethod, check_overrides, check_save_target, get_method_class
from .model import AdaptedClassifier
from .prompts import ClassText, encode_class_texts
from .results import result_path
from .selection import HP_SELECTION, FeatureSplit, Selection, select

__all__ = ["RunSpec", "run_one", "HP_SELECTION", "hp_selection_of", "resolve_config", "input_source", "fewshot_items",
           "select_on_val", "selection_data", "run_grid", "RECORD_FIELDS", "OPTIONAL_FIELDS", "MEMORY_FIELDS"]

log = logging.getLogger(__name__)

# The record schema, written down once. Every record has these fields (values: JSON; never NaN).
RECORD_FIELDS: dict[str, str] = {
    "dataset": "dataset name (an experiment's label for it)",
    "method": "registered method name",
    "shots": "training images per class (0 for methods that do not train)",
    "seed": "few-shot sampling and training seed",
    "split": "the split scored: always 'test'",
    "accuracy": "top-1 test accuracy in [0, 1]",
    "macro_f1": "macro-F1 over the classes present in test (scikit-learn)",
    "per_class_accuracy": "class name -> test accuracy",
    "n_test": "test images scored",
    "n_train": "few-shot training images (0 when the method does not train)",
    "n_val": "validation images selection saw",
    "val_accuracy": "validation accuracy of the chosen hyper-parameters (null when there is no validation)",
    "chosen": "hyper-parameters chosen on validation",
    "hp_selection": "how hyper-parameters were chosen: few_shot_val (min(K, 4) val images per class), full_val "
                    "(the whole val split) or none (defaults; also for methods with nothing to choose)",
    "at_grid_edge": "grid keys whose chosen value is the smallest or largest searched (the optimum may lie outside); "
                    "a value at an included end of the key's own range (CLIP-Adapter's alpha = 1) is not listed",
    "candidates": "every grid point with its validation accuracy",
    "config": "the resolved method config of the chosen model",
    "grid": "the grid searched on validation",
    "n_views": "cached augmented views per training image (0 when the method does not train or trains on images)",
    "templates": "prompt templates of the class text features",
    "backbone": "backbone id (see clip_adapter.backbones.BackboneSpec)",
    "backbone_detail": "facts beyond the id that determine the features (lite: alignment recipe)",
    "text_features_sha256": "fingerprint of the class text features (clip_adapter.prompts.text_fingerprint)",
    "trainable_parameters": "parameters learned by fit",
    "train_seconds": "fit and selection time (feature extraction excluded)",
    "predict_seconds": "time to score the test split",
    "total_seconds": "the run's wall time, feature extraction included",
    "dataset_source": "the split file, folder or CSV the dataset was read from",
    "versions": "versions of the packages that can change a result",
    "time": "UTC time the run finished (ISO 8601)",
}
# Fields some producers add (each through run_one's ``extra``).
OPTIONAL_FIELDS: dict[str, str] = {
    "variant": "the method line's label in an experiment (the result folder name)",
    "experiment": "the experiment's name",
    "run_settings": "what makes an experiment run what it is (a result made with other settings is not reused)",
    "ablation": "{param, value, method} of an ablation run (TEST accuracy at a fixed value)",
    "target": "placement ablation: where the adapter sits",
    "layer": "insertion-layer ablation: the block the adapter follows",
    "num_blocks": "insertion-layer ablation: blocks of the ViT",
    "auto": "--method auto: the methods tried with their validation accuracy, the rule and budget that chose",
    "protocol": "'base_to_new' (CoCoOp): trained on the base half of the classes, 'accuracy' is on base test images",
    "base_accuracy": "base-to-new: test accuracy on the base classes (base classifier only; = accuracy)",
    "new_accuracy": "base-to-new: test accuracy on the new classes (new classifier only, from their names)",
    "harmonic_mean": "base-to-new: 2 * base * new / (base + new)",
    "unseen_classes": "base-to-new: how new classes were scored: 'transfer' or 'zero_shot_fallback'",
    "base_classes": "base-to-new: the base class names, in label order",
    "new_classes": "base-to-new: the new class names, in label order",
    "n_test_new": "base-to-new: new-class test images scored",
    "transfer": "cross-dataset / domain shift: per target dataset, the model's accuracy there (or why not)",
}
# Set on the record in memory, never written into its file.
MEMORY_FIELDS: dict[str, str] = {"result_file": "where the record was written or read",
                                 "model_dir": "where the fitted model was saved"}


_MAPPING = "a mapping of config fields"


@dataclass
class RunSpec(Config):
    """What one run needs besides the data and the backbone (validated on construction, as every config)."""

    method: str = setting(doc="registered method name", check=Text())
    shots: int = setting(16, "training images per class", Interval(int, 0))
    seed: int = setting(1, "few-shot sampling and training seed", Interval(int, 0, 2**32 - 1))
    overrides: dict[str, Any] = setting(doc="fixed config values", factory=dict,
                                        check=Predicate(lambda v: isinstance(v, dict), _MAPPING))
    grid: dict[str, list] | None = setting(None, "searched on val; None = the method's default grid",
                                           Predicate(lambda v: v is None or isinstance(v, dict), _MAPPING))
    n_views: int = setting(10, "cached augmented views per training image", Interval(int, 0))
    repeat_shots: bool = setting(False, "sample with repetition when a class is short", Bool())
    templates: list[str] | None = setting(None, "prompt templates; None = the dataset's")
    train_items: list[Item] | None = setting(None, "explicit few-shot train set (index file); overrides sampling")
    val_items: list[Item] | None = setting(None, "explicit few-shot val set (index file)")
    variant: str | None = setting(None, "result folder name; None = the method's name", NoneOr(Text(no_slash=True)))
    device: str | None = setting(None, "training device of methods that have one (None: their default)",
                                 NoneOr(Text()))
    hp_selection: str = setting("few_shot_val", "few_shot_val (min(K, 4) per class), full_val, or none (no search)",
                                Options(HP_SELECTION))


def resolve_config(method: str, overrides: dict[str, Any], seed: int = 1,
                   device: str | None = None) -> tuple[type[FewShotMethod], MethodConfig]:
    """The method class and its validated config: ``seed``, then ``device`` (for methods that have one), then the
    overrides; an unknown override key is a one-line error with the closest field."""
    cls = get_method_class(method)
    check_overrides(cls, overrides, what="key", where=f"method {cls.name!r}")
    base: dict[str, Any] = {"seed": seed}
    if device is not None and "device" in cls.config_cls.field_names():
        base["device"] = device
    return cls, cls.config_cls(**{**base, **overrides})


def _check_targets(output: str | Path | None, save_model: str | Path | None, overwrite: bool) -> None:
    """Fail before any work when the results folder or the model folder cannot be written."""
    if output is not None and Path(output).exists() and not Path(output).is_dir():
        raise ValueError(f"The results folder {output} is an existing file; expected a folder.")
    if save_model is not None:
        check_save_target(save_model, overwrite=overwrite)


def _labels(items: Sequence[Item]) -> torch.Tensor:
    return torch.tensor([it.label for it in items], dtype=torch.long)


def hp_selection_of(cls: type[FewShotMethod], spec: RunSpec, grid: dict) -> str:
    """The run's effective selection regime, as records state it: ``none`` when there is nothing to choose (no
    grid, or a method that does not train; its validation accuracy is still measured), else the spec's."""
    return spec.hp_selection if cls.trains and grid else "none"


def fewshot_items(dataset: Dataset, spec: RunSpec) -> tuple[list[Item], list[Item]]:
    """The run's few-shot train and val items (the index file's when the spec has them, else seeded samples).
    Every class must be in the train set (with ``spec.shots`` images unless ``repeat_shots``): a one-line error
    naming the dataset and the classes, never a class silently left out.

    Validation follows ``spec.hp_selection``: ``few_shot_val`` samples min(K, 4) images per class (or takes the
    index file's), ``full_val`` takes the whole val split, ``none`` takes no validation images."""
    where = f"Dataset {dataset.name} ({dataset.source or 'in memory'})"
    if spec.train_items is not None:
        train = list(spec.train_items)
        counts = Counter(it.label for it in train)
        check_shots(counts, spec.shots, dataset.classnames, where=f"{where}: the given few-shot train set")
        if set(counts.values()) != {spec.shots}:
            raise ValueError(f"{where}: the given few-shot train set has {min(counts.values())} to "
                             f"{max(counts.values())} images per class; the spec says {spec.shots} shots.")
    else:
        train = sample_k_shot(dataset.split("train"), spec.shots, spec.seed, repeat=spec.repeat_shots,
                              classnames=dataset.classnames, where=where)
    if spec.hp_selection == "none":
        return train, []
    if spec.hp_selection == "full_val":
        return train, list(dataset.split("val"))
    val = list(spec.val_items) if spec.val_items is not None else sample_val(
        dataset.split("val"), spec.shots, spec.seed, dataset.classnames, where=where)
    return train, val


def input_source(cls: type[FewShotMethod], backbone, cache=None):
    """Where ``cls`` reads its train/val/test inputs: ``cache`` (a feature cache by default), or an
    :class:`~clip_adapter.imageset.ImageSource` for methods that train on images (``cls.inputs == "images"``)
    whatever cache was given, since cached features are of no use to them."""
    if cls.inputs == "images":
        return cache if isinstance(cache, ImageSource) else ImageSource(backbone)
    return cache or FeatureCache(backbone)


def _select(dataset: Dataset, backbone, spec: RunSpec, cls, config: MethodConfig, grid: dict, cache,
            text: ClassText) -> tuple[Selection, list[Item], list[Item]]:
    """Fit and choose on train/val only (the cache is per image: other seeds and shot counts reuse it)."""
    if not cls.trains:
        empty = FeatureSplit(torch.zeros(0, text.features.shape[1]), torch.zeros(0, dtype=torch.long))
        return select(spec.method, config, grid, empty, empty, text, backbone=backbone), [], []
    train, val, train_items, val_items = selection_data(dataset, spec, cache, text)
    return select(spec.method, config, grid, train, val, text, backbone=backbone), train_items, val_items


def selection_data(dataset: Dataset, spec: RunSpec, cache,
                   text: ClassText) -> tuple[FeatureSplit, FeatureSplit, list[Item], list[Item]]:
    """The run's few-shot train split (features, labels, views) and val split, and their items."""
    train_items, val_items = fewshot_items(dataset, spec)
    views = cache.views(train_items, spec.n_views) if spec.n_views > 0 else None  # None from an ImageSource
    train = FeatureSplit(cache.features(train_items), _labels(train_items), views)
    val = FeatureSplit(cache.features(val_items), _labels(val_items)) if val_items else \
        FeatureSplit(torch.zeros(0, text.features.shape[1]), torch.zeros(0, dtype=torch.long))
    return train, val, train_items, val_items


def run_grid(spec: RunSpec) -> tuple[type[FewShotMethod], MethodConfig, dict]:
    """The run's method class, resolved config and the grid it searches (as :func:`run_one` searches it)."""
    cls, config = resolve_config(spec.method, spec.overrides, spec.seed, spec.device)
    grid = dict(cls.default_grid if spec.grid is None else spec.grid)
    grid = {k: v for k, v in grid.items() if k not in spec.overrides}  # a fixed value beats its grid
    if spec.hp_selection == "none":
        grid = {}  # no search: the config's values
    return cls, config, grid


def select_on_val(dataset: Dataset, backbone, spec: RunSpec, cache, text: ClassText) -> tuple[Selection, float]:
    """The run's validation search only (the test split is not touched): the selection and its validation
    accuracy on the run's few-shot val set, also for methods with nothing to search (zero-shot)."""
    cls, config = resolve_config(spec.method, spec.overrides, spec.seed, spec.device)
    grid = dict(cls.default_grid if spec.grid is None else spec.grid)
    grid = {k: v for k, v in grid.items() if k not in spec.overrides} if spec.hp_selection != "none" else {}
    sel, _, _ = _select(dataset, backbone, spec, cls, config, grid, cache, text)
    if not math.isnan(sel.val_accuracy):
        return sel, float(sel.val_accuracy)
    _, val_items = fewshot_items(dataset, spec)
    if not val_items:
        raise ValueError(f"Dataset {dataset.name} has no validation images: nothing to choose a method on.")
    pred = sel.model.predict(cache.features(val_items))
    return sel, float((pred == _labels(val_items)).float().mean())


def _predict_test(model: FewShotMethod, cache, items: list[Item]) -> tuple[torch.Tensor, float]:
    """Predictions on the test split and the seconds spent predicting (extraction excluded); chunk by chunk when the
    cache streams (block activations are too large to keep)."""
    stream = getattr(cache, "iter_features", None)
    if stream is None:
        feats = cache.features(items)
        t0 = time.perf_counter()
        return model.predict(feats), time.perf_counter() - t0
    chunks, seconds = [], 0.0
    for x in stream(items):
        t0 = time.perf_counter()
        chunks.append(model.predict(x))
        seconds += time.perf_counter() - t0
    return (torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)), seconds


def _record(dataset: Dataset, backbone, spec: RunSpec, trains: bool, sel: Selection, metrics: dict,
            text: ClassText, templates: list[str], grid: dict, sizes: tuple[int, int], seconds: dict) -> dict:
    """The record: exactly the fields of :data:`RECORD_FIELDS`."""
    record = {
        "dataset": dataset.name, "method": spec.method, "shots": spec.shots if trains else 0, "seed": spec.seed,
        "split": "test", "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "per_class_accuracy": metrics["per_class_accuracy"], "n_test": metrics["n"],
        "n_train": sizes[0], "n_val": sizes[1],
        "val_accuracy": None if math.isnan(sel.val_accuracy) else sel.val_accuracy,  # strict JSON has no NaN
        "chosen": sel.chosen, "hp_selection": hp_selection_of(get_method_class(spec.method), spec, grid),
        "at_grid_edge": sel.at_grid_edge, "candidates": sel.candidates, "config": sel.config.to_dict(), "grid": grid,
        "n_views": spec.n_views if trains and sel.model.inputs == "features" else 0, "templates": templates,
        "backbone": backbone.id,
        "backbone_detail": backbone.describe() if hasattr(backbone, "describe") else {},
        "text_features_sha256": text.fingerprint(), "trainable_parameters": sel.model.num_trainable_parameters(),
        "train_seconds": sel.seconds, **seconds, "dataset_source": dataset.source, "versions": package_versions(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    assert set(record) == set(RECORD_FIELDS), sorted(set(record) ^ set(RECORD_FIELDS))
    return record


def run_one(dataset: Dataset, backbone, spec: RunSpec, cache: FeatureCache | None = None,
            output: str | Path | None = None, save_model: str | Path | None = None,
            text: ClassText | None = None, extra: dict[str, Any] | None = None, overwrite: bool = False,
            after: Callable[[FewShotMethod, dict], dict] | None = None,
            selected: tuple[Selection, list[Item], list[Item]] | None = None) -> dict:
    """Fit ``spec.method`` on K shots, select on val, score on test; return (and optionally write) the record.

    Args:
        cache: where features come from (a :class:`~clip_adapter.features.FeatureCache` of ``backbone`` by default;
            a :class:`~clip_adapter.layers.ActivationCache` for the insertion-layer adapter).
        output: write the record to ``<output>/<dataset>/<variant>/shots<K>-seed<S>.json``.
        save_model: also save the fitted model there (:class:`~clip_adapter.model.AdaptedClassifier`); it is
            saved before the record is written, so a failed save leaves no record behind.
        text: precomputed class text features (an experiment encodes them once per dataset).
        extra: producer fields (:data:`OPTIONAL_FIELDS`) stored with the record.
        overwrite: let ``save_model`` replace a model saved there before.
        after: called with the chosen model and the record once test is scored; the fields it returns
            (:data:`OPTIONAL_FIELDS`) are stored with the record (base-to-new's new classes, transfer targets).
        selected: the run's search already made (``(selection, train items, val items)``, e.g. by
            :func:`~clip_adapter.selection.select_many` for several seeds at once): not searched again.
    """
    _check_targets(output, save_model, overwrite)
    if not dataset.split("test"):
        raise ValueError(f"Dataset {dataset.name} ({dataset.source}) has no test images; nothing to score.")
    cls, config, grid = run_grid(spec)
    cache = input_source(cls, backbone, cache)
    templates = spec.templates or dataset.templates
    t_start = time.perf_counter()
    if text is None:
        text = encode_class_texts(backbone, dataset.classnames, templates)
    if selected is None:
        sel, train_items, val_items = _select(dataset, backbone, spec, cls, config, grid, cache, text)
    else:   # searched already, with other seeds' runs (an experiment's batch_seeds)
        sel, train_items, val_items = selected
        t_start -= sel.seconds
    # -- test: encoded and scored once, after selection ----------------------------------------------------
    test_items = dataset.split("test")
    pred, predict_seconds = _predict_test(sel.model, cache, test_items)
    metrics = evaluate_predictions(pred, _labels(test_items), dataset.classnames)
    seconds = {"predict_seconds": predict_seconds, "total_seconds": time.perf_counter() - t_start}
    record = _record(dataset, backbone, spec, cls.trains, sel, metrics, text, templates, grid,
                     (len(train_items), len(val_items)), seconds)
    record.update(extra or {})
    if after is not None:
        record.update(after(sel.model, record))
    if save_model is not None:  # first: a model that cannot be saved must not leave a record claiming a run
        model = AdaptedClassifier(backbone, sel.model)
        facts = {"dataset": dataset.name, "shots": record["shots"], "seed": spec.seed,
                 "test_accuracy": record["accuracy"]}
        if (ids := class_ids(dataset)) is not None:
            facts["class_ids"] = ids  # wnids: evaluation on ImageNet variants maps classes by them
        card = model.card(**facts, chosen=record["chosen"], val_accuracy=record["val_accuracy"],
                          macro_f1=record["macro_f1"], n_test=record["n_test"])
        model.save_pretrained(save_model, model_card=card, overwrite=overwrite, **facts)
        record["model_dir"] = str(save_model)
    if output is not None:
        path = result_path(output, dataset.name, spec.variant or spec.method, record["shots"], spec.seed)
        write_json(path, {k: v for k, v in record.items() if k != "model_dir"})
        record["result_file"] = str(path)
    return record
