"""Hyper-parameter selection on the validation split — the only place a choice is made.

:func:`select` takes a train and a val :class:`FeatureSplit` and nothing else: no test data can reach it,
by construction (the experiment runner encodes the test split only after selection returns).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .config import HP_SELECTION, Constraint, Interval, MethodConfig
from .methods import FewShotMethod, get_method_class
from .prompts import ClassText

__all__ = ["FeatureSplit", "select", "select_many", "Selection", "grid_edges", "HP_SELECTION"]


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
    at_grid_edge: list[str] = dataclasses.field(default_factory=list)  # keys chosen at an end of their values


def grid_edges(grid: dict[str, list], chosen: dict[str, Any],
               limits: Mapping[str, Constraint] | None = None) -> list[str]:
    """The grid keys whose chosen value is at (or, after a refinement, beyond) the smallest or largest value of its
    grid (numbers, at least two distinct values): the optimum may lie outside the grid.

    ``limits`` (a config's ``all_constraints()``): a value at an included end of the key's own range is not an edge,
    since nothing lies beyond it (CLIP-Adapter's ``alpha`` = 1, all adapter and no original feature)."""
    out = []
    for k, vals in grid.items():
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        v = chosen.get(k)
        if len(set(nums)) >= 2 and isinstance(v, (int, float)) and not (min(nums) < v < max(nums)) \
                and not _at_range_end((limits or {}).get(k), v):
            out.append(k)
    return sorted(out)


def _at_range_end(limit: Constraint | None, v: float) -> bool:
    """Whether ``v`` is an included end of ``limit`` (an :class:`~clip_adapter.config.Interval`)."""
    if not isinstance(limit, Interval):
        return False
    lo_in, hi_in = limit.closed in ("both", "left"), limit.closed in ("both", "right")
    return (lo_in and limit.low is not None and v == limit.low) or (hi_in and limit.high is not None
                                                                   and v == limit.high)


def select(method: str, config: MethodConfig, grid: dict[str, list], train: FeatureSplit, val: FeatureSplit,
           text: ClassText, backbone=None, stack: bool | None = None) -> Selection:
    """Fit ``method`` for every point of ``grid`` (over ``config``) on ``train``; keep the best on ``val``.

    Ties go to the earlier grid point, so the result does not depend on anything but train and val.
    An empty grid fits ``config`` once. When the method refines (``refine_grid``), a second grid around the first
    choice is searched too and competes with it. A choice on the edge of the values searched is logged as a warning
    and listed in ``Selection.at_grid_edge``. The points of one pass are fitted in one call
    (:meth:`FewShotMethod.fit_many`: a trained method may fit them as one stacked model, the same models as one by
    one; ``stack=False`` forces one by one).
    """
    cls = get_method_class(method)
    keys, points = _grid_points(cls, grid)
    if not cls.trains:
        points = [{}]
    if len(points) > 1 and not val.labels.numel():
        raise ValueError(f"Cannot choose {', '.join(keys)} of {method!r} on validation: there are no validation "
                         f"images. Fix the values instead (--set/--alpha, or overrides) or give the dataset a val "
                         f"split.")
    t0 = time.perf_counter()
    best: tuple[float, FewShotMethod, MethodConfig, dict] | None = None
    candidates: list[dict[str, Any]] = []
    best = _search(method, config, points, train, val, text, backbone, candidates, best, stack)
    best, edges = _refine_and_check(method, config, grid, len(points), best, train, val, text, backbone, candidates,
                                    stack)
    return Selection(model=best[1], config=best[2], chosen=best[3], val_accuracy=best[0], candidates=candidates,
                     seconds=time.perf_counter() - t0, at_grid_edge=edges)


def _grid_points(cls: type[FewShotMethod], grid: dict[str, list]) -> tuple[list[str], list[dict[str, Any]]]:
    """The grid's keys (checked against the method's config) and its points, every combination of the values."""
    cls.config_cls.check_field_names(grid, what="grid key")
    for k, vals in grid.items():
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"The grid of {k!r} must be a non-empty list of values. Got {vals!r} instead.")
    keys = list(grid)
    return keys, [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))] or [{}]


def _refine_and_check(method: str, config: MethodConfig, grid: dict[str, list], n_points: int, best, train,
                      val, text: ClassText, backbone, candidates: list, stack: bool | None = None):
    """After the first pass: search the method's refinement around the choice (``refine_grid``), then name (and
    warn about) the keys chosen on the edge of their values. Returns the best and those keys."""
    if n_points <= 1:
        return best, []
    extra = get_method_class(method).refine_grid(grid, best[3])
    if extra:
        tried = [{k: c[k] for k in grid if k in c} for c in candidates]
        more = [{**best[3], **dict(zip(extra, vals))} for vals in itertools.product(*extra.values())]
        best = _search(method, config, [p for p in more if p not in tried], train, val, text, backbone,
                       candidates, best, stack)
    edges = grid_edges(grid, best[3], config.all_constraints())
    if edges:
        log.warning("%s: the chosen %s lies on the edge of the values searched on validation; the optimum may lie "
                    "outside the grid (widen it: --grid KEY=V1,V2,... on run, grid: in an experiment).", method,
                    ", ".join(f"{k}={best[3][k]}" for k in edges))
    return best, edges


def _search(method: str, config: MethodConfig, points: list[dict], train: FeatureSplit, val: FeatureSplit,
            text: ClassText, backbone, candidates: list, best, stack: bool | None = None):
    """Fit every point; append to ``candidates``; return the best so far (ties keep the earlier).

    Points that differ only in the method's ``logit_params`` share one fit: the fitted model is rescored with each
    point's config (the model kept for the best point gets a copy with that config, the same as fitting it)."""
    cls = get_method_class(method)
    configs, keys, to_fit = _fits(cls, config, points)
    # One call for every fit of this pass: a trained method may fit them all at once (same models as one by one).
    models = cls.fit_many([configs[i] for i in to_fit], train.features, train.labels, text=text, views=train.views,
                          backbone=backbone, stack=stack)
    return _score(method, points, configs, keys, {keys[i]: m for i, m in zip(to_fit, models)}, val, candidates, best)


def _fits(cls, config: MethodConfig, points: list[dict]) -> tuple[list[MethodConfig], list[str], list[int]]:
    """Each point's config, its fit key (points that differ only in ``logit_params`` share one), the points to fit."""
    rescore = cls.logit_params
    configs = [config.replace(**point) for point in points]
    keys = [repr(sorted((k, v) for k, v in p.items() if k not in rescore)) if rescore else str(i)
            for i, p in enumerate(points)]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}     # the first point of each fit
    return configs, keys, sorted(first.values())


def _score(method: str, points: list[dict], configs: list[MethodConfig], keys: list[str], fitted: dict,
           val: FeatureSplit, candidates: list, best):
    """Score every point's model on val; append to ``candidates``; return the best so far (ties keep the earlier)."""
    rescore = get_method_class(method).logit_params
    for point, cfg, key in zip(points, configs, keys):
        model = fitted[key]
        if rescore:
            model = copy.copy(model)  # shallow: shares the fitted tensors, carries this point's config
            model.config = cfg
        acc = float((model.predict(val.features) == val.labels).float().mean()) if val.labels.numel() else float("nan")
        candidates.append({**point, "val_accuracy": None if math.isnan(acc) else acc})  # strict JSON has no NaN
        log.debug("%s %s: val accuracy %.4f", method, point, acc)
        if best is None or acc > best[0]:
            best = (acc, model, cfg, point)
    assert best is not None
    return best


def select_many(method: str, configs: list[MethodConfig], grid: dict[str, list], trains: list[FeatureSplit],
                vals: list[FeatureSplit], text: ClassText, backbone=None) -> list[Selection]:
    """:func:`select` for several runs that differ only in their seed and data (an experiment's seeds): the first
    pass's grid points of every run are fitted in one call (:meth:`FewShotMethod.fit_many_data`: one stacked model
    where the method can), and each run then chooses on its own val exactly as :func:`select` does, so each
    Selection equals that run's :func:`select`. ``seconds`` is the run's share of the shared fit plus its own
    scoring (and refinement). Methods that cannot stack different data run :func:`select` per run."""
    cls = get_method_class(method)
    if not cls.stacks_data or not cls.trains or len(configs) < 2:
        return [select(method, c, grid, t, v, text, backbone=backbone) for c, t, v in zip(configs, trains, vals)]
    _, points = _grid_points(cls, grid)
    if len(points) > 1 and not all(v.labels.numel() for v in vals):
        return [select(method, c, grid, t, v, text, backbone=backbone) for c, t, v in zip(configs, trains, vals)]
    t0 = time.perf_counter()
    plans = [_fits(cls, c, points) for c in configs]
    jobs = [(r, i) for r, (_, _, to_fit) in enumerate(plans) for i in to_fit]
    models = cls.fit_many_data([plans[r][0][i] for r, i in jobs], [trains[r].features for r, _ in jobs],
                               [trains[r].labels for r, _ in jobs], text=text,
                               views=[trains[r].views for r, _ in jobs], backbone=backbone)
    shared = (time.perf_counter() - t0) / len(configs)
    out = []
    for r, (cfgs, fit_keys, _) in enumerate(plans):
        t1 = time.perf_counter()
        fitted = {fit_keys[i]: m for (rr, i), m in zip(jobs, models) if rr == r}
        candidates: list[dict[str, Any]] = []
        best = _score(method, points, cfgs, fit_keys, fitted, vals[r], candidates, None)
        best, edges = _refine_and_check(method, configs[r], grid, len(points), best, trains[r], vals[r], text,
                                        backbone, candidates)
        out.append(Selection(model=best[1], config=best[2], chosen=best[3], val_accuracy=best[0],
                             candidates=candidates, seconds=shared + time.perf_counter() - t1, at_grid_edge=edges))
    return out
