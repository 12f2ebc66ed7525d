"""The plan of an experiment: every (dataset, method line, shots, seed) run and its ablation runs, with the result
file each one writes. Planning reads nothing but the config and the dataset names."""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from ..methods import get_method_class
from ..results import result_path
from .schema import ExperimentConfig

__all__ = ["PlannedRun", "plan_runs", "dataset_labels"]


@dataclass(frozen=True)
class PlannedRun:
    """One (dataset, method line, shots, seed) of an experiment and where its result goes."""

    dataset: str                # the dataset's name in results (its label, else the loaded name)
    dataset_index: int          # position in ExperimentConfig.datasets
    variant: str                # the method line's label (folder name)
    method: str
    shots: int                  # 0 for methods that do not train
    seed: int
    overrides: dict[str, Any]
    grid: dict[str, list] | None
    ablation: dict[str, Any] | None = None   # {"param": ..., "value": ...} for ablation runs
    path: str = ""

    def settings(self, config: ExperimentConfig) -> dict[str, Any]:
        """What makes this run what it is; a result file made with other settings is never silently reused."""
        b = config.backbone
        protocol = {} if config.protocol == "few_shot" else {"protocol": config.protocol}  # older results stay valid
        if config.transfer is not None and self.dataset == self.transfer_source(config):
            protocol["transfer"] = [t.label or t.data for t in config.transfer.targets]
        return json.loads(json.dumps({**protocol,
            "method": self.method, "variant": self.variant, "shots": self.shots, "seed": self.seed,
            "overrides": self.overrides, "grid": self.grid, "ablation": self.ablation,
            "n_views": config.n_views if self.shots else 0, "repeat_shots": config.repeat_shots,
            "templates": list(config.templates) if config.templates else None,
            "backbone": {"name": b.name, "pretrained": b.pretrained, "checkpoint": b.checkpoint},
        }, sort_keys=True, default=str))

    def transfer_source(self, config: ExperimentConfig) -> str | None:
        """The name (in results) of the experiment's transfer source dataset, or None without ``transfer``."""
        if config.transfer is None:
            return None
        d = config.datasets[self.dataset_index]
        return self.dataset if config.transfer.source in (d.label, d.data, Path(d.data).name) else None

    def describe(self) -> str:
        return f"{self.dataset}/{self.variant} shots={self.shots} seed={self.seed}"


def dataset_labels(config: ExperimentConfig, datasets: list) -> list[str]:
    labels = [e.label or ds.name for e, ds in zip(config.datasets, datasets)]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"{config.source}: two datasets are both named {dupes[0]!r}; give one a 'label'.")
    return labels


def plan_runs(config: ExperimentConfig, dataset_names: list[str]) -> list[PlannedRun]:
    """Every run of the experiment, in order: dataset, shots, seed, method line; then the ablations.

    Methods that do not train (zero-shot) are planned once per dataset, with shots 0 and the first seed.
    """
    runs: list[PlannedRun] = []

    def add(di: int, variant: str, method: str, shots: int, seed: int, overrides, grid, ablation=None):
        path = str(result_path(config.output, dataset_names[di], variant, shots, seed))
        runs.append(PlannedRun(dataset_names[di], di, variant, method, shots, seed, dict(overrides),
                               None if grid is None else dict(grid), ablation, path))

    for di in range(len(dataset_names)):
        for m in config.methods:
            if not get_method_class(m.method).trains:
                add(di, m.label, m.method, 0, config.seeds[0], m.overrides, m.grid)
        for k in config.shots:
            for s in config.seeds:
                for m in config.methods:
                    if get_method_class(m.method).trains:
                        add(di, m.label, m.method, k, s, m.overrides, m.grid)
    for a in config.ablations:
        for di in range(len(dataset_names)):
            for k in a.shots:
                for s in a.seeds or config.seeds:
                    for v in a.values:
                        add(di, a.variant(v), a.method, k, s, {**a.overrides, a.param: v}, a.grid,
                            {"param": a.param, "value": v, "method": a.method})
    paths = [r.path for r in runs]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"{config.source}: two runs would write {dup}; give the method lines distinct labels.")
    return runs
