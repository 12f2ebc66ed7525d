"""Ablations of CLIP-Adapter: where the adapter sits (image / text / both) and after which ViT block.

**Placement** needs no new method: CLIP-Adapter's ``target`` and its two residual ratios are config fields, so a
placement is a :class:`~clip_adapter.experiments.RunSpec` with an override and a grid::

    RunSpec("clip_adapter", overrides={"target": "image"}, grid={"alpha": [0.2, 0.4, 0.6, 0.8]})
    RunSpec("clip_adapter", overrides={"target": "text"}, grid={"alpha_text": [0.2, 0.4, 0.6, 0.8]})
    RunSpec("clip_adapter", overrides={"target": "both"}, grid={"alpha": [...], "alpha_text": [...]})

(CLI: ``--method clip_adapter --set target=text``.) :func:`placement_specs` builds the three and
:func:`placement_table` runs them through :func:`~clip_adapter.experiments.run_one`.

**Insertion layer** uses the ``clip_adapter_layer`` method on activations cached after block ``k``
(:mod:`clip_adapter.layers`); :func:`layer_sweep` gives one record per layer, the last layer being plain
CLIP-Adapter on image features. Every choice is made on the validation split; test is read once per layer.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import Dataset
from .evaluation import evaluate_predictions
from .experiments import RunSpec, run_one
from .fewshot import sample_k_shot, val_shots
from .io import package_versions, write_json
from .layers import ActivationCache, encode_activations, num_blocks, resolve_layer
from .methods import get_method_class
from .prompts import ClassText, encode_class_texts
from .selection import FeatureSplit, select

__all__ = ["PLACEMENTS", "ALPHAS", "placement_specs", "placement_table", "layer_sweep"]

log = logging.getLogger(__name__)

PLACEMENTS = ("image", "text", "both")
ALPHAS = (0.2, 0.4, 0.6, 0.8)  # CLIP-Adapter's default alpha grid


def placement_specs(shots: int = 16, seed: int = 1, alphas: Sequence[float] = ALPHAS,
                    overrides: dict[str, Any] | None = None, **spec_kw) -> list[RunSpec]:
    """One CLIP-Adapter :class:`RunSpec` per placement, each searching its own residual ratio(s) on val."""
    a = list(alphas)
    grids = {"image": {"alpha": a}, "text": {"alpha_text": a}, "both": {"alpha": a, "alpha_text": a}}
    return [RunSpec("clip_adapter", shots=shots, seed=seed, overrides={**(overrides or {}), "target": t},
                    grid=grids[t], **spec_kw) for t in PLACEMENTS]


def placement_table(dataset: Dataset, backbone, shots: Sequence[int] = (16,), seeds: Sequence[int] = (1,),
                    alphas: Sequence[float] = ALPHAS, overrides: dict[str, Any] | None = None, cache=None,
                    output: str | Path | None = None, **spec_kw) -> list[dict]:
    """Run the three placements for every (shots, seed); records carry ``target``.

    With ``output``, each record is written to ``<output>/<dataset>/clip_adapter-<target>/shots<K>-seed<S>.json``.
    """
    rows = []
    for k in shots:
        for s in seeds:
            for spec in placement_specs(k, s, alphas, overrides, **spec_kw):
                rec = run_one(dataset, backbone, spec, cache=cache)
                rec["target"] = spec.overrides["target"]
                if output is not None:
                    path = Path(output) / dataset.name / f"clip_adapter-{rec['target']}" / f"shots{k}-seed{s}.json"
                    write_json(path, rec)
                    rec["result_file"] = str(path)
                rows.append(rec)
    return rows


def layer_sweep(dataset: Dataset, backbone, layers: Sequence[int] | None = None, shots: int = 16, seed: int = 1, *,
                overrides: dict[str, Any] | None = None, grid: dict[str, list] | None = None, n_views: int = 0,
                templates: list[str] | None = None, text: ClassText | None = None,
                root: str | Path | None = None, batch_size: int = 32, num_workers: int | None = None,
                progress: bool = False, output: str | Path | None = None) -> list[dict]:
    """Accuracy vs insertion layer: fit ``clip_adapter_layer`` after each block in ``layers`` (default all).

    Args:
        dataset, backbone: the data and an open_clip ViT backbone.
        layers: insertion positions ``1..L`` (negative: from the end); ``L`` = feature-level CLIP-Adapter.
        shots, seed: K images per class from train (seeded), val subsampled to min(K, 4) per class.
        overrides: fixed :class:`~clip_adapter.methods.layer_adapter.LayerAdapterConfig` values (``epochs``...).
        grid: searched on val (default: the method's alpha grid).
        n_views: cached augmented views per training image; activations are large (ViT-B/16: 605 KB per image
            and view), so the default 0 trains on the test-transform activations.
        root: activation cache directory (default ``$CLIP_ADAPTER_CACHE/activations``).
        output: write each record to ``<output>/<dataset>/clip_adapter_layer/shots<K>-seed<S>-layer<k>.json``.

    Returns one record per layer (``layer``, ``accuracy``, ``val_accuracy``, ``chosen``, ...), in layer order.
    """
    method = "clip_adapter_layer"
    cls = get_method_class(method)
    overrides = dict(overrides or {})
    if "layer" in overrides:
        raise ValueError("layer_sweep sets 'layer' itself; pass the positions as layers=[...].")
    n_blocks = num_blocks(backbone)
    positions = [resolve_layer(k, n_blocks) for k in (layers if layers is not None else range(1, n_blocks + 1))]
    grid = {k: v for k, v in dict(cls.default_grid if grid is None else grid).items() if k not in overrides}
    templates = templates or dataset.templates
    if text is None:
        text = encode_class_texts(backbone, dataset.classnames, templates)
    train_items = sample_k_shot(dataset.split("train"), shots, seed, classnames=dataset.classnames)
    val_items = sample_k_shot(dataset.split("val"), val_shots(shots), seed, repeat=True, classnames=dataset.classnames)
    test_items = dataset.split("test")
    y_train, y_val, y_test = (torch.tensor([it.label for it in items], dtype=torch.long)
                              for items in (train_items, val_items, test_items))
    rows = []
    for k in positions:
        t0 = time.perf_counter()
        config = cls.config_cls(**{"seed": seed, **overrides, "layer": k})
        cache = ActivationCache(backbone, k, root=root, batch_size=batch_size, num_workers=num_workers,
                                progress=progress)
        train = FeatureSplit(cache.features(train_items), y_train,
                             cache.views(train_items, n_views) if n_views > 0 else None)
        val = FeatureSplit(cache.features(val_items), y_val)
        del cache  # frees the loaded shards before the test split streams through
        sel = select(method, config, grid, train, val, text, backbone=backbone)
        t_test = time.perf_counter()
        pred = torch.cat([sel.model.predict(acts) for acts in
                          encode_activations(backbone, test_items, k, batch_size=batch_size)]) \
            if test_items else torch.zeros(0, dtype=torch.long)
        metrics = evaluate_predictions(pred, y_test, dataset.classnames)
        rec = {"dataset": dataset.name, "method": method, "layer": k, "num_blocks": n_blocks, "shots": shots,
               "seed": seed, "split": "test", "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
               "per_class_accuracy": metrics["per_class_accuracy"], "n_test": metrics["n"],
               "n_train": len(train_items), "n_val": len(val_items), "val_accuracy": sel.val_accuracy,
               "chosen": sel.chosen, "candidates": sel.candidates, "config": sel.config.to_dict(), "grid": grid,
               "n_views": n_views, "templates": templates, "backbone": backbone.id,
               "trainable_parameters": sel.model.num_trainable_parameters(), "train_seconds": sel.seconds,
               "predict_seconds": time.perf_counter() - t_test, "total_seconds": time.perf_counter() - t0,
               "versions": package_versions()}
        log.info("%s layer %d/%d: test accuracy %.4f (val %.4f, %s)", dataset.name, k, n_blocks,
                 rec["accuracy"], rec["val_accuracy"], rec["chosen"])
        if output is not None:
            path = Path(output) / dataset.name / method / f"shots{shots}-seed{seed}-layer{k}.json"
            write_json(path, rec)
            rec["result_file"] = str(path)
        rows.append(rec)
    return rows
