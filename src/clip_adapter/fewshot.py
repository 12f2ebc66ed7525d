"""Few-shot subsets of a split: seeded, deterministic on any machine, nested in K.

For a given seed, each class's images are ordered by a hash of (seed, path) and the first K are taken, so the
K-shot set is a prefix of the 16-shot set: features cached for 16 shots serve every smaller K.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .datasets.readers import loads_strict
from .datasets.types import Item

__all__ = ["sample_k_shot", "sample_val", "check_shots", "fewshot_split", "read_index_file", "val_shots"]

log = logging.getLogger(__name__)


def _key(seed: int, path: str) -> str:
    # Hash the file name relative to nothing machine-specific (basename + parent) so that the same dataset in
    # another directory samples the same files.
    p = Path(path)
    return hashlib.sha256(f"{seed}|{p.parent.name}/{p.name}".encode()).hexdigest()


def _names(labels: Sequence[int], classnames: Sequence[str] | None, limit: int = 5) -> str:
    """``'a', 'b' and 3 more``: class names for a one-line message (a few, then how many more)."""
    shown = [repr(classnames[y]) if classnames else str(y) for y in labels[:limit]]
    more = f" and {len(labels) - limit} more" if len(labels) > limit else ""
    return ", ".join(shown) + more


def check_shots(counts: dict[int, int], k: int, classnames: Sequence[str], *, repeat: bool = False,
                where: str = "The training split") -> None:
    """Every class of ``classnames`` can give ``k`` training images (one is enough with ``repeat``), and there are
    at least two classes; else a one-line error naming ``where`` and the classes.

    Args:
        counts: label -> number of training images (labels absent from it have none).
        k: shots asked.
        classnames: the dataset's classes (``len(classnames)`` classes, labels ``0..C-1``).
        repeat: sampling with repetition is allowed (then a class needs one image, not ``k``).
        where: names the dataset / split in the message, e.g. ``"Dataset dtd (.../split_zhou_DTD.json)"``.
    """
    if sum(counts.values()) == 0:
        raise ValueError(f"{where}: the 'train' split is empty; {k} training images per class are needed.")
    if len(classnames) < 2:
        raise ValueError(f"{where} has one class ({_names([0], classnames)}); a few-shot classifier needs at "
                         f"least 2 classes.")
    missing = [y for y in range(len(classnames)) if counts.get(y, 0) == 0]
    if missing:
        verb = "has" if len(missing) == 1 else "have"
        raise ValueError(f"{where}: {len(missing)} of {len(classnames)} classes {verb} no training images "
                         f"({_names(missing, classnames)}; e.g. a class only in val/ or test/); every class needs "
                         f"{'one (--repeat-shots)' if repeat else k} for {k} shots. Add training images or remove "
                         f"the class.")
    short = [] if repeat else [y for y in range(len(classnames)) if counts[y] < k]
    if len(short) == 1:
        y = short[0]
        raise ValueError(f"{where}: class {classnames[y]!r} (label {y}) has {counts[y]} training images; {k} shots "
                         f"asked. Use fewer shots or allow repetition (--repeat-shots).")
    if short:
        few = ", ".join(f"{classnames[y]!r} ({counts[y]})" for y in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise ValueError(f"{where}: {len(short)} classes have fewer than {k} training images: {few}{more}; {k} "
                         f"shots asked. Use fewer shots or allow repetition (--repeat-shots).")


def sample_k_shot(items: Sequence[Item], k: int, seed: int, *, repeat: bool = False,
                  classnames: Sequence[str] | None = None, where: str = "The training split") -> list[Item]:
    """K items per class, chosen by ``seed``; returned grouped by class in label order.

    Args:
        items: the split to sample from (normally ``train``).
        k: shots per class (>= 1).
        seed: selection seed; the same seed gives the same files on any machine.
        repeat: allow sampling with repetition when a class has fewer than ``k`` images (Tip-Adapter does);
            otherwise that is an error naming the class.
        classnames: the dataset's classes: with them, every class must have images (:func:`check_shots`), so a
            class with none is an error naming it instead of a class silently left out; also names a short class.
        where: names the dataset and split in those errors.
    """
    if k < 1:
        raise ValueError(f"The number of shots must be >= 1; got {k}.")
    by_class: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        by_class[it.label].append(it)
    if classnames is not None:
        check_shots({y: len(v) for y, v in by_class.items()}, k, classnames, repeat=repeat, where=where)
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
    log.debug("sampled %d images: %d per class, %d classes, seed %d%s", len(out), k, len(by_class), seed,
              " (with repetition)" if repeat else "")
    return out


def sample_val(items: Sequence[Item], k: int, seed: int, classnames: Sequence[str] | None = None,
               where: str = "The validation split") -> list[Item]:
    """The validation subset: min(K, 4) per class, with repetition; classes without validation images are named
    in a warning (selection then sees only the others)."""
    if classnames is not None and items:
        present = {it.label for it in items}
        absent = [y for y in range(len(classnames)) if y not in present]
        if absent:
            log.warning("%s: %d of %d classes have no validation images (%s); hyper-parameters are chosen on the "
                        "others.", where, len(absent), len(classnames), _names(absent, classnames))
    return sample_k_shot(items, val_shots(k), seed, repeat=True) if items else []


def val_shots(k: int) -> int:
    """CoOp's protocol: validation is subsampled to min(K, 4) images per class."""
    return min(k, 4)


def fewshot_split(train: Sequence[Item], val: Sequence[Item], k: int, seed: int, *, repeat: bool = False,
                  classnames: Sequence[str] | None = None) -> tuple[list[Item], list[Item]]:
    """(K-shot train, min(K, 4)-shot val), both seeded by ``seed`` (val with repetition allowed)."""
    return (sample_k_shot(train, k, seed, repeat=repeat, classnames=classnames),
            sample_val(val, k, seed, classnames))


def _index_entries(raw: Any, split: str, path: Path) -> list[tuple[str, int, str | None]]:
    """(impath, label, classname) of one split of an index file, checked."""
    block = raw[split]
    entries = block.get("data") if isinstance(block, dict) else block
    if not isinstance(entries, list):
        raise ValueError(f"Few-shot index file {path}: {split!r} must be a list of entries or {{'data': [...]}}; got "
                         f"{type(entries).__name__}.")
    out = []
    for i, e in enumerate(entries):
        where = f"Few-shot index file {path}: {split}[{i}]"
        if not isinstance(e, dict) or "impath" not in e or "label" not in e:
            keys = sorted(e) if isinstance(e, dict) else type(e).__name__
            raise ValueError(f"{where} must be an object with 'impath' and 'label' (and 'classname'); got {keys}.")
        if not isinstance(e["impath"], str) or not e["impath"]:
            raise ValueError(f"{where}: 'impath' must be a non-empty string. Got {e['impath']!r} instead.")
        label = e["label"]
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise ValueError(f"{where}: 'label' must be an int >= 0. Got {label!r} instead.")
        name = e.get("classname")
        out.append((e["impath"], label, name if isinstance(name, str) else None))
    return out


def _match(entry: tuple[str, int, str | None], split: str, lookup: dict[str, tuple[str, Item]],
           label_map: dict[int, int] | None, classnames: Sequence[str] | None, where: str) -> Item | None:
    """The dataset's item for an index entry; None for an image the dataset does not have."""
    impath, label, name = entry
    p = Path(impath)
    hit = lookup.get(f"{p.parent.name}/{p.name}")
    if hit is None:
        return None
    found_split, item = hit
    if found_split != split:
        raise ValueError(f"{where}: {impath} is in the dataset's {found_split!r} split, not {split!r}; a few-shot "
                         f"{split} set must come from the {split} split (no leakage).")
    same_name = name is not None and classnames is not None and \
        name.replace("_", " ").strip().lower() == classnames[item.label].lower()
    if (label_map.get(label) if label_map is not None else label) != item.label and not same_name:
        raise ValueError(f"{where}: {impath} has label {label} ({name or 'no class name'}) in the index but "
                         f"{item.label} ({classnames[item.label] if classnames else '?'}) in the dataset.")
    return item


def read_index_file(path: str | Path, dataset_items: dict[str, Sequence[Item]] | None = None,
                    label_map: dict[int, int] | None = None, classnames: Sequence[str] | None = None,
                    shots: int | None = None) -> dict[str, list[Item]]:
    """Read a CoOp/cross_modal_adaptation few-shot index file (``shot_K-seed_S.json``).

    The file lists ``{"train": {"data": [{"impath", "label", "classname"}]}, "val": {...}}``. Its ``impath`` values
    point to the original machine; they are matched to ``dataset_items`` (the dataset's own splits) by their last
    two path components, and the dataset's item (its path and label) is returned. A ``train`` entry must be a train
    image of the dataset (a val entry a val image); its label must be the dataset's (after ``label_map``, e.g. CoOp
    label -> flowers89 label) unless its class name is the dataset's (``classnames``). Entries for images the dataset
    does not have (a subset such as DTD-10) are dropped, and their number is logged. Without ``dataset_items`` the
    entries are returned as they are.

    With ``classnames`` (and ``dataset_items``), what is left must be a few-shot set of the whole dataset: every class
    in ``train``, no image twice, and, with ``shots``, exactly ``shots`` train images per class (so a record never
    says 16 shots of a 3-shot file); classes without ``val`` entries are named in a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Few-shot index file {path} not found.")
    try:
        raw = loads_strict(path.read_text(encoding="utf-8"), f"Few-shot index file {path}")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"Few-shot index file {path} could not be read as JSON ({e}).") from None
    except ValueError as e:
        raise ValueError(str(e).replace("is not valid JSON", "could not be read as JSON")) from None
    if not isinstance(raw, dict) or "train" not in raw:
        raise ValueError(f"Few-shot index file {path} must be a JSON object with a 'train' entry (and 'val').")
    extra = sorted(set(raw) - {"train", "val"})
    if extra:
        raise ValueError(f"Few-shot index file {path} has the unknown key {extra[0]!r}; expected 'train' and 'val' "
                         f"(a few-shot set never lists test images).")
    lookup = {f"{Path(it.path).parent.name}/{Path(it.path).name}": (s, it)
              for s, its in (dataset_items or {}).items() for it in its}
    out: dict[str, list[Item]] = {}
    for split in ("train", "val"):
        if split not in raw:
            continue
        entries = _index_entries(raw, split, path)
        if dataset_items is None:
            out[split] = [Item(impath, label) for impath, label, _ in entries]
            continue
        matched = [_match(e, split, lookup, label_map, classnames, f"Few-shot index file {path}: {split}[{i}]")
                   for i, e in enumerate(entries)]
        out[split] = [it for it in matched if it is not None]
        if len(out[split]) < len(entries):
            log.info("%s: %d of %d %s entries are images this dataset does not have; dropped.", path,
                     len(entries) - len(out[split]), len(entries), split)
        if entries and not out[split]:
            raise ValueError(f"Few-shot index file {path}: none of its {len(entries)} {split} entries is an image of "
                             f"this dataset (matched on <class folder>/<file name>).")
    if dataset_items is not None and classnames is not None:
        _check_index_coverage(out, path, classnames, shots)
    return out


def _check_index_coverage(out: dict[str, list[Item]], path: Path, classnames: Sequence[str],
                          shots: int | None) -> None:
    """The matched index entries as a few-shot set of the whole dataset (see :func:`read_index_file`)."""
    where = f"Few-shot index file {path}"
    for split, items in out.items():
        seen: set[str] = set()
        for it in items:
            if it.path in seen:
                raise ValueError(f"{where}: {it.path} is listed twice in {split!r}; each image once.")
            seen.add(it.path)
    counts: dict[int, int] = defaultdict(int)
    for it in out.get("train", []):
        counts[it.label] += 1
    missing = [y for y in range(len(classnames)) if not counts.get(y)]
    if missing:
        raise ValueError(f"{where} covers {len(classnames) - len(missing)} of the dataset's {len(classnames)} "
                         f"classes; no 'train' entries for {_names(missing, classnames)}. Use the index file made "
                         f"for this dataset.")
    per_class = sorted(set(counts.values()))
    if shots is not None and per_class != [shots]:
        y = next(y for y in sorted(counts) if counts[y] != shots)
        got = f"{per_class[0]} train image{'s' if per_class[0] != 1 else ''} per class" if len(per_class) == 1 else \
            f"{per_class[0]} to {per_class[-1]} train images per class ({classnames[y]!r}: {counts[y]})"
        raise ValueError(f"{where} has {got}; {shots} shots were asked. Pass --shots {per_class[0]} (the file's own "
                         f"count) or the shot_{shots} index file." if len(per_class) == 1 else
                         f"{where} has {got}; {shots} shots were asked (every class needs exactly {shots}).")
    if "val" in out:
        present = {it.label for it in out["val"]}
        absent = [y for y in range(len(classnames)) if y not in present]
        if absent:
            log.warning("%s: %d of %d classes have no 'val' entries (%s); hyper-parameters are chosen on the others.",
                        where, len(absent), len(classnames), _names(absent, classnames))
