"""The checks every dataset reader applies, each failing with one line that names the file and the entry.

* paths stay inside the dataset folder (no absolute paths, no ``..`` out of it, no symlink reaching out of it)
  unless the user opts in;
* labels are ints ``0..C-1`` without gaps, and a label has one class name (and a class name one label);
* no image is listed twice, within a split or across splits (train/test leakage), compared as files (device and
  inode), so a symlinked folder or a hard link of the same image is caught too;
* a prompt template holds ``{}`` once and no other braces.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from .types import SPLITS, Item

__all__ = ["DataError", "join_inside", "check_inside", "check_label", "check_label_names", "check_no_gaps", "check_unique_images",
           "check_templates", "OPT_IN"]

# How a user lets entries point outside the dataset folder (named in the error).
OPT_IN = "allow_outside_paths=True (CLI: --allow-outside-paths)"


class DataError(ValueError):
    """A dataset file holds something it must not; the message names the file and the entry."""


@lru_cache(maxsize=64)
def _real(folder: str) -> str:
    return os.path.realpath(folder)


def join_inside(folder: Path, base: Path, rel: Any, where: str, allow_outside: bool = False) -> str:
    """``base / rel`` as a string; ``rel`` must be a non-empty relative path that stays inside ``folder`` (the dataset
    folder; ``base`` is at or under it), both as written and once symlinks are resolved: a symlink inside the
    dataset folder that reaches outside it (a file, or a symlinked image folder) needs the opt-in too."""
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{where}: the path must be a non-empty string. Got {rel!r} instead.")
    path = Path(os.path.expanduser(rel)) if rel.startswith("~") else Path(rel)
    full = path if path.is_absolute() else base / path
    if allow_outside:
        return str(full)
    if path.is_absolute() or PurePosixPath(rel.replace("\\", "/")).is_absolute() or rel.startswith("~"):
        raise DataError(f"{where}: the path {rel!r} is absolute; entries must be relative to {base}. Pass "
                        f"{OPT_IN} to read files outside the dataset folder.")
    norm = os.path.normpath(full)
    root = os.path.normpath(folder)
    if os.path.commonpath([norm, root]) != root:
        raise DataError(f"{where}: the path {rel!r} leaves the dataset folder {folder}. Pass {OPT_IN} to read files "
                        f"outside it.")
    real, real_root = os.path.realpath(norm), _real(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise DataError(f"{where}: the path {rel!r} goes through a symlink to {real}, outside the dataset folder "
                        f"{folder}. Pass {OPT_IN} to read files outside it.")
    return str(full)


def check_inside(folder: Path, splits: Mapping[str, list[Item]], where: str, allow_outside: bool = False) -> None:
    """Every image found under ``folder`` resolves inside it: a symlink in a class folder that points elsewhere needs
    the opt-in, as a split-file entry would (:func:`join_inside`)."""
    if allow_outside:
        return
    real_root = _real(os.path.normpath(os.path.abspath(folder)))
    for s in SPLITS:
        for it in splits.get(s, []):
            real = os.path.realpath(it.path)
            if os.path.commonpath([real, real_root]) != real_root:
                raise DataError(f"{where}: {it.path} goes through a symlink to {real}, outside the dataset folder "
                                f"{folder}. Pass {OPT_IN} to read files outside it.")


def check_label(value: Any, where: str) -> int:
    """An int label ``>= 0`` (not a bool, a float or a string)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{where}: the label must be an int >= 0. Got {value!r} instead.")
    return value


def check_label_names(pairs: Iterable[tuple[int, str, str]], where: str) -> dict[int, str]:
    """``(label, class name, entry)`` triples -> label -> name; a label with two names, or a name with two labels,
    is an error naming both entries."""
    names: dict[int, tuple[str, str]] = {}
    labels: dict[str, tuple[int, str]] = {}
    for label, name, entry in pairs:
        if label in names and names[label][0] != name:
            raise DataError(f"{where}: label {label} is {names[label][0]!r} in {names[label][1]} but {name!r} in "
                            f"{entry}; a label has one class name.")
        if name in labels and labels[name][0] != label:
            raise DataError(f"{where}: class {name!r} has label {labels[name][0]} in {labels[name][1]} but {label} "
                            f"in {entry}; a class has one label.")
        names.setdefault(label, (name, entry))
        labels.setdefault(name, (label, entry))
    return {k: v[0] for k, v in names.items()}


def check_no_gaps(labels: Iterable[int], where: str) -> int:
    """The number of classes ``C``; the labels must be exactly ``0..C-1``."""
    present = set(labels)
    n = max(present) + 1 if present else 0
    gaps = sorted(set(range(n)) - present)
    if gaps:
        raise DataError(f"{where}: labels must be 0..{n - 1} without gaps; label {gaps[0]} is unused.")
    return n


def _file_id(path: str) -> tuple:
    """What makes two paths one image: (device, inode) of the file, so symlinks and hard links compare equal; the
    resolved path for a file that is not there (it is reported missing later)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("file", st.st_dev, st.st_ino)


def check_unique_images(splits: Mapping[str, list[Item]], where: str) -> None:
    """No image twice: within a split (a duplicate) or in two splits (train/test leakage), also when listed under two
    names (a symlinked folder, a hard link)."""
    seen: dict[tuple, tuple[str, str]] = {}
    for s in SPLITS:
        for it in splits.get(s, []):
            key = _file_id(it.path)
            if key in seen:
                first_split, first_path = seen[key]
                what = f"twice in {s!r}" if first_split == s else f"in both {first_split!r} and {s!r}"
                hint = "" if first_split == s else " (train/test leakage)"
                same = "" if os.path.normpath(first_path) == os.path.normpath(it.path) else \
                    f" (the same file as {first_path})"
                raise DataError(f"{where}: image {it.path}{same} is listed {what}{hint}; each image belongs to one "
                                f"split, once.")
            seen[key] = (s, it.path)


def check_templates(templates: list[str], where: str) -> list[str]:
    """Each template holds ``{}`` exactly once and no other braces (``str.format`` would fail on them)."""
    if not templates:
        raise DataError(f"{where}: no prompt templates; expected lines like 'a photo of a {{}}.'.")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1 or t.replace("{}", "").count("{") or \
                t.replace("{}", "").count("}"):
            raise DataError(f"{where}: template {t!r} must contain '{{}}' exactly once (the class name) and no other "
                            f"braces.")
    return templates
