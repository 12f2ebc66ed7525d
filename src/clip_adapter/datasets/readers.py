"""One reader per on-disk form of a dataset -> :class:`Dataset`; no class per dataset.

* **CoOp layout**: a folder holding ``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[relpath, label,
  classname], ...]}``) and the image folder the relpaths are relative to (found automatically).
* **Class folders** (ImageFolder): ``<dir>/<class>/*.jpg``, or ``<dir>/{train,val,test}/<class>/*.jpg``. Without
  split folders, a seeded per-class split (50% train / 20% val / 30% test, CoOp's default) is made.
* **CSV**: ``path,label[,split]`` with a header; ``path`` relative to the CSV's folder; ``label`` an integer or a
  class name (not a mix). Without a ``split`` column, the same seeded split is made.

Optional files next to the data: ``classnames.txt`` (one name per line, line i = label i) and
``templates.txt`` (one prompt template per line, with ``{}`` for the class name). Every reader applies the checks of
:mod:`~clip_adapter.datasets.checks`: paths stay in the dataset folder unless ``allow_outside_paths``, labels are
``0..C-1`` with one name each, and no image is listed twice (within or across splits).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
from pathlib import Path

from ..config import closest
from .catalog import templates_for
from .checks import (DataError, check_inside, check_label, check_label_names, check_no_gaps, check_templates,
                     check_unique_images, join_inside)
from .types import IMAGE_EXTENSIONS, SPLITS, Dataset, Item, anchor, readable

__all__ = ["read_coop", "read_image_folder", "read_csv", "images_in", "loads_strict"]

log = logging.getLogger(__name__)

DEFAULT_SPLIT = (0.5, 0.2)  # train, val fractions; test gets the rest (CoOp's read_and_split_data)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise DataError(f"the key {k!r} appears twice in one object (JSON would keep only the last one)")
        out[k] = v
    return out


def loads_strict(text: str, what: str) -> object:
    """JSON whose objects have unique keys (``json.loads`` silently keeps the last of two equal keys); one-line
    error naming ``what`` (e.g. ``"Split file x.json"``)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} is not valid JSON ({e}).") from None
    except DataError as e:
        raise DataError(f"{what}: {e}; give each key once.") from None


def _extra_files(folder: Path, classnames: list[str], name: str) -> tuple[list[str], list[str]]:
    """Apply optional classnames.txt / templates.txt found in ``folder``."""
    cn_file = folder / "classnames.txt"
    if cn_file.is_file():
        names = [ln.strip() for ln in _read_text(cn_file).splitlines() if ln.strip()]
        if len(names) != len(classnames):
            raise DataError(f"{cn_file} has {len(names)} names; the data has {len(classnames)} classes.")
        dup = next((c for c in names if names.count(c) > 1), None)
        if dup is not None:
            raise DataError(f"{cn_file}: class name {dup!r} is listed twice; each class needs its own name.")
        classnames = names
    tpl_file = folder / "templates.txt"
    if tpl_file.is_file():
        templates = check_templates([ln.strip() for ln in _read_text(tpl_file).splitlines() if ln.strip()],
                                    str(tpl_file))
    else:
        templates = templates_for(name)
    return classnames, templates


def _find_image_dir(folder: Path, sample_relpaths: list[str]) -> Path:
    # Majority vote over a sample, so a few missing files (reported by `datasets verify`) do not hide the folder.
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    best = max(candidates, key=lambda c: sum((c / rel).exists() for rel in sample_relpaths))
    if sum((best / rel).exists() for rel in sample_relpaths) * 2 > len(sample_relpaths):
        return best
    raise FileNotFoundError(f"Images of the split file in {folder} not found: none of {folder} or its subfolders "
                            f"contains {sample_relpaths[0]!r}; expected the CoOp layout (images next to the split "
                            f"file, e.g. {folder}/images/...).")


# -- CoOp layout ---------------------------------------------------------------------------------------------
def _split_file(folder: Path, split_file: str | Path | None) -> Path:
    if split_file is None:
        found = sorted(folder.glob("split_zhou_*.json"))
        if not found:
            raise FileNotFoundError(f"No split_zhou_*.json in {folder}; expected the CoOp layout.")
        if len(found) > 1:
            raise ValueError(f"Several split files in {folder}: {', '.join(p.name for p in found)}; pass one.")
        split_file = found[0]
    split_file = Path(split_file)
    if not split_file.is_absolute() and not split_file.exists():
        split_file = folder / split_file
    if not split_file.is_file():
        raise FileNotFoundError(f"Split file {split_file} not found; expected the CoOp layout.")
    return split_file


def read_split_file(split_file: Path) -> dict[str, list[tuple[str, int, str]]]:
    """The entries of a CoOp split file, checked: exactly the keys train/val/test, each a list of
    ``[relpath, label, classname]`` with a string path, an int label >= 0 and a string class name."""
    raw = loads_strict(_read_text(split_file), f"Split file {split_file}")
    if not isinstance(raw, dict):
        raise DataError(f"Split file {split_file} must hold a JSON object with keys train, val, test; got a "
                        f"{type(raw).__name__}.")
    extra = sorted(set(raw) - set(SPLITS))
    if extra:
        raise DataError(f"Split file {split_file} has the unknown split key {extra[0]!r}; expected exactly train, val, "
                        f"test.")
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(f"Split file {split_file} lacks the {missing[0]!r} split; expected keys train, val, test.")
    out: dict[str, list[tuple[str, int, str]]] = {}
    for s in SPLITS:
        if not isinstance(raw[s], list):
            raise DataError(f"Split file {split_file}: split {s!r} must be a list of [relpath, label, classname] "
                            f"entries; got a {type(raw[s]).__name__}.")
        out[s] = []
        for i, entry in enumerate(raw[s]):
            where = f"Split file {split_file}: {s}[{i}]"
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
                raise DataError(f"{where} {entry!r} is not [relpath, label, classname].")
            rel, label, name = entry
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{where}: the class name must be a non-empty string. Got {name!r} instead.")
            out[s].append((rel, check_label(label, where), name))
    return out


def read_coop(folder: str | Path, split_file: str | Path | None = None, image_dir: str | Path | None = None,
              name: str | None = None, allow_outside_paths: bool = False) -> Dataset:
    """Read a CoOp-layout dataset: ``split_zhou_<Name>.json`` + the image folder its relpaths refer to."""
    folder = Path(folder)
    split_file = _split_file(folder, split_file)
    raw = read_split_file(split_file)
    where = f"Split file {split_file}"
    names = check_label_names(((y, readable(c), f"{s}[{i}]") for s in SPLITS for i, (_, y, c) in enumerate(raw[s])),
                              where)
    classnames = [names[i] for i in range(check_no_gaps(names, where))]
    sample = [e[0] for s in SPLITS for e in raw[s][:: max(1, len(raw[s]) // 7)][:7] if isinstance(e[0], str)]
    img_dir = Path(image_dir) if image_dir is not None else _find_image_dir(folder, sample or ["?"])
    splits = {s: [Item(join_inside(folder, img_dir, rel, f"{where}: {s}[{i}]", allow_outside_paths), y)
                  for i, (rel, y, _) in enumerate(raw[s])] for s in SPLITS}
    check_unique_images(splits, where)
    ds_name = name or split_file.stem.removeprefix("split_zhou_")
    classnames, templates = _extra_files(folder, classnames, ds_name)
    return Dataset(ds_name, classnames, anchor(splits, folder), templates, source=str(split_file))


# -- class folders -------------------------------------------------------------------------------------------
def _seeded_split(per_class: dict[int, list[str]], seed: int) -> dict[str, list[Item]]:
    """Per-class seeded shuffle, then 50/20/30 (at least one image per split when a class has 3+)."""
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for label in sorted(per_class):
        paths = sorted(per_class[label])
        random.Random(f"{seed}-{label}").shuffle(paths)
        n = len(paths)
        n_tr = max(1, round(n * DEFAULT_SPLIT[0]))
        n_va = max(1 if n >= 3 else 0, round(n * DEFAULT_SPLIT[1]))
        parts = {"train": paths[:n_tr], "val": paths[n_tr:n_tr + n_va], "test": paths[n_tr + n_va:]}
        for s in SPLITS:
            out[s].extend(Item(p, label) for p in parts[s])
    return out


def images_in(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive, known extensions only), sorted."""
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _distinct_names(raw: list[str], where: str) -> list[str]:
    """Class names for prompts (``readable``); two folders/labels that read the same (``blue_jay`` and ``blue jay``)
    would be two classes with one name, so that is an error."""
    names = [readable(c) for c in raw]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise DataError(f"{where}: classes {raw[names.index(n)]!r} and {raw[i]!r} both read as {n!r} ('_' is a "
                            f"space in class names); rename one.")
    return names


def _images_warn(folder: Path, skipped: list[str]) -> list[str]:
    """``images_in(folder)``; files with other extensions (not hidden) are added to ``skipped``, to be named in a
    warning rather than dropped silently."""
    out = []
    for p in Path(folder).rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            out.append(str(p))
        elif not p.name.startswith(".") and p.is_file():
            skipped.append(str(p))
    return sorted(out)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_folders(folder: Path, subdirs: list[str]) -> list[str]:
    """The split folders (train/, val/, test/) of a class-folder tree, [] when it has none; an incomplete or mixed
    layout is an error (its split folders would otherwise be read as classes named 'train' and 'test')."""
    present = [s for s in SPLITS if s in subdirs]
    if not present or (len(present) == 1 and len(subdirs) > 1):
        return []
    others = [d for d in subdirs if d not in SPLITS]
    if others:
        raise DataError(f"Dataset folder {folder} mixes split folders ({', '.join(present)}) with other folders "
                        f"({', '.join(others[:5])}); expected {folder}/<split>/<class>/<image> or "
                        f"{folder}/<class>/<image>.")
    if "train" not in present or "test" not in present:
        lacking = "train" if "train" not in present else "test"
        raise DataError(f"Dataset folder {folder} has {'/, '.join(present)}/ but no {lacking}/; expected train/ and "
                        f"test/ (and val/: without it, validation images are taken from train/).")
    return present


def _carve_val(splits: dict[str, list[Item]], seed: int) -> dict[str, list[Item]]:
    """A validation split from train/ (20% of each class, seeded; classes with one image keep it for training)."""
    per_class: dict[int, list[str]] = {}
    for it in splits["train"]:
        per_class.setdefault(it.label, []).append(it.path)
    train: list[Item] = []
    val: list[Item] = []
    for label in sorted(per_class):
        paths = sorted(per_class[label])
        random.Random(f"{seed}-{label}").shuffle(paths)
        n_va = max(1, round(len(paths) * DEFAULT_SPLIT[1])) if len(paths) >= 2 else 0
        val += [Item(p, label) for p in paths[:n_va]]
        train += [Item(p, label) for p in paths[n_va:]]
    return {"train": train, "val": val, "test": splits["test"]}


def read_image_folder(folder: str | Path, split_seed: int = 0, allow_outside_paths: bool = False) -> Dataset:
    """Read ``<dir>/<class>/*`` (seeded split) or ``<dir>/{train,val,test}/<class>/*`` (without val/, validation
    images are taken from train/: 20% of each class, seeded); a symlink pointing out of ``<dir>`` needs
    ``allow_outside_paths``, and no image may be in two splits (hard links included)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Dataset folder {folder} not found.")
    skipped: list[str] = []
    present = _split_folders(folder, _class_dirs(folder))
    if present:
        class_dirs = sorted({c for s in present for c in _class_dirs(folder / s)})
        if not class_dirs:
            raise DataError(f"Dataset folder {folder}: {'/, '.join(present)}/ hold no class subfolders; expected "
                            f"{folder}/train/<class>/<image>.")
        index = {c: i for i, c in enumerate(class_dirs)}
        splits = {s: [Item(p, index[c]) for c in _class_dirs(folder / s) for p in _images_warn(folder / s / c, skipped)]
                  if s in present else [] for s in SPLITS}
        skipped += [str(p) for s in present for p in (folder / s).iterdir() if p.is_file()
                    and not p.name.startswith(".")]
        if "val" not in present:
            splits = _carve_val(splits, split_seed)
            log.info("%s has no val/ folder: %d validation images taken from train/ (20%% per class, seeded).",
                     folder, len(splits["val"]))
    else:
        class_dirs = _class_dirs(folder)
        if not class_dirs:
            raise DataError(f"Dataset folder {folder} has no class subfolders; expected {folder}/<class>/<image>, "
                            f"a split_zhou_*.json (CoOp layout) or a CSV file.")
        per_class = {i: _images_warn(folder / c, skipped) for i, c in enumerate(class_dirs)}
        empty = [class_dirs[i] for i, v in per_class.items() if not v]
        if empty:
            raise DataError(f"Class folder {folder / empty[0]} contains no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        splits = _seeded_split(per_class, split_seed)
    if skipped:
        log.warning("%s: %d files are not images (%s) and were skipped, e.g. %s.", folder, len(skipped),
                    ", ".join(sorted(IMAGE_EXTENSIONS)), skipped[0])
    check_inside(folder, splits, f"Dataset folder {folder}", allow_outside_paths)
    check_unique_images(splits, f"Dataset folder {folder}")
    classnames, templates = _extra_files(folder, _distinct_names(class_dirs, f"Dataset folder {folder}"),
                                         folder.name)
    return Dataset(folder.name, classnames, anchor(splits, folder), templates, source=str(folder))


# -- CSV -------------------------------------------------------------------------------------------------------
CSV_COLUMNS = ("path", "label", "split")


def _csv_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:   # -sig: a BOM (Excel's UTF-8) is not data
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            _check_csv_columns(csv_path, cols)
            rows = []
            for r in reader:
                if None in r:   # more fields than columns: DictReader would hide them under the key None
                    raise DataError(f"CSV file {csv_path} row {reader.line_num}: {len(cols) + len(r[None])} fields; "
                                    f"the header has {len(cols)} ({', '.join(cols)}); quote a path that has a comma.")
                rows.append({(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()})
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {csv_path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except csv.Error as e:
        raise DataError(f"CSV file {csv_path} could not be parsed ({e}).") from None
    if not rows:
        raise DataError(f"CSV file {csv_path} has no rows.")
    return cols, rows


def _check_csv_columns(csv_path: Path, cols: list[str]) -> None:
    """path and label present, no column twice, and no column that looks like a misspelt one (``spilt``: its
    split would otherwise be silently replaced by a seeded one); other columns are ignored."""
    if "path" not in cols or "label" not in cols:
        raise DataError(f"CSV file {csv_path} must have a header with 'path' and 'label' columns; got {cols}.")
    dup = next((c for c in cols if cols.count(c) > 1), None)
    if dup is not None:
        raise DataError(f"CSV file {csv_path}: the column {dup!r} appears twice in the header; give each once.")
    for c in cols:
        near = closest(c.lower(), CSV_COLUMNS)
        if c not in CSV_COLUMNS and near is not None and near not in cols:
            raise DataError(f"CSV file {csv_path}: unknown column {c!r} (did you mean {near!r}?); the columns are "
                            f"path, label and the optional split.")


def _csv_labels(csv_path: Path, rows: list[dict[str, str]]) -> tuple[list[int], list[str]]:
    """Integer labels ``0..C-1`` (without gaps) or class names (sorted), never a mix."""
    labels = [r["label"] for r in rows]
    for i, lbl in enumerate(labels):
        if not lbl:
            raise DataError(f"CSV file {csv_path} row {i + 2}: the label is empty.")
    numeric = [lbl.lstrip("-").isdigit() for lbl in labels]
    if all(numeric):
        ints = [int(lbl) for lbl in labels]
        for i, y in enumerate(ints):
            check_label(y, f"CSV file {csv_path} row {i + 2}")
        return ints, [str(i) for i in range(check_no_gaps(ints, f"CSV file {csv_path}"))]
    if any(numeric):
        a, b = labels[numeric.index(True)], labels[numeric.index(False)]
        raise DataError(f"CSV file {csv_path} mixes integer labels ({a!r}) and class-name labels ({b!r}); use one "
                        f"kind for every row.")
    names = sorted(set(labels))
    index = {c: i for i, c in enumerate(names)}
    return [index[lbl] for lbl in labels], _distinct_names(names, f"CSV file {csv_path}")


def read_csv(csv_path: str | Path, split_seed: int = 0, allow_outside_paths: bool = False) -> Dataset:
    """Read a ``path,label[,split]`` CSV; paths are relative to the CSV's folder (and stay inside it unless
    ``allow_outside_paths``)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file {csv_path} not found.")
    cols, rows = _csv_rows(csv_path)
    ints, classnames = _csv_labels(csv_path, rows)
    base = csv_path.parent
    paths = [join_inside(base, base, r["path"], f"CSV file {csv_path} row {i + 2}", allow_outside_paths)
             for i, r in enumerate(rows)]
    if "split" in cols:
        splits: dict[str, list[Item]] = {s: [] for s in SPLITS}
        for i, (r, p, y) in enumerate(zip(rows, paths, ints)):
            if r["split"] not in SPLITS:
                raise DataError(f"CSV file {csv_path} row {i + 2}: split {r['split']!r} of {r['path']} is not one of "
                                f"train, val, test.")
            splits[r["split"]].append(Item(p, y))
    else:
        per_class: dict[int, list[str]] = {}
        for p, y in zip(paths, ints):
            per_class.setdefault(y, []).append(p)
        splits = _seeded_split(per_class, split_seed)
    check_unique_images(splits, f"CSV file {csv_path}")
    classnames, templates = _extra_files(base, classnames, csv_path.stem)
    if all(c.isdigit() for c in classnames):
        log.warning("%s: class names are numbers; add a classnames.txt next to it for meaningful prompts.", csv_path)
    return Dataset(csv_dataset_name(csv_path), classnames, anchor(splits, base), templates, source=str(csv_path))


# CSV file names that say nothing about the data: such a CSV is named after its folder, so that two projects'
# data.csv do not write their results into the same runs/data/ folder.
GENERIC_CSV_NAMES = frozenset({"data", "dataset", "labels", "annotations", "metadata", "index", "images", "list",
                               "all", "split", "splits"})


def csv_dataset_name(csv_path: Path) -> str:
    """A CSV dataset's default name: its file name, or its folder's name when the file name is generic."""
    stem = csv_path.stem
    if stem.lower() in GENERIC_CSV_NAMES and csv_path.resolve().parent.name:
        return csv_path.resolve().parent.name
    return stem
