"""Hyper-parameter selection on the validation split — the only place a choice is made.

:func:`select` takes a train and a val :class:`FeatureSplit` and nothing else: no test data can reach it,
by construction (the experiment runner encodes the test split only after selection returns).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .config import MethodConfig
from .methods import FewShotMethod, get_method_class
from .prompts import ClassText

__all__ = ["FeatureSplit", "select", "Selection"]

log = logging.getLogger(__name__)


@dataclass
class FeatureSplit:
    """Cached features of one split: raw ``features`` ``(n, d)``, ``labels`` ``(n,)``, optional ``views``
    ``(V, n, d)`` (training augmentation)."""

    features: torch.Tensor
    labels: torch.Tensor
    views: torch.Tensor | None = None

    def __post_init__(self):
        if self.labels.shape != (self.features.shape[0],):
            raise ValueError(f"FeatureSplit: {self.features.shape[0]} features but labels of shape "
                             f"{tuple(self.labels.shape)}.")


@dataclass
class Selection:
    """Result of a search: the fitted best model, its config and every candidate's val accuracy."""

    model: FewShotMethod
    config: MethodConfig
    chosen: dict[str, Any]
    val_accuracy: float
    candidates: list[dict[str, Any]]
    seconds: float


def select(method: str, config: MethodConfig, grid: dict[str, list], train: FeatureSplit, val: FeatureSplit,
           text: ClassText, backbone=None, stack: bool | None = None) -> Selection:
    """Fit ``method`` for every point of ``grid`` (over ``config``) on ``train``; keep the best on ``val``.

    Ties go to the earlier grid point, so the result does not depend on anything but train and val.
    An empty grid fits ``config`` once. ``stack`` (None: the method decides) fits all points as one vectorised
    model where the method supports it (:meth:`FewShotMethod.fit_many`); the choice is the same either way.
    """
    cls = get_method_class(method)
    cls.config_cls.check_field_names(grid, what="grid key")
    for k, vals in grid.items():
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"The grid of {k!r} must be a non-empty list of values. Got {vals!r} instead.")
    keys = list(grid)
    points = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))] or [{}]
    if not cls.trains:
        points = [{}]
    if len(points) > 1 and not val.labels.numel():
        raise ValueError(f"Cannot choose {', '.join(keys)} of {method!r} on validation: there are no validation "
                         f"images. Fix the values instead (--set/--alpha, or overrides) or give the dataset a val "
                         f"split.")
    t0 = time.perf_counter()
    best: tuple[float, FewShotMethod, MethodConfig, dict] | None = None
    candidates = []
    configs = [dataclasses.replace(config, **point) for point in points]
    # One call for the whole grid: a trained method may fit every point at once (same result as one by one).
    models = cls.fit_many(configs, train.features, train.labels, text=text, views=train.views, backbone=backbone,
                           stack=stack)
    for point, cfg, model in zip(points, configs, models):
        acc = float((model.predict(val.features) == val.labels).float().mean()) if val.labels.numel() else float("nan")
        candidates.append({**point, "val_accuracy": None if math.isnan(acc) else acc})  # strict JSON has no NaN
        log.debug("%s %s: val accuracy %.4f", method, point, acc)
        if best is None or acc > best[0]:
            best = (acc, model, cfg, point)
    assert best is not None
    return Selection(model=best[1], config=best[2], chosen=best[3], val_accuracy=best[0], candidates=candidates,
                     seconds=time.perf_counter() - t0)
