"""Hugging Face ``datasets`` as a dataset source: ``--data hf:PATH`` (a folder written by ``save_to_disk``) or
``--data hf:NAME`` (a hub dataset, downloaded or from the HF cache).

The dataset needs an image column (``datasets.Image``) and a label column (``datasets.ClassLabel``: its names are the
class names). Splits are mapped to train/val/test: ``train``; ``validation``, ``val`` or ``valid``; ``test``. A dataset
without a validation split gets one carved from train (seeded, per class, 20% of each class's train images, at
least one when a class has two); a dataset with only a train split gets the seeded 50/20/30 split of class folders.

Every method here reads images from files (the feature cache is keyed by their paths), so the images are exported
once as PNG files into ``<cache>/datasets/hf/<name>-<fingerprint>/<split>/<index>.png`` (``$CLIP_ADAPTER_CACHE``,
written whole to a temporary folder and renamed); the fingerprint is the datasets library's content fingerprint of
the splits, so another version of the data never reuses an export.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..io import default_cache_dir
from .catalog import templates_for
from .checks import DataError
from .images import to_rgb
from .types import SPLITS, Dataset, Item, anchor, readable

__all__ = ["read_hf", "HF_PREFIX", "VAL_FRACTION", "SPLIT_NAMES"]

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
VAL_FRACTION = 0.2    # of each class's train images, when the dataset has no validation split
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


def _open(source: str) -> tuple[Any, str, str]:
    """(DatasetDict, display name, source string) of a save_to_disk folder or a hub name."""
    try:
        import datasets
    except ImportError:
        raise DataError("--data hf:... needs the datasets package: pip install 'clip-adapter[hf]'.") from None
    folder = Path(source).expanduser()
    try:
        if folder.is_dir():
            ds = datasets.load_from_disk(str(folder))
            name, where = folder.name, str(folder.resolve())
        else:
            ds = datasets.load_dataset(source)
            name, where = source.rstrip("/").split("/")[-1], f"{HF_PREFIX}{source}"
    except Exception as e:  # noqa: BLE001 - not a dataset, offline, unknown name: one line with the reason
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(f"Hugging Face dataset {source!r} could not be read ({type(e).__name__}: {reason}); expected "
                        f"a folder written by save_to_disk or a hub dataset name.") from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    return ds, name, where


def _columns(ds: Any, where: str) -> tuple[str, str, list[str]]:
    """(image column, label column, class names) from the first split's features."""
    import datasets
    features = next(iter(ds.values())).features
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if not images or not labels:
        kinds = ", ".join(f"{k}: {type(f).__name__}" for k, f in features.items())
        raise DataError(f"Hugging Face dataset {where} needs an Image column and a ClassLabel column; it has {kinds}.")
    return images[0], labels[0], [readable(n) for n in features[labels[0]].names]


def _pick_splits(ds: Any, where: str) -> dict[str, str | None]:
    found = {s: next((n for n in names if n in ds), None) for s, names in SPLIT_NAMES.items()}
    if found["train"] is None:
        raise DataError(f"Hugging Face dataset {where} has no 'train' split (it has {', '.join(ds)}).")
    return found


def _fingerprint(ds: Any, picked: dict[str, str | None]) -> str:
    parts = [f"{s}={getattr(ds[n], '_fingerprint', '')}" for s, n in picked.items() if n is not None]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _export(ds: Any, picked: dict[str, str | None], image_col: str, label_col: str, folder: Path) -> None:
    """Every image of the picked splits as ``<folder>/<split name>/<index>.png`` and ``labels.txt``, written whole."""
    if (folder / ".complete").is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for name in {n for n in picked.values() if n is not None}:
            (tmp / name).mkdir()
            labels = []
            for i, row in enumerate(ds[name]):
                img = row[image_col]
                img = to_rgb(img) if img.mode not in ("RGB", "L") else img   # 16-bit, alpha...: as shown
                img.save(tmp / name / f"{i:07d}.png")
                labels.append(str(int(row[label_col])))
            (tmp / name / "labels.txt").write_text("\n".join(labels) + "\n")
        (tmp / ".complete").write_text("")
        if folder.exists():  # an unfinished export from a killed process: replace it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _items(folder: Path, name: str) -> list[Item]:
    labels = (folder / name / "labels.txt").read_text().split()
    return [Item(str(folder / name / f"{i:07d}.png"), int(y)) for i, y in enumerate(labels)]


def _carve_val(train: list[Item], seed: int) -> tuple[list[Item], list[Item]]:
    """A seeded per-class validation set out of train (VAL_FRACTION of each class, one when it has two)."""
    by_class: dict[int, list[Item]] = {}
    for it in train:
        by_class.setdefault(it.label, []).append(it)
    keep, val = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda it: it.path)
        random.Random(f"{seed}-{label}").shuffle(items)
        n_val = max(1 if len(items) >= 2 else 0, round(len(items) * VAL_FRACTION))
        val += items[:n_val]
        keep += items[n_val:]
    return keep, val


def read_hf(source: str, split_seed: int = 0) -> Dataset:
    """A Hugging Face dataset (``save_to_disk`` folder or hub name, without the ``hf:`` prefix) as a
    :class:`Dataset` with train/val/test splits (see the module docstring)."""
    from .readers import _seeded_split  # the class-folder split, for datasets that only have train
    ds, name, where = _open(source)
    image_col, label_col, classnames = _columns(ds, where)
    picked = _pick_splits(ds, where)
    folder = default_cache_dir() / "datasets" / "hf" / f"{name}-{_fingerprint(ds, picked)}"
    _export(ds, picked, image_col, label_col, folder)
    splits = {s: _items(folder, n) if n is not None else [] for s, n in picked.items()}
    if picked["test"] is None:
        per_class: dict[int, list[str]] = {}
        for it in splits["train"] + splits["val"]:
            per_class.setdefault(it.label, []).append(it.path)
        splits = _seeded_split(per_class, split_seed)
    elif picked["val"] is None:
        splits["train"], splits["val"] = _carve_val(splits["train"], split_seed)
    bad = next((it for s in SPLITS for it in splits[s] if not 0 <= it.label < len(classnames)), None)
    if bad is not None:
        raise DataError(f"Hugging Face dataset {where}: label {bad.label} is outside its ClassLabel's "
                        f"{len(classnames)} names.")
    return Dataset(name, classnames, anchor(splits, folder), templates_for(name), source=where)
