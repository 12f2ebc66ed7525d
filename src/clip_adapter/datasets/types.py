"""What every dataset reader returns: :class:`Item` (one labelled image) and :class:`Dataset` (class names, prompt
templates, and the train/val/test splits)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["Item", "Dataset", "SPLITS", "IMAGE_EXTENSIONS", "DEFAULT_TEMPLATE", "anchor", "readable"]

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class Item:
    """One labelled image: ``path``, integer ``label`` in ``0..C-1``, and ``rel``: the path relative to the folder
    above the dataset's folder (``dtd10/images/banded/banded_0001.jpg``), the same on every machine and mount point
    (it keys the feature cache); empty for images outside the dataset folder."""

    path: str
    label: int
    rel: str = ""


@dataclass
class Dataset:
    """Class names, prompt templates and the three splits of a classification dataset."""

    name: str
    classnames: list[str]
    splits: dict[str, list[Item]]
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
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


def anchor(splits: dict[str, list[Item]], folder: str | os.PathLike) -> dict[str, list[Item]]:
    """The splits with each item's ``rel`` set: its path relative to ``folder``'s parent, when it is inside
    ``folder`` (compared lexically, so symlinked image folders keep their names)."""
    root = os.path.normpath(os.path.abspath(folder))
    top = os.path.dirname(root)

    def rel(path: str) -> str:
        p = os.path.normpath(os.path.abspath(path))
        return os.path.relpath(p, top).replace(os.sep, "/") if os.path.commonpath([p, root]) == root else ""
    return {s: [Item(it.path, it.label, rel(it.path)) for it in items] for s, items in splits.items()}


def readable(name: str) -> str:
    """Class folder/CSV names to prompt-ready text, as CoOp does: underscores become spaces."""
    return name.replace("_", " ").strip()
