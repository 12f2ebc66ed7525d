"""Feature extraction on Ray Data, into the ordinary feature cache.

The images no shard holds yet are listed once, on the driver (:meth:`FeatureCache.missing`), so no two workers
encode the same image. Ray Data reads and decodes them in CPU tasks (the backbone's transforms, with the same
seeded augmented views as the single-process path), a pool of encoder actors (one per GPU, or N CPU actors) encodes
them, and each actor writes its batches as ordinary cache shards (atomic: a temporary file renamed), which
:class:`~clip_adapter.features.FeatureCache` then reads like any other. Ray Data restarts a dead actor and retries
its batch; a batch is only ever written whole.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..backbones import BackboneSpec
from ..datasets.types import Item
from ..features import FeatureCache, image_key, load_image_views, write_shard
from .cluster import actor_cpus, check_resources, require_ray

__all__ = ["BackboneRecipe", "ExtractRequest", "extract_features"]

log = logging.getLogger(__name__)


def BackboneRecipe(name: str, pretrained: str | None = None, checkpoint: str | None = None,
                   device: str = "cpu") -> BackboneSpec:
    """Deprecated: a backbone recipe is a :class:`~clip_adapter.backbones.BackboneSpec`
    (``BackboneSpec.of(name, pretrained, checkpoint, device)``; ``.build()`` loads it seeded)."""
    warnings.warn("clip_adapter.distributed.BackboneRecipe is deprecated; use clip_adapter.backbones.BackboneSpec.of"
                  "(name, pretrained, checkpoint, device) (.build() loads it).", DeprecationWarning, stacklevel=2)
    return BackboneSpec.of(name, pretrained, checkpoint, device)


@dataclass(frozen=True)
class ExtractRequest:
    """Features wanted: ``items`` with the ``test`` transform, or the ``train`` transform's ``views``."""

    items: Sequence[Item | str]
    kind: str = "test"
    views: tuple[int, ...] = (0,)


def _decode(batch: dict[str, np.ndarray], transform: Any, views: list[int] | None) -> dict[str, np.ndarray]:
    pixels = [load_image_views(str(p), transform, views).numpy() for p in batch["path"]]
    return {"key": batch["key"], "pixels": np.stack(pixels)}


class _Encoder:
    """A Ray Data actor: encodes decoded batches and writes each as one shard per view folder."""

    def __init__(self, recipe: BackboneSpec, folders: list[str], metas: list[dict[str, str]], threads: int):
        if recipe.device == "cpu" and threads:
            torch.set_num_threads(threads)  # several CPU actors share the cores
        self.backbone = recipe.build()
        self.folders, self.metas = [Path(f) for f in folders], metas

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"]))
        per_item = pixels.shape[1] if pixels.ndim == 5 else 1
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        feats = self.backbone.encode_images(flat).float().cpu().reshape(pixels.shape[0], per_item, -1)
        keys = [str(k) for k in batch["key"]]
        for j, (folder, meta) in enumerate(zip(self.folders, self.metas)):
            write_shard(folder, keys, feats[:, j].contiguous(), meta)
        return {"n": np.array([len(keys) * per_item])}  # encodings, as FeatureCache.encoded_images counts them


def _groups(cache: FeatureCache, requests: Sequence[ExtractRequest]) -> list[tuple[str, tuple[int, ...], list]]:
    """(kind, views, missing items) per transform: the union of the requests, each image once."""
    merged: dict[tuple[str, tuple[int, ...]], list] = {}
    for r in requests:
        key = ("test", (0,)) if r.kind == "test" else ("train", tuple(r.views))
        merged.setdefault(key, []).extend(r.items)
    return [(kind, views, cache.missing(items, kind, views)) for (kind, views), items in merged.items()]


def extract_features(recipe: BackboneSpec, cache: FeatureCache, requests: Sequence[ExtractRequest], *,
                     encoder_actors: int | None = None, gpus_per_actor: float | None = None,
                     batch_size: int | None = None) -> dict[str, Any]:
    """Encode every requested image the cache lacks, on the current Ray cluster (:func:`connect` first).

    Args:
        recipe: how actors build the backbone (:meth:`BackboneSpec.build`; the driver's ``cache.backbone`` must be
            the same model).
        encoder_actors: the pool size (default: one per GPU when the backbone runs on CUDA, else 1).
        gpus_per_actor: GPUs per encoder actor (default 1 on CUDA, 0 on the CPU).
        batch_size: images per encoder call (default: the cache's).

    Returns ``{"encoded": encoder passes (images x views, as FeatureCache counts them), "seconds": wall time,
    "actors": pool size}``.
    """
    ray = require_ray()
    cuda = recipe.device.startswith("cuda")
    gpus = (1.0 if cuda else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
    total = check_resources(ray, gpus=gpus, what="each encoder actor")
    n_actors = encoder_actors or (max(1, int(total["GPU"] // gpus)) if gpus else 1)
    bs = batch_size or cache.batch_size
    t0, encoded = time.perf_counter(), 0
    for kind, views, todo in _groups(cache, requests):
        if not todo:
            continue
        view_list = list(views) if kind == "train" else None
        folders = [str(cache.folder(kind, v)) for v in views]
        metas = [cache.meta(kind, v) for v in views]
        for f in folders:
            Path(f).mkdir(parents=True, exist_ok=True)
        transform = cache.backbone.train_transform if kind == "train" else cache.backbone.test_transform
        per_batch = max(1, bs // len(views)) if kind == "train" else bs
        ds = ray.data.from_items([{"path": it.path if isinstance(it, Item) else str(it), "key": image_key(it)}
                                  for it in todo])
        ds = ds.map_batches(_decode, fn_kwargs={"transform": transform, "views": view_list}, batch_size=per_batch,
                            num_cpus=0.25)
        threads = max(1, int(total["CPU"] // max(n_actors, 1)) - 1) if not gpus else 0
        ds = ds.map_batches(_Encoder, fn_constructor_kwargs={"recipe": recipe, "folders": folders, "metas": metas,
                                                             "threads": threads},
                            batch_size=per_batch, concurrency=n_actors, num_gpus=gpus,
                            num_cpus=actor_cpus(total["CPU"], n_actors, gpus))
        encoded += int(sum(int(b["n"].sum()) for b in ds.iter_batches(batch_size=None)))
        log.info("Ray extraction: %d images (%s, views %s) with %d encoder actor(s)", len(todo), kind,
                 list(views) if kind == "train" else "-", n_actors)
    return {"encoded": encoded, "seconds": time.perf_counter() - t0, "actors": n_actors}
