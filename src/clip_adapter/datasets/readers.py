"""Dataset readers: a CoOp-layout folder, a class-folder tree, a CSV, or a built-in name -> :class:`Dataset`.

:func:`load_dataset` picks the reader from what is on disk; no class per dataset:

* **CoOp layout**: a folder holding ``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[relpath, label,
  classname], ...]}``) and the image folder the relpaths are relative to (found automatically).
* **Class folders** (ImageFolder): ``<dir>/<class>/*.jpg``, or ``<dir>/{train,val,test}/<class>/*.jpg``. Without
  split folders, a seeded per-class split (50% train / 20% val / 30% test, CoOp's default) is made.
* **CSV**: ``path,label[,split]`` with a header; ``path`` relative to the CSV's folder; ``label`` an integer or a
  class name. Without a ``split`` column, the same seeded split is made.
* **Built-in names** (``dtd``, ``eurosat``, ...; :mod:`~clip_adapter.datasets.catalog`) under a data root, in CoOp's
  layout, FGVC-Aircraft's variant lists or ImageNet's class folders.

Optional files next to the data: ``classnames.txt`` (one name per line, line i = label i) and
``templates.txt`` (one prompt template per line, with ``{}`` for the class name).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
from pathlib import Path

from ..io import atomic_path
from .catalog import DatasetInfo, get_info, resolve_root, templates_for
from .types import IMAGE_EXTENSIONS, SPLITS, Dataset, Item, readable

__all__ = ["load_dataset", "read_coop", "read_image_folder", "read_csv", "read_builtin", "read_fgvc",
           "read_imagenet", "images_in", "IMAGENET_VAL_PER_CLASS", "IMAGENET_SPLIT_CACHE"]

log = logging.getLogger(__name__)

DEFAULT_SPLIT = (0.5, 0.2)  # train, val fractions; test gets the rest (CoOp's read_and_split_data)
# ImageNet has no validation split in CoOp (val = test there). Tuning on test is not allowed here, so val is
# a seeded per-class hold-out of the *train* images: IMAGENET_VAL_PER_CLASS images of each class, the rest train.
IMAGENET_VAL_PER_CLASS = 10
IMAGENET_VAL_SEED = 0
IMAGENET_SPLIT_CACHE = "split_clip_adapter_ImageNet.json"

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
    if "/" not in str(spec):
        return read_builtin(str(spec), root)
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


def images_in(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursive, known extensions only), sorted."""
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image_folder(folder: str | Path, split_seed: int = 0) -> Dataset:
    """Read ``<dir>/<class>/*`` (seeded split) or ``<dir>/{train,val,test}/<class>/*``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Dataset folder {folder} not found.")
    if all((folder / s).is_dir() for s in SPLITS):
        class_dirs = sorted({p.name for s in SPLITS for p in (folder / s).iterdir() if p.is_dir()})
        index = {c: i for i, c in enumerate(class_dirs)}
        splits = {s: [Item(p, index[c.name]) for c in sorted((folder / s).iterdir()) if c.is_dir()
                      for p in images_in(c)] for s in SPLITS}
    else:
        class_dirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"Dataset folder {folder} has no class subfolders; expected {folder}/<class>/<image>, "
                             f"a split_zhou_*.json (CoOp layout) or a CSV file.")
        per_class = {i: images_in(folder / c) for i, c in enumerate(class_dirs)}
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


# -- built-in datasets ---------------------------------------------------------------------------------------
def read_builtin(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """Load a built-in dataset from its CoOp layout under ``root``.

    Raises:
        ValueError: unknown name (with a close match).
        FileNotFoundError: the data is not there; names the missing path and the download command.
    """
    info = get_info(name)
    root = resolve_root(root)
    missing = info.missing(root)
    if missing:
        raise FileNotFoundError(f"Dataset {info.name} not found: {missing[0]} is missing; run `clip-adapter "
                                f"datasets download {info.name} --root {root}` (it fetches what it can and prints "
                                f"the manual steps).")
    ds_dir = info.path(root)
    if info.split_format == "coop":
        ds = read_coop(ds_dir, split_file=ds_dir / info.split_file, image_dir=ds_dir / info.image_dir,
                       name=info.name)
    elif info.split_format == "fgvc":
        ds = read_fgvc(info, ds_dir)
    elif info.split_format == "imagenet":
        ds = read_imagenet(info, ds_dir)
    else:  # pragma: no cover - registry rows are fixed
        raise ValueError(f"Dataset {info.name}: unknown split format {info.split_format!r}.")
    return ds


def read_fgvc(info: DatasetInfo, ds_dir: Path) -> Dataset:
    """FGVC-Aircraft as CoOp reads it: labels = line order of variants.txt, ``images_variant_<split>.txt`` lines
    are ``<image id> <variant name>`` and the image is ``images/<image id>.jpg``."""
    classnames = [ln.strip() for ln in (ds_dir / "variants.txt").read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(classnames)}
    img_dir = ds_dir / info.image_dir
    splits: dict[str, list[Item]] = {}
    for s in SPLITS:
        f = ds_dir / f"images_variant_{s}.txt"
        items = []
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in index:
                raise ValueError(f"{f}:{n}: variant {variant!r} is not in variants.txt.")
            items.append(Item(str(img_dir / f"{image_id}.jpg"), index[variant]))
        splits[s] = items
    return Dataset(info.name, classnames, splits, list(info.templates), source=str(ds_dir))


def _read_classnames_txt(path: Path) -> dict[str, str]:
    """CoOp's ImageNet classnames.txt: ``<wnid> <class name>`` per line."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, cname = line.strip().partition(" ")
        if not cname:
            raise ValueError(f"{path}:{n}: expected '<wnid> <class name>', got {line.strip()!r}.")
        out[wnid] = cname.strip()
    return out


def _list_images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def read_imagenet(info: DatasetInfo, ds_dir: Path) -> Dataset:
    """ImageNet as CoOp lays it out; the scanned split is cached in ``split_clip_adapter_ImageNet.json`` (delete
    it to rescan; it is rebuilt when classnames.txt or the val rule change)."""
    img_dir = ds_dir / info.image_dir
    cn_file = ds_dir / "classnames.txt"
    meta = {"classnames_sha256": hashlib.sha256(cn_file.read_bytes()).hexdigest(),
            "val_per_class": IMAGENET_VAL_PER_CLASS, "val_seed": IMAGENET_VAL_SEED, "format": 1}
    cache = ds_dir / IMAGENET_SPLIT_CACHE
    raw = None
    if cache.is_file():
        try:
            raw = json.loads(cache.read_text())
            if raw.get("meta") != meta:
                raw = None
        except (OSError, ValueError):
            raw = None
    if raw is None:
        raw = _scan_imagenet(img_dir, _read_classnames_txt(cn_file))
        raw["meta"] = meta
        try:
            with atomic_path(cache) as tmp:
                tmp.write_text(json.dumps(raw))
        except OSError as e:  # read-only data folders still load, just slower next time
            log.warning("Could not write the ImageNet split cache %s (%s).", cache, e)
    names: dict[int, str] = {}
    for s in SPLITS:
        for _, y, c in raw[s]:
            names.setdefault(y, c)
    n = len(names)
    splits = {s: [Item(str(img_dir / rel), int(y)) for rel, y, _ in raw[s]] for s in SPLITS}
    return Dataset(info.name, [names[i] for i in range(n)], splits, list(info.templates), source=str(cache))


def _scan_imagenet(img_dir: Path, wnid_to_name: dict[str, str]) -> dict[str, list]:
    train_dir, test_dir = img_dir / "train", img_dir / "val"
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    test_wnids = sorted(e.name for e in os.scandir(test_dir) if e.is_dir())
    if wnids != test_wnids:
        raise ValueError(f"ImageNet: {test_dir} has {len(test_wnids)} class folders, {train_dir} has {len(wnids)}; "
                         f"expected the same wnid folders (sort val into <wnid>/ folders, see `clip-adapter datasets "
                         f"download imagenet`).")
    lacking = [w for w in wnids if w not in wnid_to_name]
    if lacking:
        raise ValueError(f"ImageNet: classnames.txt has no name for {lacking[0]}; expected '<wnid> <name>' lines "
                         f"for all {len(wnids)} folders.")
    raw: dict[str, list] = {s: [] for s in SPLITS}
    for label, wnid in enumerate(wnids):
        cname = wnid_to_name[wnid]
        files = _list_images(train_dir / wnid)
        held = set(random.Random(f"{IMAGENET_VAL_SEED}-{wnid}").sample(files, min(IMAGENET_VAL_PER_CLASS,
                                                                                   len(files) // 2)))
        for f in files:
            raw["val" if f in held else "train"].append([f"train/{wnid}/{f}", label, cname])
        raw["test"].extend([f"val/{wnid}/{f}", label, cname] for f in _list_images(test_dir / wnid))
    return raw
