"""Run an experiment: every unfinished run of the plan, resumable, with other processes sharing the output folder.

One run = :func:`clip_adapter.protocol.run_one` (K shots, selection on val only, test scored once); its record goes
to ``<output>/<dataset>/<variant>/shots<K>-seed<S>.json`` (atomic write) and one line to ``<output>/runs.jsonl``;
then :mod:`clip_adapter.report` writes the tables and figures.

Resuming: a run whose result file exists and parses is skipped, so rerunning the same command after Ctrl-C or
``kill -9`` finishes the rest; features are cached per image, so nothing is re-encoded. Each run is claimed with a
lock on ``<output>/.locks/<...>.lock`` (:func:`clip_adapter.results.claim_run`; released if the process dies), so
processes sharing an output folder never compute or write the same run. ``runs.jsonl`` is rebuilt from the result
files at the start and end of every experiment, so it never holds duplicates.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..datasets import load_dataset
from ..fewshot import check_shots
from ..io import torch_threads, write_json, write_text
from ..report import build_report
from ..results import PLAN_FILE, RUNS_FILE, rebuild_runs_jsonl
from .local import RunContext, finished, run_local
from .plan import PlannedRun, dataset_identity, dataset_labels, plan_runs
from .schema import ExperimentConfig, load_config, parse_config
from .size import PlanSize, plan_size

__all__ = ["ExperimentResult", "run_experiment", "parse_shard"]

log = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` did: the records of every planned run, counts, time, report files."""

    config: ExperimentConfig
    records: list[dict]
    ran: int
    skipped: int
    seconds: float
    encoded_images: int
    report: dict[str, Any] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (run, error) of runs that raised
    planned: int = 0                                                # runs in the plan
    size: PlanSize | None = None                                    # runs, fits and images of the plan

    @property
    def output(self) -> Path:
        return Path(self.config.output)


def load_datasets(config: ExperimentConfig) -> list:
    """The config's datasets, each named by its label when it has one."""
    out = []
    for entry in config.datasets:
        ds = load_dataset(entry.data, root=entry.root, allow_outside_paths=entry.allow_outside_paths)
        if entry.label:
            ds.name = entry.label
        out.append(ds)
    return out


def resolve(config: ExperimentConfig | Mapping | str | Path, **overrides: Any) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML path, a dict or a config; ``overrides`` replace top-level keys."""
    if isinstance(config, (str, Path)):
        return load_config(config, **overrides)
    if isinstance(config, Mapping):
        return parse_config({**config, **{k: v for k, v in overrides.items() if v is not None}})
    if overrides:
        return config.replace(**{k: v for k, v in overrides.items() if v is not None})
    return config


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``: this process runs every N-th planned run, starting at the i-th."""
    if text is None or isinstance(text, tuple):
        shard = text
    else:
        i, sep, n = str(text).partition("/")
        shard = (int(i), int(n)) if sep and i.isdigit() and n.isdigit() else None
        if shard is None:
            raise ValueError(f"--shard {text!r} must look like i/N (e.g. 0/4 for the first of 4 jobs).")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"--shard {shard[0]}/{shard[1]}: expected 0 <= i < N.")
    return shard


def run_experiment(config: ExperimentConfig | Mapping | str | Path, *, progress: bool = True,
                   report: bool | None = None, dry_run: bool = False, shard: str | tuple[int, int] | None = None,
                   **overrides: Any) -> ExperimentResult:
    """Run every unfinished run of ``config`` (a YAML path, a dict or an :class:`ExperimentConfig`).

    Finished runs (result file present and parseable) are skipped, so a rerun resumes an interrupted
    experiment. ``overrides`` replace top-level config keys (``output=``, ``cache_dir=``...). With
    ``executor: {ray: ...}`` the runs go to a Ray cluster (:mod:`clip_adapter.experiment.ray_executor`); with
    ``shard="i/N"`` only every N-th planned run is this process's (for Slurm array jobs or torchrun; run
    ``clip-adapter report`` once all shards are done). Returns an :class:`ExperimentResult`; tables and figures are
    written when ``report`` (default: the config's ``report``, true, and never for a shard). Raises
    ``RuntimeError`` after the others finish if a run failed.
    """
    config = resolve(config, **overrides)
    shard = parse_shard(shard)
    t0 = time.perf_counter()
    datasets = load_datasets(config)
    runs = plan_runs(config, dataset_labels(config, datasets), [dataset_identity(d) for d in datasets])
    planned_all = runs
    if shard is not None:
        runs = runs[shard[0]::shard[1]]
    output = Path(config.output)
    check_datasets_have_shots(config, datasets, runs)
    warning = plan_size(runs, runs, datasets, config.n_views).warning()
    if warning:   # said before the result files of a huge plan are even looked at
        log.warning("%s: %s", config.name, warning)
    records = {r.path: rec for r in runs if (rec := finished(r, config)) is not None}
    skipped = len(records)
    size = plan_size(runs, [r for r in runs if r.path not in records], datasets, config.n_views)
    log.info("%s: %d runs, %d done, %d to go -> %s", config.name, len(runs), skipped, len(runs) - skipped, output)
    log.info("%s: plan: %s", config.name, size.line())
    if dry_run:
        return ExperimentResult(config, [records[r.path] for r in runs if r.path in records], 0, skipped,
                                time.perf_counter() - t0, 0, planned=len(runs), size=size)
    output.mkdir(parents=True, exist_ok=True)
    write_config_copy(config)
    write_plan(output, planned_all)
    rebuild_runs_jsonl(output)
    ran, failed, encoded = _execute(config, runs, records, datasets, progress, skipped)
    log.info("%s: %d runs in %s", config.name, rebuild_runs_jsonl(output), output / RUNS_FILE)
    result = ExperimentResult(config, [records[r.path] for r in runs if r.path in records], ran, skipped,
                              time.perf_counter() - t0, encoded, failed=failed, planned=len(runs), size=size)
    if (config.report if report is None else report) and shard is None:
        result.report = build_report(output)
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} of {len(runs)} runs failed (first: {result.failed[0][0]}: "
                           f"{result.failed[0][1]}); the others are saved in {output}; rerun the same command to "
                           f"retry the failed ones.")
    return result


def check_datasets_have_shots(config: ExperimentConfig, datasets: list, runs: list[PlannedRun]) -> None:
    """Before any run: every class of every dataset has the training images the largest shot count of its trained
    runs needs (one, with ``repeat_shots``); a one-line error naming the dataset and the classes otherwise, instead of
    a class silently missing from training or one failed run per (shots, seed)."""
    largest: dict[int, int] = {}
    for r in runs:
        if r.shots:
            largest[r.dataset_index] = max(largest.get(r.dataset_index, 0), r.shots)
    for di, k in sorted(largest.items()):
        ds = datasets[di]
        counts: dict[int, int] = {}
        for it in ds.split("train"):
            counts[it.label] = counts.get(it.label, 0) + 1
        check_shots(counts, k, ds.classnames, repeat=config.repeat_shots,
                    where=f"{config.source}: dataset {ds.name} ({ds.source})")


def _execute(config: ExperimentConfig, runs: list[PlannedRun], records: dict[str, dict], datasets: list,
             progress: bool, skipped: int) -> tuple[int, list[tuple[str, str]], int]:
    """(runs computed, failures, images encoded), here or on Ray."""
    if config.executor.ray is not None:
        from .ray_executor import run_on_ray  # Ray is an optional extra: imported only when asked for
        return run_on_ray(config, runs, records, datasets, progress)
    ctx = RunContext(config, datasets, progress)
    with torch_threads(config.threads):
        ran, failed = run_local(config, runs, records, ctx, progress, skipped)
    return ran, failed, ctx.encoded_images


def write_plan(output: Path, runs: list[PlannedRun]) -> Path:
    """Every planned run's result file (relative to ``output``), so that ``report`` can say which are missing."""
    paths = sorted(Path(r.path).relative_to(output).as_posix() for r in runs)
    return write_json(output / PLAN_FILE, {"planned": paths})


def write_config_copy(config: ExperimentConfig) -> Path:
    """The resolved config next to the results, runnable as is (each result file also keeps its own settings)."""
    path = Path(config.output) / "experiment.yaml"
    return write_text(path, f"# {config.name}: resolved from {config.source}; rerun with "
                            f"'clip-adapter experiment {path}'\n" +
                      yaml.safe_dump(json.loads(json.dumps(config.to_raw(), default=list)), sort_keys=False))
