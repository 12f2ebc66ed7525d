"""How big a plan is before it starts: runs, fits (grid points searched on validation) and images to encode, with a
warning above :data:`LARGE_FITS` / :data:`LARGE_RUNS` so that a 100,000-point grid or a million-run plan never
starts without a word. ``experiment --dry-run`` prints it; ``experiment`` and ``run`` log it when they start."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..fewshot import val_shots
from ..methods import get_method_class

__all__ = ["PlanSize", "plan_size", "run_size", "images_to_encode", "searched_grid", "grid_points", "LARGE_FITS",
           "LARGE_RUNS"]

log = logging.getLogger(__name__)

LARGE_FITS = 10_000   # above this many fits (all runs together) the start warns
LARGE_RUNS = 10_000   # above this many runs to go the start warns


def searched_grid(method: str, overrides: Mapping[str, Any], grid: Mapping[str, list] | None) -> dict[str, list]:
    """The grid a run searches: ``grid`` (None: the method's default), minus the keys ``overrides`` fix (as
    :func:`clip_adapter.protocol.run_one` does)."""
    cls = get_method_class(method)
    full = cls.default_grid if grid is None else grid
    return {k: list(v) for k, v in full.items() if k not in overrides}


def grid_points(grid: Mapping[str, Sequence]) -> int:
    """Points of a full grid: the product of the value counts (1 for an empty grid: one fit)."""
    return math.prod(len(v) for v in grid.values()) if grid else 1


@dataclass(frozen=True)
class PlanSize:
    """Runs, fits and images of a plan (what is left to do, not what is done)."""

    runs: int            # runs in the plan
    to_go: int           # runs not done yet
    fits: int            # grid points fitted over the runs to go
    largest_grid: int    # points of the largest grid of one run
    images: int          # at most this many images to encode (fewer when the cache has them)
    views: int           # at most this many augmented training views to encode

    def line(self) -> str:
        views = f" (+ {self.views:,} augmented views)" if self.views else ""
        runs = f"{self.runs:,} run{'s' if self.runs != 1 else ''}"
        return (f"{runs} ({self.to_go:,} to go), {self.fits:,} fits (largest grid: "
                f"{self.largest_grid:,} points), at most {self.images:,} images to encode{views}")

    def warning(self) -> str | None:
        """A one-line warning when the plan is large, else None."""
        if self.fits <= LARGE_FITS and self.to_go <= LARGE_RUNS:
            return None
        what = f"{self.to_go:,} runs" if self.to_go > LARGE_RUNS else f"{self.fits:,} fits"
        return (f"this is a large plan ({what}; the largest grid has {self.largest_grid:,} points): it may take very "
                f"long; check the grid and shots/seeds lists (--dry-run shows the plan without running it).")


def images_to_encode(counts: Mapping[str, int], num_classes: int, shots: int, seeds: int,
                     n_views: int) -> tuple[int, int]:
    """(images, augmented views) a dataset's runs encode at most: the test split, plus (``shots`` > 0: trained
    methods) K train and min(K, 4) val images per class per seed, capped by the splits; ``counts`` are the split
    sizes."""
    train = min(counts.get("train", 0), num_classes * shots * seeds) if shots else 0
    val = min(counts.get("val", 0), num_classes * val_shots(shots) * seeds) if shots else 0
    return counts.get("test", 0) + train + val, train * n_views


def run_size(method: str, overrides: Mapping[str, Any], grid: Mapping[str, list] | None, shots: int,
             counts: Mapping[str, int], num_classes: int, n_views: int) -> PlanSize:
    """The size of one ``run`` (``counts``: the dataset's split sizes)."""
    points = grid_points(searched_grid(method, overrides, grid))
    k = shots if get_method_class(method).trains else 0
    images, views = images_to_encode(counts, num_classes, k, 1, n_views)
    return PlanSize(1, 1, points, points, images, views)


def plan_size(runs: Sequence, to_go: Sequence, datasets: Sequence, n_views: int) -> PlanSize:
    """The size of an experiment's plan: ``runs`` (:class:`~clip_adapter.experiment.plan.PlannedRun`), the ones
    ``to_go``, and the loaded ``datasets`` they index."""
    fits = largest = 0
    trained: dict[int, tuple[int, set[int]]] = {}   # dataset -> (largest K, seeds) of its trained runs to go
    points_of: dict[tuple, int] = {}                # grid points depend on the method, fixed keys and value counts
    for r in to_go:
        key = (r.method, tuple(sorted(r.overrides)),
               None if r.grid is None else tuple((k, len(v)) for k, v in r.grid.items()))
        if key not in points_of:
            points_of[key] = grid_points(searched_grid(r.method, r.overrides, r.grid))
        fits, largest = fits + points_of[key], max(largest, points_of[key])
        k, seeds = trained.setdefault(r.dataset_index, (0, set()))
        if r.shots:
            seeds.add(r.seed)
            trained[r.dataset_index] = (max(k, r.shots), seeds)
    images = views = 0
    for di, (k, seeds) in trained.items():
        ds = datasets[di]
        n, v = images_to_encode({s: len(x) for s, x in ds.splits.items()}, ds.num_classes, k, len(seeds), n_views)
        images, views = images + n, views + v
    return PlanSize(len(runs), len(to_go), fits, largest, images, views)
