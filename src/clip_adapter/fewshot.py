"""Few-shot subsets of a split: seeded, deterministic on any machine, nested in K.

For a given seed, each class's images are ordered by a hash of (seed, path) and the first K are taken, so the
K-shot set is a prefix of the 16-shot set: features cached for 16 shots serve every smaller K.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .datasets.types import Item

__all__ = ["sample_k_shot", "fewshot_split", "read_index_file", "val_shots"]


def _key(seed: int, path: str) -> str:
    # Hash the file name relative to nothing machine-specific (basename + parent) so that the same dataset in
    # another directory samples the same files.
    p = Path(path)
    return hashlib.sha256(f"{seed}|{p.parent.name}/{p.name}".encode()).hexdigest()


def sample_k_shot(items: Sequence[Item], k: int, seed: int, *, repeat: bool = False,
                  classnames: Sequence[str] | None = None) -> list[Item]:
    """K items per class, chosen by ``seed``; returned grouped by class in label order.

    Args:
        items: the split to sample from (normally ``train``).
        k: shots per class (>= 1).
        seed: selection seed; the same seed gives the same files on any machine.
        repeat: allow sampling with repetition when a class has fewer than ``k`` images (Tip-Adapter does);
            otherwise that is an error naming the class.
        classnames: used to name a short class in the error message.
    """
    if k < 1:
        raise ValueError(f"The number of shots must be >= 1; got {k}.")
    by_class: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        by_class[it.label].append(it)
    out: list[Item] = []
    for label in sorted(by_class):
        pool = sorted(by_class[label], key=lambda it: _key(seed, it.path))
        if len(pool) < k:
            if not repeat:
                name = classnames[label] if classnames else str(label)
                raise ValueError(f"Class {name!r} (label {label}) has {len(pool)} training images; {k} shots asked. "
                                 f"Use fewer shots or allow repetition (--repeat-shots).")
            rng = random.Random(f"{seed}-{label}")
            pool = pool + [rng.choice(pool) for _ in range(k - len(pool))]
        out.extend(pool[:k])
    return out


def val_shots(k: int) -> int:
    """CoOp's protocol: validation is subsampled to min(K, 4) images per class."""
    return min(k, 4)


def fewshot_split(train: Sequence[Item], val: Sequence[Item], k: int, seed: int, *, repeat: bool = False,
                  classnames: Sequence[str] | None = None) -> tuple[list[Item], list[Item]]:
    """(K-shot train, min(K, 4)-shot val), both seeded by ``seed`` (val with repetition allowed)."""
    return (sample_k_shot(train, k, seed, repeat=repeat, classnames=classnames),
            sample_k_shot(val, val_shots(k), seed, repeat=True, classnames=classnames))


def read_index_file(path: str | Path, dataset_items: dict[str, Sequence[Item]] | None = None,
                    label_map: dict[int, int] | None = None) -> dict[str, list[Item]]:
    """Read a CoOp/cross_modal_adaptation few-shot index file (``shot_K-seed_S.json``).

    The file lists ``{"train": {"data": [{"impath", "label", "classname"}]}, "val": {...}}``. Its ``impath``
    values point to the original machine; they are matched to ``dataset_items`` (the dataset's own splits) by
    the last two path components. Entries whose image is absent are dropped; ``label_map`` renumbers labels
    (e.g. CoOp label -> flowers89 label) and drops labels it does not contain.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Few-shot index file {path} could not be read as JSON ({e}).") from None
    lookup: dict[str, Item] = {}
    if dataset_items is not None:
        for its in dataset_items.values():
            for it in its:
                p = Path(it.path)
                lookup[f"{p.parent.name}/{p.name}"] = it
    out: dict[str, list[Item]] = {}
    for split in ("train", "val"):
        if split not in raw:
            continue
        entries = raw[split]["data"] if isinstance(raw[split], dict) else raw[split]
        res: list[Item] = []
        for e in entries:
            label = int(e["label"])
            if label_map is not None:
                if label not in label_map:
                    continue
                label = label_map[label]
            p = Path(e["impath"])
            key = f"{p.parent.name}/{p.name}"
            if dataset_items is not None:
                if key not in lookup:
                    continue
                res.append(Item(lookup[key].path, label))
            else:
                res.append(Item(str(p), label))
        out[split] = res
    if "train" not in out:
        raise ValueError(f"Few-shot index file {path} has no 'train' entry.")
    return out
