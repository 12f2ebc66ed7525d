"""Ablations of CLIP-Adapter: where the adapter sits (image / text / both) and after which ViT block.

**Placement** needs no new method: CLIP-Adapter's ``target`` and its two residual ratios are config fields, so a
placement is a :class:`~clip_adapter.protocol.RunSpec` with an override and a grid::

    RunSpec("clip_adapter", overrides={"target": "image"}, grid={"alpha": [0.2, 0.4, 0.6, 0.8]})
    RunSpec("clip_adapter", overrides={"target": "text"}, grid={"alpha_text": [0.2, 0.4, 0.6, 0.8]})
    RunSpec("clip_adapter", overrides={"target": "both"}, grid={"alpha": [...], "alpha_text": [...]})

(CLI: ``--method clip_adapter --set target=text``.) :func:`placement_specs` builds the three and
:func:`placement_table` runs them through :func:`~clip_adapter.protocol.run_one`.

**Insertion layer** uses the ``clip_adapter_layer`` method on activations cached after block ``k``
(:mod:`clip_adapter.layers`); :func:`layer_sweep` gives one record per layer, the last layer being plain
CLIP-Adapter on image features. Both produce their records through :func:`~clip_adapter.protocol.run_one`:
every choice is made on the validation split; test is read once per run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from .datasets.types import Dataset
from .layers import ActivationCache, num_blocks, resolve_layer
from .prompts import ClassText, encode_class_texts
from .protocol import RunSpec, run_one

__all__ = ["PLACEMENTS", "ALPHAS", "placement_specs", "placement_table", "layer_sweep"]

log = logging.getLogger(__name__)

PLACEMENTS = ("image", "text", "both")
ALPHAS = (0.2, 0.4, 0.6, 0.8)  # CLIP-Adapter's default alpha grid


def placement_specs(shots: int = 16, seed: int = 1, alphas: Sequence[float] = ALPHAS,
                    overrides: dict[str, Any] | None = None, **spec_kw) -> list[RunSpec]:
    """One CLIP-Adapter :class:`RunSpec` per placement, each searching its own residual ratio(s) on val."""
    a = list(alphas)
    grids = {"image": {"alpha": a}, "text": {"alpha_text": a}, "both": {"alpha": a, "alpha_text": a}}
    return [RunSpec("clip_adapter", shots=shots, seed=seed, overrides={**(overrides or {}), "target": t},
                    grid=grids[t], variant=f"clip_adapter-{t}", **spec_kw) for t in PLACEMENTS]


def placement_table(dataset: Dataset, backbone, shots: Sequence[int] = (16,), seeds: Sequence[int] = (1,),
                    alphas: Sequence[float] = ALPHAS, overrides: dict[str, Any] | None = None, cache=None,
                    output: str | Path | None = None, **spec_kw) -> list[dict]:
    """Run the three placements for every (shots, seed); records carry ``target``.

    With ``output``, each record is written to ``<output>/<dataset>/clip_adapter-<target>/shots<K>-seed<S>.json``.
    """
    rows = []
    for k in shots:
        for s in seeds:
            for spec in placement_specs(k, s, alphas, overrides, **spec_kw):
                target = spec.overrides["target"]
                rows.append(run_one(dataset, backbone, spec, cache=cache, output=output,
                                    extra={"target": target}))
    return rows


def layer_sweep(dataset: Dataset, backbone, layers: Sequence[int] | None = None, shots: int = 16, seed: int = 1, *,
                overrides: dict[str, Any] | None = None, grid: dict[str, list] | None = None, n_views: int = 0,
                templates: list[str] | None = None, text: ClassText | None = None,
                root: str | Path | None = None, batch_size: int = 32, num_workers: int | None = None,
                progress: bool = False, output: str | Path | None = None) -> list[dict]:
    """Accuracy vs insertion layer: fit ``clip_adapter_layer`` after each block in ``layers`` (default all).

    Args:
        dataset, backbone: the data and an open_clip ViT backbone.
        layers: insertion positions ``1..L`` (negative: from the end); ``L`` = feature-level CLIP-Adapter.
        shots, seed: K images per class from train (seeded), val subsampled to min(K, 4) per class.
        overrides: fixed :class:`~clip_adapter.methods.clip_adapter_layer.ClipAdapterLayerConfig` values (``epochs``...).
        grid: searched on val (default: the method's alpha grid).
        n_views: cached augmented views per training image; activations are large (ViT-B/16: 605 KB per image
            and view), so the default 0 trains on the test-transform activations.
        root: activation cache directory (default ``$CLIP_ADAPTER_CACHE/activations``); the test split is
            streamed through the encoder, never stored.
        output: write each record to ``<output>/<dataset>/clip_adapter_layer-layer<k>/shots<K>-seed<S>.json``.

    Returns one record per layer (the fields of every run, plus ``layer`` and ``num_blocks``), in layer order.
    """
    method = "clip_adapter_layer"
    overrides = dict(overrides or {})
    if "layer" in overrides:
        raise ValueError("layer_sweep sets 'layer' itself; pass the positions as layers=[...].")
    n_blocks = num_blocks(backbone)
    positions = [resolve_layer(k, n_blocks) for k in (layers if layers is not None else range(1, n_blocks + 1))]
    if text is None:
        text = encode_class_texts(backbone, dataset.classnames, templates or dataset.templates)
    rows = []
    for k in positions:
        spec = RunSpec(method, shots=shots, seed=seed, overrides={**overrides, "layer": k}, grid=grid,
                       n_views=n_views, templates=templates, variant=f"{method}-layer{k}")
        cache = ActivationCache(backbone, k, root=root, batch_size=batch_size, num_workers=num_workers,
                                progress=progress)
        rec = run_one(dataset, backbone, spec, cache=cache, output=output, text=text,
                      extra={"layer": k, "num_blocks": n_blocks})
        log.info("%s layer %d/%d: test accuracy %.4f (val %s, %s)", dataset.name, k, n_blocks, rec["accuracy"],
                 rec["val_accuracy"], rec["chosen"])
        rows.append(rec)
    return rows
