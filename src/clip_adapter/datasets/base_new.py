"""The base-to-new class split of CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language Models",
CVPR 2022), as its code does it (``OxfordPets.subsample_classes`` in KaiyangZhou/CoOp ``datasets/oxford_pets.py``):

    labels = sorted(set of the labels of the (few-shot) train set);  m = ceil(len(labels) / 2)
    base = labels[:m];  new = labels[m:];  each half relabelled 0..len-1 in that order

In CoCoOp's dataset classes the few-shot train (K per class) and val (min(K, 4) per class) sets are sampled from
all classes first, then every split is cut to the base (or new) half; :func:`subsample_items` is that cut. Our
sampler orders each class's images by a hash of (seed, path), independently of the other classes, so sampling
before or after the cut gives the same base images.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .types import Dataset, Item

__all__ = ["base_new_labels", "subsample_items", "class_subset", "HALVES"]

HALVES = ("base", "new")


def base_new_labels(labels: Iterable[int]) -> tuple[list[int], list[int]]:
    """(base labels, new labels): the sorted distinct labels cut at ``ceil(n / 2)`` (base gets the odd one)."""
    ordered = sorted(set(int(y) for y in labels))
    m = math.ceil(len(ordered) / 2)
    return ordered[:m], ordered[m:]


def _selected(labels: Iterable[int], which: str) -> list[int]:
    if which not in HALVES:
        raise ValueError(f"Class half {which!r}: expected 'base' or 'new'.")
    base, new = base_new_labels(labels)
    return base if which == "base" else new


def subsample_items(items: Sequence[Item], selected: Sequence[int]) -> list[Item]:
    """The items of the ``selected`` labels, relabelled ``selected[i] -> i`` (order kept)."""
    relabel = {y: i for i, y in enumerate(selected)}
    return [Item(it.path, relabel[it.label], it.rel) for it in items if it.label in relabel]


def class_subset(dataset: Dataset, which: str, labels: Iterable[int] | None = None) -> Dataset:
    """``dataset`` cut to its base or new classes (every split, relabelled, class names in the new label order).

    Args:
        which: ``"base"`` or ``"new"``.
        labels: the labels the split is computed from (CoCoOp: those of the few-shot train set); default: every
            label of the dataset.
    """
    selected = _selected(range(dataset.num_classes) if labels is None else labels, which)
    splits = {s: subsample_items(items, selected) for s, items in dataset.splits.items()}
    return Dataset(dataset.name, [dataset.classnames[y] for y in selected], splits, list(dataset.templates),
                   source=dataset.source)
