"""Image inputs of a saved model: decoding with one-line errors, a DataLoader dataset that reports unreadable
files instead of raising, and the expansion of files, folders and globs into image paths."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset as TorchDataset

from ..datasets.images import open_rgb  # the one decoder (every Pillow mode -> what a viewer shows)
from ..datasets.readers import images_in
from ..datasets.types import IMAGE_EXTENSIONS

__all__ = ["open_rgb", "SafeImages", "collate_safe", "expand_images"]

_GLOB_CHARS = set("*?[")


class SafeImages(TorchDataset):
    """Images at ``paths`` through ``transform``; a file that cannot be read gives its error, not an exception."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(open_rgb(self.paths[i])), None
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            return i, None, str(e)


def collate_safe(batch):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    errors = [(i, err) for i, x, err in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, errors


def expand_images(specs: Iterable[str | os.PathLike]) -> tuple[list[str], list[dict[str, str]]]:
    """Files, folders (recursive, image extensions only) and globs -> (image paths in order, error records).

    A path that does not exist, or a glob that matches nothing, becomes an error record ``{"path", "error"}``.
    Duplicates are dropped (first occurrence kept).
    """
    paths: list[str] = []
    errors: list[dict[str, str]] = []

    for spec in specs:
        s = str(spec)
        p = Path(s).expanduser()
        if p.is_dir():
            found = images_in(p)
            if not found:
                errors.append({"path": s, "error": f"Folder {s} contains no images "
                                                   f"({', '.join(sorted(IMAGE_EXTENSIONS))})."})
            paths.extend(found)
        elif p.is_file():
            paths.append(str(p))
        elif _GLOB_CHARS & set(s):
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not matches:
                errors.append({"path": s, "error": f"No file matches {s}."})
            for m in matches:
                paths.extend(images_in(Path(m)) if Path(m).is_dir() else [m])
        else:
            errors.append({"path": s, "error": f"Image {s} not found."})
    return list(dict.fromkeys(paths)), errors
