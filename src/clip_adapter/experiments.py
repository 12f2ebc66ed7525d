"""Run the few-shot protocol: one (dataset, method, shots, seed) run here; grids build on it.

Protocol (CoOp / CLIP-Adapter): K images per class from train (seeded), validation subsampled to
min(K, 4) per class, hyper-parameters chosen on that validation set only, then the full test split is
encoded and scored once.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .data import Dataset, Item
from .evaluation import evaluate_predictions
from .features import FeatureCache
from .fewshot import sample_k_shot, val_shots
from .io import package_versions, write_json
from .methods import get_method_class
from .prompts import ClassText, encode_class_texts
from .selection import FeatureSplit, select

__all__ = ["RunSpec", "run_one", "result_path", "model_card"]

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """What one run needs besides the data and the backbone."""

    method: str
    shots: int = 16
    seed: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)   # fixed config values
    grid: dict[str, list] | None = None    # searched on val; None = the method's default grid
    n_views: int = 10                      # cached augmented views per training image
    repeat_shots: bool = False             # sample with repetition when a class is short
    templates: list[str] | None = None     # prompt templates; None = the dataset's
    train_items: list[Item] | None = None  # explicit few-shot train set (index file); overrides sampling
    val_items: list[Item] | None = None


def _labels(items: Sequence[Item]) -> torch.Tensor:
    return torch.tensor([it.label for it in items], dtype=torch.long)


def result_path(output: str | Path, dataset: str, method: str, shots: int, seed: int) -> Path:
    """Where the record of one run lives: ``<output>/<dataset>/<method>/shots<K>-seed<S>.json``."""
    return Path(output) / dataset / method / f"shots{shots}-seed{seed}.json"


def text_fingerprint(features: torch.Tensor) -> str:
    """First 16 hex digits of the sha256 of the class text features, L2-normalised and rounded to 1e-4 (so thread
    counts and BLAS rounding do not change it): runs whose zero-shot prior differed show it even when the backbone
    id is the same (e.g. a changed alignment recipe)."""
    q = torch.round(F.normalize(features.detach().float().cpu(), dim=-1) * 1e4).to(torch.int32)
    return hashlib.sha256(q.contiguous().numpy().tobytes()).hexdigest()[:16]


def run_one(dataset: Dataset, backbone, spec: RunSpec, cache: FeatureCache | None = None,
            output: str | Path | None = None, save_model: str | Path | None = None,
            text: ClassText | None = None) -> dict:
    """Fit ``spec.method`` on K shots, select on val, score on test; return (and optionally write) the record."""
    cache = cache or FeatureCache(backbone)
    cls = get_method_class(spec.method)
    unknown = sorted(set(spec.overrides) - set(cls.config_cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Unknown {cls.config_cls.__name__} key {unknown[0]!r} for method {spec.method!r}; valid: "
                         f"{', '.join(sorted(cls.config_cls.__dataclass_fields__))}.")
    config = cls.config_cls(**{"seed": spec.seed, **spec.overrides})
    grid = dict(cls.default_grid if spec.grid is None else spec.grid)
    grid = {k: v for k, v in grid.items() if k not in spec.overrides}  # a fixed value beats its grid
    templates = spec.templates or dataset.templates
    t_start = time.perf_counter()
    if text is None:
        text = encode_class_texts(backbone, dataset.classnames, templates)

    # -- train / val (the only data selection sees) --------------------------------------------------------
    train_items: list[Item] = []
    val_items: list[Item] = []
    if cls.trains:
        if spec.train_items is not None:
            train_items = list(spec.train_items)
        else:
            train_items = sample_k_shot(dataset.split("train"), spec.shots, spec.seed, repeat=spec.repeat_shots,
                                        classnames=dataset.classnames)
        if spec.val_items is not None:
            val_items = list(spec.val_items)
        else:
            val_items = sample_k_shot(dataset.split("val"), val_shots(spec.shots), spec.seed, repeat=True,
                                      classnames=dataset.classnames)
        # The cache is per image: other seeds / shot counts / runs reuse these features.
        feats = cache.features(train_items)
        views = cache.views(train_items, spec.n_views) if spec.n_views > 0 else None
        val_feats = cache.features(val_items)
        train = FeatureSplit(feats, _labels(train_items), views)
        val = FeatureSplit(val_feats, _labels(val_items))
    else:
        d = text.features.shape[1]
        train = val = FeatureSplit(torch.zeros(0, d), torch.zeros(0, dtype=torch.long))
    sel = select(spec.method, config, grid, train, val, text, backbone=backbone)
    train_seconds = sel.seconds

    # -- test: encoded and scored once, after selection ----------------------------------------------------
    test_items = dataset.split("test")
    test_feats = cache.features(test_items)
    t_pred = time.perf_counter()
    pred = sel.model.predict(test_feats)
    metrics = evaluate_predictions(pred, _labels(test_items), dataset.classnames)
    record = {
        "dataset": dataset.name, "method": spec.method, "shots": spec.shots if cls.trains else 0,
        "seed": spec.seed, "split": "test", "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "per_class_accuracy": metrics["per_class_accuracy"], "n_test": metrics["n"],
        "n_train": len(train_items), "n_val": len(val_items),
        "val_accuracy": None if math.isnan(sel.val_accuracy) else sel.val_accuracy,  # strict JSON has no NaN
        "chosen": sel.chosen, "candidates": sel.candidates, "config": sel.config.to_dict(), "grid": grid,
        "n_views": spec.n_views if cls.trains else 0, "templates": templates, "backbone": backbone.id,
        "backbone_detail": backbone.describe() if hasattr(backbone, "describe") else {},
        "text_features_sha256": text_fingerprint(text.features),
        "train_seconds": train_seconds, "predict_seconds": time.perf_counter() - t_pred,
        "total_seconds": time.perf_counter() - t_start, "dataset_source": dataset.source,
        "trainable_parameters": sel.model.num_trainable_parameters(),
        "versions": package_versions(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if output is not None:
        path = result_path(output, dataset.name, spec.method, record["shots"], spec.seed)
        write_json(path, record)
        record["result_file"] = str(path)
    if save_model is not None:
        from .predict import backbone_spec  # how AdaptedClassifier.from_pretrained rebuilds the backbone
        card = model_card(record)
        sel.model.save_pretrained(save_model, backbone_id=backbone.id,
                                  extra={"dataset": dataset.name, "shots": record["shots"], "seed": spec.seed,
                                         "test_accuracy": record["accuracy"], "model_card": card,
                                         "backbone": backbone_spec(backbone)})
        record["model_dir"] = str(save_model)
    return record


def model_card(record: dict) -> str:
    """A short README for a saved model: what it is, what it was trained on, how well it did."""
    return (f"# {record['method']} on {record['dataset']}\n\n"
            f"- backbone: `{record['backbone']}`\n- shots per class: {record['shots']}, seed {record['seed']}\n"
            f"- chosen on validation: `{record['chosen']}` (val accuracy {record['val_accuracy'] or float('nan'):.4f})\n"
            f"- test accuracy: {record['accuracy']:.4f}, macro-F1 {record['macro_f1']:.4f} "
            f"({record['n_test']} images)\n- templates: {record['templates']}\n\n"
            f"Load with `clip_adapter.AdaptedClassifier.from_pretrained(dir)` or "
            f"`clip-adapter predict DIR IMAGES...`.\n")
