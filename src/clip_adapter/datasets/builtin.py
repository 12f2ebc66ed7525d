"""The built-in datasets (catalog rows) read from their folder under the data root: one reader per ``split_format``,
registered with :func:`~clip_adapter.datasets.catalog.register_format` (no if-chain): CoOp's split files (``coop``),
FGVC-Aircraft's variant lists (``fgvc``), ImageNet's class folders (``imagenet``, with a val split held out of train,
so nothing is tuned on test), and the test-only ImageNet variants (``imagenet_variant``: -V2, -Sketch, -A, -R)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

from ..io import atomic_path
from .catalog import DatasetInfo, format_reader, get_info, register_format, resolve_root
from .checks import DataError, check_unique_images
from .class_ids import imagenet_classnames, imagenet_wnids, is_wnid, subset_wnids
from .readers import read_coop
from .types import SPLITS, Dataset, Item, anchor

__all__ = ["read_builtin", "read_fgvc", "read_imagenet", "read_imagenet_variant", "IMAGENET_VAL_PER_CLASS", "IMAGENET_SPLIT_CACHE"]

log = logging.getLogger(__name__)

# ImageNet has no validation split in CoOp (val = test there). Tuning on test is not allowed here, so val is
# a seeded per-class hold-out of the *train* images: IMAGENET_VAL_PER_CLASS images of each class, the rest train.
IMAGENET_VAL_PER_CLASS = 10
IMAGENET_VAL_SEED = 0
IMAGENET_SPLIT_CACHE = "split_clip_adapter_ImageNet.json"


def read_builtin(name: str, root: str | os.PathLike | None = None, allow_outside_paths: bool = False) -> Dataset:
    """Load a built-in dataset from its CoOp layout under ``root`` (``allow_outside_paths``: let its split file's
    entries reach outside its folder, e.g. through a symlinked image folder).

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
    reader = format_reader(info)
    if allow_outside_paths:  # only readers of split-file paths take the opt-in (a reader without it fails loudly)
        return reader(info, info.path(root), allow_outside_paths=True)
    return reader(info, info.path(root))


@register_format("coop")
def read_coop_row(info: DatasetInfo, ds_dir: Path, allow_outside_paths: bool = False) -> Dataset:
    """A CoOp-layout row: ``split_zhou_<coop_name>.json`` in its folder, relpaths under ``image_dir``."""
    return read_coop(ds_dir, split_file=ds_dir / info.split_file, image_dir=ds_dir / info.image_dir, name=info.name,
                     allow_outside_paths=allow_outside_paths)


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a text file; one-line errors for unreadable files."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    return [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]


@register_format("fgvc")
def read_fgvc(info: DatasetInfo, ds_dir: Path) -> Dataset:
    """FGVC-Aircraft as CoOp reads it: labels = line order of variants.txt, ``images_variant_<split>.txt`` lines
    are ``<image id> <variant name>`` and the image is ``images/<image id>.jpg``."""
    classnames = [ln for _, ln in _lines(ds_dir / "variants.txt")]
    if len(set(classnames)) != len(classnames):
        dup = next(c for c in classnames if classnames.count(c) > 1)
        raise DataError(f"{ds_dir / 'variants.txt'}: variant {dup!r} is listed twice.")
    index = {c: i for i, c in enumerate(classnames)}
    img_dir = ds_dir / info.image_dir
    splits: dict[str, list[Item]] = {}
    for s in SPLITS:
        f = ds_dir / f"images_variant_{s}.txt"
        items = []
        for n, line in _lines(f):
            image_id, _, variant = line.partition(" ")
            if variant not in index:
                raise DataError(f"{f}:{n}: variant {variant!r} is not in variants.txt.")
            if "/" in image_id or "\\" in image_id or image_id.startswith("."):
                raise DataError(f"{f}:{n}: image id {image_id!r} must be a plain file name.")
            items.append(Item(str(img_dir / f"{image_id}.jpg"), index[variant]))
        splits[s] = items
    check_unique_images(splits, str(ds_dir))
    return Dataset(info.name, classnames, anchor(splits, ds_dir), list(info.templates), source=str(ds_dir))


def _read_classnames_txt(path: Path) -> dict[str, str]:
    """CoOp's ImageNet classnames.txt: ``<wnid> <class name>`` per line."""
    out: dict[str, str] = {}
    for n, line in _lines(path):
        wnid, _, cname = line.partition(" ")
        if not cname:
            raise DataError(f"{path}:{n}: expected '<wnid> <class name>', got {line!r}.")
        out[wnid] = cname.strip()
    return out


def _list_images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


@register_format("imagenet")
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
        except (OSError, ValueError, AttributeError):
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
    splits = {s: [Item(str(img_dir / rel), int(y)) for rel, y, _ in raw[s]] for s in SPLITS}
    return Dataset(info.name, [names[i] for i in range(len(names))], anchor(splits, ds_dir), list(info.templates),
                   source=str(cache))


def _scan_imagenet(img_dir: Path, wnid_to_name: dict[str, str]) -> dict[str, list]:
    train_dir, test_dir = img_dir / "train", img_dir / "val"
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    test_wnids = sorted(e.name for e in os.scandir(test_dir) if e.is_dir())
    if wnids != test_wnids:
        raise DataError(f"ImageNet: {test_dir} has {len(test_wnids)} class folders, {train_dir} has {len(wnids)}; "
                        f"expected the same wnid folders (sort val into <wnid>/ folders, see `clip-adapter datasets "
                        f"download imagenet`).")
    lacking = [w for w in wnids if w not in wnid_to_name]
    if lacking:
        raise DataError(f"ImageNet: classnames.txt has no name for {lacking[0]}; expected '<wnid> <name>' lines "
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


@register_format("imagenet_variant")
def read_imagenet_variant(info: DatasetInfo, ds_dir: Path) -> Dataset:
    """A test-only ImageNet variant (-V2, -Sketch, -A, -R): one folder per class under ``image_dir``, named by wnid
    (ImageNet-V2: by class index 0..999); class names are CLIP's ImageNet names of those wnids. Every image is a
    test image (train and val are empty). A row with a ``class_list`` must have exactly those classes."""
    img_dir = ds_dir / info.image_dir
    folders = sorted((e.name for e in os.scandir(img_dir) if e.is_dir()),
                     key=lambda n: (0, int(n), n) if n.isdigit() else (1, 0, n))
    all_wnids = imagenet_wnids()
    wnids = [all_wnids[int(f)] if f.isdigit() and int(f) < len(all_wnids) else f for f in folders]
    odd = [f for f, w in zip(folders, wnids) if not is_wnid(w)]
    if odd:
        raise DataError(f"{info.name}: {img_dir / odd[0]} is not a class folder (expected a wnid such as n01440764"
                        f"{' or an index 0..999' if info.name == 'imagenet_v2' else ''}).")
    expected = subset_wnids(info.class_list) if info.class_list else None
    if expected is not None and sorted(wnids) != expected:
        extra, lacking = sorted(set(wnids) - set(expected)), sorted(set(expected) - set(wnids))
        raise DataError(f"{info.name}: {img_dir} has {len(wnids)} class folders; expected the {len(expected)} of "
                        f"class_lists/{info.class_list}.txt (not in the list: {extra[:5]}; missing: {lacking[:5]}).")
    names = imagenet_classnames()
    test = [Item(str(img_dir / f / name), label) for label, f in enumerate(folders)
            for name in _list_images(img_dir / f)]
    splits = {"train": [], "val": [], "test": test}
    return Dataset(info.name, [names[w] for w in wnids], anchor(splits, ds_dir), list(info.templates),
                   source=str(img_dir))
