"""Inner activations of an open_clip ViT image tower: extraction, the frozen tail after a block, and a cache.

Insertion positions are ``k = 1..L`` (``L`` = number of transformer blocks; negative values count from the end):

* ``k < L``: the token sequence after block ``k`` (the input of block ``k + 1``), ``(n, T, width)`` with the class
  token first; the frozen rest is blocks ``k+1..L``, ``ln_post`` + pooling, and ``proj`` (:class:`ViTTail`).
* ``k = L``: the image feature itself, ``(n, dim)`` = ``encode_image`` (blocks, ``ln_post`` and ``proj`` all
  done), so an adapter there is exactly CLIP-Adapter's feature-level adapter; the tail is the identity.

:class:`ActivationCache` stores activations like :class:`~clip_adapter.features.FeatureCache` stores features (it
*is* a FeatureCache over a view of the backbone whose "features" are the flattened activations of block ``k``,
with ``@block<k>`` in the id), so the per-image sharding, safetensors files, atomic writes, corruption checks and
seeded augmented views are the same. Activations are large (ViT-B/16: 197 x 768 floats = 605 KB per image and
view), so cache the few-shot train/val images and stream the test split (:func:`encode_activations`).
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .datasets.types import Item
from .features import FeatureCache, ImageListDataset, iter_batches
from .io import default_cache_dir

__all__ = ["vit_tower", "num_blocks", "resolve_layer", "activation_shape", "block_activations", "ViTTail",
           "ActivationCache", "encode_activations"]

log = logging.getLogger(__name__)


def vit_tower(backbone, who: str = "The layer adapter"):
    """The open_clip ``VisionTransformer`` of ``backbone``; a one-line error for anything else."""
    model = getattr(backbone, "model", None)
    visual = getattr(model, "visual", None)
    bid = getattr(backbone, "id", type(backbone).__name__)
    if visual is None or not all(hasattr(visual, a) for a in ("_embeds", "transformer", "_pool", "proj")) \
            or not hasattr(getattr(visual, "transformer", None), "resblocks"):
        raise ValueError(f"{who} needs an open_clip ViT image tower; {bid!r} has "
                         f"{type(visual).__name__ if visual is not None else type(backbone).__name__} "
                         f"(use e.g. --backbone ViT-B-16).")
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError(f"{who} supports ViT towers with class-token pooling; {bid!r} uses attentional pooling.")
    return visual


def num_blocks(backbone) -> int:
    """Number of transformer blocks ``L`` of the ViT image tower."""
    return len(vit_tower(backbone).transformer.resblocks)


def resolve_layer(layer: int, n_blocks: int) -> int:
    """``layer`` in ``1..L`` or ``-L..-1`` -> ``1..L``."""
    if not isinstance(layer, int) or not (1 <= layer <= n_blocks or -n_blocks <= layer <= -1):
        raise ValueError(f"Insertion layer must be in 1..{n_blocks} (or -{n_blocks}..-1 from the end) for this "
                         f"{n_blocks}-block ViT; got {layer!r}.")
    return layer if layer > 0 else n_blocks + 1 + layer


def activation_shape(backbone, layer: int) -> tuple[int, ...]:
    """Shape of one image's activations at ``layer``: ``(T, width)`` after block ``k < L``, ``(dim,)`` at ``L``."""
    visual = vit_tower(backbone)
    n = len(visual.transformer.resblocks)
    if resolve_layer(layer, n) == n:
        return (int(backbone.embed_dim),)
    return tuple(int(s) for s in visual.positional_embedding.shape)  # class token + patches, width


def _run_blocks(visual, x: torch.Tensor, blocks) -> torch.Tensor:
    """Run ``blocks`` on an NLD sequence (handles towers built with ``batch_first=False``)."""
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x


@torch.no_grad()
def block_activations(backbone, images: torch.Tensor, layer: int) -> torch.Tensor:
    """Activations at insertion position ``layer`` of preprocessed ``images``: ``(n, T, width)`` after block
    ``k < L``, or the image features ``(n, dim)`` for ``k = L``. float32 on the CPU."""
    visual = vit_tower(backbone)
    k = resolve_layer(layer, len(visual.transformer.resblocks))
    images = images.to(backbone.device)
    if k == len(visual.transformer.resblocks):
        return backbone.model.encode_image(images, normalize=False).float().cpu()
    x = visual._embeds(images)
    x = _run_blocks(visual, x, visual.transformer.resblocks[:k])
    return x.float().cpu()


class ViTTail(nn.Module):
    """The frozen rest of the tower after insertion position ``k``: blocks ``k+1..L``, ``ln_post`` + class-token
    pooling, ``proj``. Identity for ``k = L`` (its input is already the image feature)."""

    def __init__(self, backbone, layer: int):
        super().__init__()
        visual = vit_tower(backbone)
        self.n_blocks = len(visual.transformer.resblocks)
        self.layer = resolve_layer(layer, self.n_blocks)
        self.visual = visual  # shared with the backbone, frozen there
        self.device = backbone.device

    @property
    def is_identity(self) -> bool:
        return self.layer == self.n_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return x
        v = self.visual
        dtype = v.transformer.get_cast_dtype() if hasattr(v.transformer, "get_cast_dtype") else x.dtype
        out_device = x.device
        x = _run_blocks(v, x.to(self.device, dtype), v.transformer.resblocks[self.layer:])
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled.float().to(out_device)


class _BlockView:
    """A backbone whose "features" are the flattened activations at position ``k`` (for FeatureCache)."""

    def __init__(self, backbone, layer: int):
        self.backbone = backbone
        self.layer = resolve_layer(layer, num_blocks(backbone))
        self.id = f"{backbone.id}@block{self.layer}"
        self.test_transform, self.train_transform = backbone.test_transform, backbone.train_transform
        self.device = backbone.device
        self.shape = activation_shape(backbone, self.layer)
        self.embed_dim = int(torch.tensor(self.shape).prod())

    def transform_id(self, kind: str) -> str:
        return self.backbone.transform_id(kind)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return block_activations(self.backbone, images, self.layer).reshape(images.shape[0], -1)


class ActivationCache:
    """Encode-once store of the activations at insertion position ``layer`` (see the module docstring).

    Args:
        backbone: an open_clip ViT backbone.
        layer: insertion position ``1..L`` (or negative); ``L`` stores plain image features.
        root: cache directory (default ``$CLIP_ADAPTER_CACHE/activations``).
        batch_size, num_workers, progress: as for :class:`~clip_adapter.features.FeatureCache`.
    """

    def __init__(self, backbone, layer: int, root: str | os.PathLike | None = None, batch_size: int = 32,
                 num_workers: int | None = None, progress: bool = True):
        self.view = _BlockView(backbone, layer)
        self.layer, self.shape = self.view.layer, self.view.shape
        root = root if root is not None else default_cache_dir() / "activations"
        self._cache = FeatureCache(self.view, root=root, batch_size=batch_size, num_workers=num_workers,
                                   progress=progress)

    @property
    def encoded_images(self) -> int:
        return self._cache.encoded_images

    def features(self, items: Sequence[Item] | Sequence[str]) -> torch.Tensor:
        """Activations ``(n, *shape)`` of ``items`` with the test transform."""
        return self._cache.features(items).reshape(-1, *self.shape)

    def views(self, items: Sequence[Item] | Sequence[str], views: int | Sequence[int] = 10) -> torch.Tensor:
        """Augmented-view activations ``(V, n, *shape)`` (the same seeded views as FeatureCache's)."""
        out = self._cache.views(items, views)
        return out.reshape(out.shape[0], out.shape[1], *self.shape)

    def iter_features(self, items: Sequence[Item] | Sequence[str]) -> Iterator[torch.Tensor]:
        """Activations of ``items`` in chunks, encoded on the fly and never stored (the test split): the cached
        shards held in memory are released first."""
        self._cache.release()
        yield from encode_activations(self.view.backbone, items, self.layer, batch_size=self._cache.batch_size)


@torch.no_grad()
def encode_activations(backbone, items: Sequence[Item] | Sequence[str], layer: int, batch_size: int = 64,
                       num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Stream the activations of ``items`` (test transform) in chunks of ``batch_size``, without storing them."""
    paths = [it.path if isinstance(it, Item) else str(it) for it in items]
    loader = DataLoader(ImageListDataset(paths, backbone.test_transform), batch_size=batch_size,
                        num_workers=num_workers if len(paths) > batch_size else 0, shuffle=False)
    for batch in iter_batches(loader):
        yield block_activations(backbone, batch, layer)
