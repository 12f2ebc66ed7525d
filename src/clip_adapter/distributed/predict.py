"""Batch prediction over a large image collection on Ray Data, streamed into the same JSON-lines file (and records)
as :func:`clip_adapter.model.predict_to_jsonl`, and resumable the same way.

Ray Data reads and decodes the images in CPU tasks (an unreadable file becomes an error record, as in the
single-process path), a pool of predictor actors (one per GPU, or N CPU actors) each holding the saved model scores
them, and the driver appends each record to the file as it arrives, in input order. A rerun skips the images the
file already holds; an actor killed mid-batch is restarted by Ray and its batch retried, and since the driver only
writes finished batches, no prediction is lost or written twice.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..model import AdaptedClassifier
from ..model.images import open_rgb
from ..model.stream import open_append, pending, settings_of, write_records
from .cluster import actor_cpus, check_resources, require_ray

__all__ = ["predict_on_ray"]

log = logging.getLogger(__name__)


def _decode(batch: dict[str, np.ndarray], transform: Any, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    pixels, errors = [], []
    for p in batch["path"]:
        try:
            pixels.append(transform(open_rgb(str(p))).numpy())
            errors.append("")
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            pixels.append(np.zeros(shape, dtype=np.float32))
            errors.append(str(e))
    return {"i": batch["i"], "path": batch["path"], "pixels": np.stack(pixels), "error": np.array(errors)}


class _Predictor:
    """A Ray Data actor holding the saved model; one JSON record per image."""

    def __init__(self, model_dir: str, device: str, checkpoint: str | None, top_k: int, threads: int,
                 backbone: str | None = None):
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        self.model = AdaptedClassifier.from_pretrained(model_dir, device=device, checkpoint=checkpoint,
                                                       backbone=backbone)
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = [j for j, err in enumerate(batch["error"]) if not err]
        records: list[dict[str, Any]] = [{} for _ in batch["path"]]
        if ok:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            probs = self.model.method.predict_proba(self.model.encode_batch(pixels))
            for j, rec in zip(ok, self.model.top_records(probs, self.top_k)):
                records[j] = {"path": str(batch["path"][j]), **rec}
        for j, err in enumerate(batch["error"]):
            if err:
                records[j] = {"path": str(batch["path"][j]), "error": str(err)}
        return {"i": batch["i"], "record": np.array([json.dumps(r) for r in records])}


def _probe(model_dir: str, checkpoint: str | None,
           backbone: str | None = None) -> tuple[AdaptedClassifier, tuple[int, ...]]:
    """The model (for its transform, fingerprint and classes) and the shape of one preprocessed image (for error
    placeholders)."""
    from PIL import Image
    model = AdaptedClassifier.from_pretrained(model_dir, device="cpu", checkpoint=checkpoint, backbone=backbone)
    return model, tuple(model.transform(Image.new("RGB", (32, 32))).shape)


def predict_on_ray(model_dir: str | os.PathLike, images: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                   top_k: int = 5, batch_size: int = 32, device: str = "cpu", checkpoint: str | None = None,
                   backbone: str | None = None, actors: int | None = None,
                   extra_records: Sequence[dict[str, Any]] = (), overwrite: bool = False) -> dict[str, int]:
    """Append one JSON line per image to ``out`` (skipping images already there), predicted on the Ray cluster.

    Records and resume rules are :func:`~clip_adapter.model.predict_to_jsonl`'s (same model and settings only,
    failures retried, ``overwrite`` starts over). ``backbone`` names a backbone to load instead of the saved recipe
    (``--backbone``; see :meth:`~clip_adapter.model.AdaptedClassifier.from_pretrained`). Returns counts: ``written``,
    ``errors``, ``skipped``.
    """
    ray = require_ray()
    gpus = 1.0 if str(device).startswith("cuda") else 0.0
    total = check_resources(ray, gpus=gpus, what="each predictor actor")
    n_actors = actors or (max(1, int(total["GPU"])) if gpus else 1)
    model, shape = _probe(str(model_dir), checkpoint, backbone)
    transform, model_id, settings = model.transform, model.fingerprint(), settings_of(model, top_k)
    todo, fresh, counts = pending(Path(out), images, extra_records, model_id=model_id, settings=settings,
                                  overwrite=overwrite)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # the single-process file order
    threads = 0 if gpus else max(1, int(total["CPU"] // n_actors) - 1)
    ds = ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(todo)]) if todo else None
    with open_append(Path(out)) as f:
        write_records(f, fresh, counts, model_id, settings)
        if ds is None:
            return counts
        ds = ds.map_batches(_decode, fn_kwargs={"transform": transform, "shape": shape}, batch_size=batch_size,
                            num_cpus=0.25)
        ds = ds.map_batches(_Predictor, fn_constructor_kwargs={"model_dir": str(model_dir), "device": device,
                                                               "checkpoint": checkpoint, "top_k": top_k,
                                                               "threads": threads, "backbone": backbone},
                            batch_size=batch_size, concurrency=n_actors, num_gpus=gpus,
                            num_cpus=actor_cpus(total["CPU"], n_actors, gpus))
        for batch in ds.iter_batches(batch_size=None):
            write_records(f, (json.loads(r) for r in batch["record"]), counts, model_id, settings)
    log.info("Ray prediction: %d images with %d predictor actor(s) -> %s", len(todo), n_actors, out)
    return counts
