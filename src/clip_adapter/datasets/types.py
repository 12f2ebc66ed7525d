"""What every dataset reader returns: :class:`Item` (one labelled image) and :class:`Dataset` (class names, prompt
templates, and the train/val/test splits)."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Item", "Dataset", "SPLITS", "IMAGE_EXTENSIONS", "DEFAULT_TEMPLATE", "readable"]

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_TEMPLATE = "a photo of a {}."


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


def readable(name: str) -> str:
    """Class folder/CSV names to prompt-ready text, as CoOp does: underscores become spaces."""
    return name.replace("_", " ").strip()
