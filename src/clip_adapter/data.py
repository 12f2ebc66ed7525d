"""Datasets as data: a CoOp-layout folder, a class-folder tree or a CSV -> :class:`Dataset`. No class per dataset.

Supported forms (detected from what is on disk):

* **CoOp layout**: a folder holding ``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[relpath, label,
  classname], ...]}``) and the image folder the relpaths are relative to (found automatically).
* **Class folders** (ImageFolder): ``<dir>/<class>/*.jpg``, or ``<dir>/{train,val,test}/<class>/*.jpg``. Without
  split folders, a seeded per-class split (50% train / 20% val / 30% test, CoOp's default) is made.
* **CSV**: ``path,label[,split]`` with a header; ``path`` relative to the CSV's folder; ``label`` an integer or a
  class name. Without a ``split`` column, the same seeded split is made.

Optional files next to the data: ``classnames.txt`` (one name per line, line i = label i) and
``templates.txt`` (one prompt template per line, with ``{}`` for the class name).
"""
from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from .prompts import templates_for

__all__ = ["Item", "Dataset", "load_dataset", "read_coop", "read_image_folder", "read_csv", "SPLITS",
           "IMAGE_EXTENSIONS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_SPLIT = (0.5, 0.2)  # train, val fractions; test gets the rest (CoOp's read_and_split_data)


@dataclass(frozen=True)
class Item:
    """One labelled image: absolute ``path`` and integer ``label`` in ``0..C-1``."""

    path: str
    label: int


@dataclass
class Dataset:
    """Class names, prompt templates and the three splits of a classification dataset."""

    name: str
    classnames: list[str]
    splits: dict[str, list[Item]]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Item]:
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; expected one of {', '.join(SPLITS)}.")
        return self.splits[name]

    def summary(self) -> dict:
        return {"name": self.name, "classes": self.num_classes,
                **{s: len(self.splits.get(s, [])) for s in SPLITS}}


def readable(name: str) -> str:
    """Class folder/CSV names to prompt-ready text, as CoOp does: underscores become spaces."""
    return name.replace("_", " ").strip()


def load_dataset(spec: str | Path, root: str | Path | None = None, split_seed: int = 0) -> Dataset:
    """Load a dataset from a folder, a CSV file, or a built-in name (``dtd``, ``eurosat``... under ``root``).

    Args:
        spec: path of a CoOp-layout folder, a class-folder tree, a CSV file, or a built-in dataset name.
        root: where built-in datasets live (``--root``); only used for names.
        split_seed: seed of the train/val/test split made when the data has none.
    """
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path, split_seed=split_seed)
    if path.is_dir():
        if sorted(path.glob("split_zhou_*.json")):
            return read_coop(path)
        return read_image_folder(path, split_seed=split_seed)
    if path.exists():
        raise ValueError(f"Dataset {path} is neither a folder nor a .csv file.")
    try:
        from .catalog import load_builtin
    except ImportError:  # pragma: no cover
        load_builtin = None
    if load_builtin is not None and "/" not in str(spec):
        return load_builtin(str(spec), root)
    raise FileNotFoundError(f"Dataset {spec} not found; expected a folder, a .csv file or a built-in dataset name "
                            f"(clip-adapter datasets list).")


def _extra_files(folder: Path, classnames: list[str], name: str) -> tuple[list[str], list[str]]:
    """Apply optional classnames.txt / templates.txt found in ``folder``."""
    cn_file = folder / "classnames.txt"
    if cn_file.is_file():
        names = [ln.strip() for ln in cn_file.read_text().splitlines() if ln.strip()]
        if len(names) != len(classnames):
            raise ValueError(f"{cn_file} has {len(names)} names; the data has {len(classnames)} classes.")
        classnames = names
    tpl_file = folder / "templates.txt"
    if tpl_file.is_file():
        templates = [ln.strip() for ln in tpl_file.read_text().splitlines() if ln.strip()]
        bad = [t for t in templates if t.count("{}") != 1]
        if bad or not templates:
            raise ValueError(f"{tpl_file}: every line must contain '{{}}' once; got {bad[:1] or 'no lines'}.")
    else:
        templates = templates_for(name)
    return classnames, templates


def _check_labels(items: list[Item], n_classes: int, where: str) -> None:
    bad = [it for it in items if not 0 <= it.label < n_classes]
    if bad:
        raise ValueError(f"{where}: label {bad[0].label} of {bad[0].path} is outside 0..{n_classes - 1}.")


def _find_image_dir(folder: Path, sample_relpaths: list[str]) -> Path:
    # Majority vote over a sample, so a few missing files (reported by `datasets verify`) do not hide the folder.
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    best = max(candidates, key=lambda c: sum((c / rel).exists() for rel in sample_relpaths))
    if sum((best / rel).exists() for rel in sample_relpaths) * 2 > len(sample_relpaths):
        return best
    raise FileNotFoundError(f"Images of the split file in {folder} not found: none of {folder} or its subfolders "
                            f"contains {sample_relpaths[0]!r}; expected the CoOp layout (images next to the split "
                            f"file, e.g. {folder}/images/...).")


def read_coop(folder: str | Path, split_file: str | Path | None = None, image_dir: str | Path | None = None,
              name: str | None = None) -> Dataset:
    """Read a CoOp-layout dataset: ``split_zhou_<Name>.json`` + the image folder its relpaths refer to."""
    folder = Path(folder)
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
    try:
        raw = json.loads(split_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"Split file {split_file} is not valid JSON ({e}).") from None
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise ValueError(f"Split file {split_file} lacks the {missing[0]!r} split; expected keys train, val, test.")
    names: dict[int, str] = {}
    for s in SPLITS:
        for entry in raw[s]:
            if not (isinstance(entry, list) and len(entry) == 3):
                raise ValueError(f"Split file {split_file}: entry {entry!r} in {s!r} is not [relpath, label, classname].")
            names.setdefault(int(entry[1]), readable(str(entry[2])))
    n = max(names) + 1 if names else 0
    gaps = sorted(set(range(n)) - set(names))
    if gaps:
        raise ValueError(f"Split file {split_file}: labels must be 0..{n - 1} without gaps; label {gaps[0]} is unused.")
    classnames = [names[i] for i in range(n)]
    sample = [e[0] for s in SPLITS for e in raw[s][:: max(1, len(raw[s]) // 7)][:7]]
    img_dir = Path(image_dir) if image_dir is not None else _find_image_dir(folder, sample)
    splits = {s: [Item(str(img_dir / rel), int(y)) for rel, y, _ in raw[s]] for s in SPLITS}
    ds_name = name or split_file.stem.removeprefix("split_zhou_")
    classnames, templates = _extra_files(folder, classnames, ds_name)
    return Dataset(ds_name, classnames, splits, templates, source=str(split_file))


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


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image_folder(folder: str | Path, split_seed: int = 0) -> Dataset:
    """Read ``<dir>/<class>/*`` (seeded split) or ``<dir>/{train,val,test}/<class>/*``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Dataset folder {folder} not found.")
    if all((folder / s).is_dir() for s in SPLITS):
        class_dirs = sorted({p.name for s in SPLITS for p in (folder / s).iterdir() if p.is_dir()})
        index = {c: i for i, c in enumerate(class_dirs)}
        splits = {s: [Item(p, index[c.name]) for c in sorted((folder / s).iterdir()) if c.is_dir()
                      for p in _images_in(c)] for s in SPLITS}
    else:
        class_dirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"Dataset folder {folder} has no class subfolders; expected {folder}/<class>/<image>, "
                             f"a split_zhou_*.json (CoOp layout) or a CSV file.")
        per_class = {i: _images_in(folder / c) for i, c in enumerate(class_dirs)}
        empty = [class_dirs[i] for i, v in per_class.items() if not v]
        if empty:
            raise ValueError(f"Class folder {folder / empty[0]} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        splits = _seeded_split(per_class, split_seed)
    classnames, templates = _extra_files(folder, [readable(c) for c in class_dirs], folder.name)
    return Dataset(folder.name, classnames, splits, templates, source=str(folder))


def read_csv(csv_path: str | Path, split_seed: int = 0) -> Dataset:
    """Read a ``path,label[,split]`` CSV; paths are relative to the CSV's folder unless absolute."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file {csv_path} not found.")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or "label" not in cols:
            raise ValueError(f"CSV file {csv_path} must have a header with 'path' and 'label' columns; got {cols}.")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not rows:
        raise ValueError(f"CSV file {csv_path} has no rows.")
    base = csv_path.parent
    labels = [r["label"] for r in rows]
    if all(lbl.lstrip("-").isdigit() for lbl in labels):
        ints = [int(lbl) for lbl in labels]
        n = max(ints) + 1
        classnames = [str(i) for i in range(n)]
    else:
        classnames = sorted(set(labels))
        ints = [classnames.index(lbl) for lbl in labels]
        classnames = [readable(c) for c in classnames]
    paths = [str(p if (p := Path(r["path"])).is_absolute() else base / p) for r in rows]
    if "split" in cols:
        splits = {s: [] for s in SPLITS}
        for r, p, y in zip(rows, paths, ints):
            if r["split"] not in SPLITS:
                raise ValueError(f"CSV file {csv_path}: split {r['split']!r} of {r['path']} is not one of train, val, test.")
            splits[r["split"]].append(Item(p, y))
    else:
        per_class: dict[int, list[str]] = {}
        for p, y in zip(paths, ints):
            per_class.setdefault(y, []).append(p)
        splits = _seeded_split(per_class, split_seed)
    for s in SPLITS:
        _check_labels(splits[s], len(classnames), str(csv_path))
    classnames, templates = _extra_files(base, classnames, csv_path.stem)
    if all(c.isdigit() for c in classnames):
        log.warning("%s: class names are numbers; add a classnames.txt next to it for meaningful prompts.", csv_path)
    return Dataset(csv_path.stem, classnames, splits, templates, source=str(csv_path))
