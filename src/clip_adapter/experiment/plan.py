"""The plan of an experiment: every (dataset, method line, shots, seed) run and its ablation runs, with the result
file each one writes. Planning reads nothing but the config, the dataset names and (optionally) their identities.

What makes a stored result current is derived, never listed by hand: :meth:`PlannedRun.settings` is every field of
the run's :class:`~clip_adapter.protocol.RunSpec` (built in one place, :meth:`PlannedRun.spec`), so a field added to
``RunSpec`` later counts automatically, plus the backbone and the dataset's identity (:func:`dataset_identity`: its
source and a sha256 of each split's entries), so other data under the same label is not taken for the same.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..methods import get_method_class
from ..protocol import RunSpec
from ..results import result_path
from .schema import ExperimentConfig

__all__ = ["PlannedRun", "plan_runs", "dataset_labels", "dataset_identity", "NOT_IN_SETTINGS"]

# RunSpec fields that do not make a result what it is: the device only changes float rounding, and a result stays
# reusable on another machine. Every other field (present or added later) is part of PlannedRun.settings.
NOT_IN_SETTINGS = frozenset({"device"})


def _sha256(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def dataset_identity(dataset) -> dict[str, Any]:
    """What data a dataset label stands for: its source (split file, folder or CSV) and a sha256 of each split's
    sorted ``(path, label)`` entries, of its class names and of its templates (paths are the portable ``rel`` path
    when the image is inside the dataset folder, so a moved copy of the same folder hashes the same)."""
    sha = {s: _sha256(sorted([it.rel or it.path, it.label] for it in items)) for s, items in dataset.splits.items()}
    sha["classnames"] = _sha256(list(dataset.classnames))
    sha["templates"] = _sha256(list(dataset.templates))
    return {"source": str(dataset.source), "sha256": dict(sorted(sha.items()))}


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
    data: dict[str, Any] | None = None       # the dataset's identity (dataset_identity); None when not loaded

    def spec(self, config: ExperimentConfig) -> RunSpec:
        """The run as :func:`~clip_adapter.protocol.run_one` computes it: the one mapping from a planned run to a
        :class:`~clip_adapter.protocol.RunSpec` (local runs, Ray runs, extraction and settings all use it)."""
        return RunSpec(method=self.method, shots=self.shots, seed=self.seed, overrides=dict(self.overrides),
                       grid=None if self.grid is None else dict(self.grid),
                       n_views=config.n_views if self.shots else 0,  # views are only read by methods that train
                       repeat_shots=config.repeat_shots, variant=self.variant,
                       templates=list(config.templates) if config.templates else None,
                       device=config.backbone.device, hp_selection=config.hp_selection)

    def settings(self, config: ExperimentConfig) -> dict[str, Any]:
        """What makes this run what it is; a result file made with other settings is never silently reused.

        Every :class:`RunSpec` field but :data:`NOT_IN_SETTINGS`, the ablation, the backbone (all but its device)
        and the dataset's identity; the protocol and the transfer targets when they are not the default.
        """
        spec = self.spec(config)
        out: dict[str, Any] = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
                               if f.name not in NOT_IN_SETTINGS}
        # `source` is a loaded backbone's record for saved models, never set in an experiment's recipe: left out so
        # that results stored before the field existed stay current.
        backbone = {k: v for k, v in dataclasses.asdict(config.backbone).items()
                    if k not in NOT_IN_SETTINGS and k != "source"}
        out.update(ablation=self.ablation, backbone=backbone, dataset=self.data)
        if config.protocol != "few_shot":  # absent for the default, so few-shot results stay current
            out["protocol"] = config.protocol
        if self.transfer_source(config) is not None:
            out["transfer"] = [t.label or t.data for t in config.transfer.targets]
        return json.loads(json.dumps(out, sort_keys=True, default=str))

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


def plan_runs(config: ExperimentConfig, dataset_names: list[str],
              identities: list[dict[str, Any]] | None = None) -> list[PlannedRun]:
    """Every run of the experiment, in order: dataset, shots, seed, method line; then the ablations.

    Methods that do not train (zero-shot) are planned once per dataset, with shots 0 and the first seed.
    ``identities`` (one :func:`dataset_identity` per dataset) become part of each run's settings.
    """
    runs: list[PlannedRun] = []

    def add(di: int, variant: str, method: str, shots: int, seed: int, overrides, grid, ablation=None):
        path = str(result_path(config.output, dataset_names[di], variant, shots, seed))
        runs.append(PlannedRun(dataset_names[di], di, variant, method, shots, seed, dict(overrides),
                               None if grid is None else dict(grid), ablation, path,
                               None if identities is None else identities[di]))

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
