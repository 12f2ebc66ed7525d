"""Class identities across datasets: ImageNet WordNet ids (wnids), the 200-class subsets of ImageNet-A and -R, and
the mapping of one dataset's classes onto a model's classes.

The lists are data (``class_lists/*.txt``, one wnid a line), copied from the papers' released code:

* ``imagenet.txt``: the 1000 ILSVRC-2012 wnids in the standard (sorted) class order, which is also the order of
  CLIP's ImageNet class names (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``) and of CoOp's classnames.txt;
  ``all_wnids`` in hendrycks/imagenet-r ``eval.py``.
* ``imagenet_a.txt``: ImageNet-A's 200 classes, ``imagenet_a_wnids`` in hendrycks/natural-adv-examples
  ``eval_many_models.py``.
* ``imagenet_r.txt``: ImageNet-R's 200 classes, ``imagenet_r_wnids`` in hendrycks/imagenet-r ``eval.py``.

A dataset's class ids are read from where its images sit (:func:`class_ids`): every image of a class in one folder
named by a wnid (``images/n01440764/...``, ImageNet's ``train/<wnid>/``, ImageNet-Sketch/-A/-R), or ImageNet-V2's
folders ``0..999`` (indices into ``imagenet.txt``). :func:`map_classes` maps a dataset onto a model's classes by
those ids (else by name) and names every class it cannot map.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from .types import Dataset

__all__ = ["imagenet_wnids", "subset_wnids", "imagenet_classnames", "class_ids", "map_classes", "is_wnid",
           "CLASS_LISTS"]

CLASS_LISTS = Path(__file__).with_name("class_lists")
_WNID = re.compile(r"^n\d{8}$")


def is_wnid(text: str) -> bool:
    """``n`` followed by 8 digits (a WordNet noun synset id, as ImageNet names its class folders)."""
    return bool(_WNID.match(text))


@lru_cache(maxsize=None)
def _read_list(name: str) -> tuple[str, ...]:
    path = CLASS_LISTS / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in CLASS_LISTS.glob("*.txt"))
        raise ValueError(f"No class list {name!r}; expected one of: {', '.join(known)}.")
    return tuple(ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet wnids in class order (label ``i`` is ``imagenet_wnids()[i]``)."""
    return list(_read_list("imagenet"))


def subset_wnids(name: str) -> list[str]:
    """The wnids of a class list shipped with the package (``imagenet_a``, ``imagenet_r``), sorted."""
    return list(_read_list(name))


def imagenet_classnames() -> dict[str, str]:
    """wnid -> CLIP's ImageNet class name (open_clip's list, in the order of :func:`imagenet_wnids`)."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError:  # pragma: no cover - open_clip is a dependency
        raise ValueError("ImageNet class names need open_clip (pip install open_clip_torch).") from None
    return dict(zip(imagenet_wnids(), IMAGENET_CLASSNAMES))


def class_ids(dataset: Dataset) -> list[str] | None:
    """The wnid of each class of ``dataset`` (in label order), or None when its images do not say.

    A class's id is the name of the one folder all its images sit in, when that name is a wnid; ImageNet-V2's
    numbered folders (``0``..``999``) are indices into :func:`imagenet_wnids`. Class names that are wnids count too.
    """
    if all(is_wnid(c) for c in dataset.classnames):
        return list(dataset.classnames)
    folders: dict[int, set[str]] = {}
    for items in dataset.splits.values():
        for it in items:
            folders.setdefault(it.label, set()).add(Path(it.path).parent.name)
    if len(folders) != dataset.num_classes or any(len(f) != 1 for f in folders.values()):
        return None
    names = [next(iter(folders[i])) for i in range(dataset.num_classes)]
    if all(is_wnid(n) for n in names):
        return names
    if all(n.isdigit() for n in names) and dataset.num_classes <= 1000:
        wnids = imagenet_wnids()
        if all(int(n) < len(wnids) for n in names):
            return [wnids[int(n)] for n in names]
    return None


def map_classes(data_names: Sequence[str], data_ids: Sequence[str] | None, model_names: Sequence[str],
                model_ids: Sequence[str] | None, where: str) -> tuple[list[int], str]:
    """Model class index of each dataset class, and how they were matched (``"wnid"`` or ``"name"``).

    Matched by wnid when both sides have ids, else by exact class name. Raises a one-line ValueError naming the
    dataset classes that have no model class (and how many).
    """
    if data_ids is not None and model_ids is not None:
        index, keys, how = {w: i for i, w in enumerate(model_ids)}, list(data_ids), "wnid"
    else:
        index, keys, how = {c: i for i, c in enumerate(model_names)}, list(data_names), "name"
    missing = [f"{n} ({k})" if k != n else n for n, k in zip(data_names, keys) if k not in index]
    if missing:
        raise ValueError(f"{where}: {len(missing)} of {len(keys)} classes have no class of the model (matched by "
                         f"{how}): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.")
    return [index[k] for k in keys], how
