"""Images as a method's input, for methods that back-propagate through the encoders and so cannot train on cached
features (CLIP-LoRA): every step re-augments the images, as their authors do.

A method declares ``inputs = "images"`` (:class:`~clip_adapter.methods.FewShotMethod`); the protocol then reads its
train/val/test inputs from an :class:`ImageSource` instead of a :class:`~clip_adapter.features.FeatureCache`. Both
answer ``features(items)`` and ``views(items, n)``: the image source gives :class:`ImageSet` s (paths plus the
backbone's transforms, decoded on demand) and no cached views.

Augmentation is reproducible without a shared RNG: each sample of a schedule is an image index and an augmentation
seed that seeds its crop/flip, so the same schedule gives the same pixels in any number of loader processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .datasets.types import Item
from .features import ImageListDataset, iter_batches, load_image_views

__all__ = ["ImageSet", "ImageSource"]


class _Scheduled(Dataset):
    """``(path index, augmentation seed)`` pairs -> train-transformed images."""

    def __init__(self, paths: Sequence[str], transform: Callable, schedule: Sequence[tuple[int, int]]):
        self.paths, self.transform, self.schedule = list(paths), transform, list(schedule)

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, j: int) -> torch.Tensor:
        i, seed = self.schedule[j]
        with torch.random.fork_rng(devices=[]):  # the caller's RNG untouched
            # The CPU generator only: torch.manual_seed would also queue a CUDA seed (with a stack trace) per image.
            torch.default_generator.manual_seed(seed)
            return load_image_views(self.paths[i], self.transform)


@dataclass(frozen=True)
class ImageSet:
    """Images of one split, decoded on demand: ``paths`` plus the backbone's ``test_transform`` (evaluation) and
    ``train_transform`` (augmentation). ``shape`` is ``(n,)`` so it stands where a feature tensor ``(n, d)`` stands
    in a :class:`~clip_adapter.selection.FeatureSplit`."""

    paths: tuple[str, ...]
    test_transform: Callable
    train_transform: Callable

    @classmethod
    def of(cls, items: Sequence[Item] | Sequence[str], backbone) -> "ImageSet":
        """The images of ``items`` (dataset items or paths) with ``backbone``'s transforms."""
        paths = tuple(it.path if isinstance(it, Item) else str(it) for it in items)
        return cls(paths, backbone.test_transform, backbone.train_transform)

    @property
    def shape(self) -> tuple[int]:
        return (len(self.paths),)

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int = 64, num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Test-transformed images ``(b, 3, H, W)`` in order, ``batch_size`` at a time."""
        # Its own generator: a loader otherwise draws its base seed from the caller's global RNG.
        loader = DataLoader(ImageListDataset(self.paths, self.test_transform), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers if len(self.paths) > batch_size else 0,
                            generator=torch.Generator())
        yield from iter_batches(loader)

    def augmented(self, batches: Sequence[Sequence[tuple[int, int]]], num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Train-transformed images, one tensor ``(len(batch), 3, H, W)`` per batch of ``(index, augmentation seed)``
        pairs; the same batches give the same pixels whatever ``num_workers``."""
        flat = [pair for batch in batches for pair in batch]
        bounds, start = [], 0
        for batch in batches:
            bounds.append(list(range(start, start + len(batch))))
            start += len(batch)
        loader = DataLoader(_Scheduled(self.paths, self.train_transform, flat), batch_sampler=bounds,
                            num_workers=num_workers, persistent_workers=num_workers > 0, generator=torch.Generator())
        yield from iter_batches(loader)


class ImageSource:
    """Where an image-trained method reads its inputs in the protocol, in place of a feature cache: ``features``
    gives :class:`ImageSet` s (nothing is encoded or stored), ``views`` gives ``None`` (the method augments every
    step itself)."""

    def __init__(self, backbone):
        self.backbone = backbone

    def features(self, items: Sequence[Item] | Sequence[str]) -> ImageSet:
        return ImageSet.of(items, self.backbone)

    def views(self, items: Sequence[Item] | Sequence[str], views: int | Sequence[int] = 0) -> None:
        return None
