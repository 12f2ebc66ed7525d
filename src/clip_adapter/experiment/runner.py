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

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.contrib.logging import logging_redirect_tqdm

from ..backbones import load_backbone
from ..datasets import load_dataset
from ..features import FeatureCache
from ..io import progress_bar, torch_threads, write_text
from ..prompts import encode_class_texts
from ..protocol import RunSpec, run_one
from ..report import build_report
from ..results import RUNS_FILE, append_run, claim_run, read_result, rebuild_runs_jsonl
from .plan import PlannedRun, dataset_labels, plan_runs
from .schema import ExperimentConfig, load_config, parse_config

__all__ = ["ExperimentResult", "run_experiment"]

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

    @property
    def output(self) -> Path:
        return Path(self.config.output)


class _Context:
    """Loads the backbone, the feature cache and the class-text embeddings on first use only."""

    def __init__(self, config: ExperimentConfig, datasets: list, progress: bool):
        self.config, self.datasets, self.progress = config, datasets, progress
        self._backbone = self._cache = None
        self._text: dict[int, Any] = {}

    @property
    def backbone(self):
        if self._backbone is None:
            b = self.config.backbone
            log.info("loading backbone %s (pretrained=%s)", b.name, b.pretrained)
            # Seeded, so that a random-init backbone (id ".../random-init", tests) is the same model in every
            # process, as its feature-cache address assumes; pretrained weights are unaffected.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self._backbone = load_backbone(b.name, pretrained=b.pretrained, checkpoint=b.checkpoint,
                                               device=b.device)
        return self._backbone

    @property
    def cache(self) -> FeatureCache:
        if self._cache is None:
            self._cache = FeatureCache(self.backbone, root=self.config.cache_dir, batch_size=self.config.batch_size,
                                       num_workers=self.config.workers, progress=self.progress)
        return self._cache

    @property
    def encoded_images(self) -> int:
        return self._cache.encoded_images if self._cache is not None else 0

    def text(self, di: int):
        if di not in self._text:
            ds = self.datasets[di]
            self._text[di] = encode_class_texts(self.backbone, ds.classnames,
                                                list(self.config.templates or ds.templates))
        return self._text[di]


def _check_settings(run: PlannedRun, rec: dict, config: ExperimentConfig) -> None:
    want = run.settings(config)
    have = rec.get("run_settings")
    if have is None or have == want:
        return
    diff = next(k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k))
    raise ValueError(f"Result {run.path} was made with other settings ({diff}: {have.get(diff)!r} there, "
                     f"{want.get(diff)!r} in {config.source}); use another output folder or delete that file.")


def _finished(run: PlannedRun, config: ExperimentConfig) -> dict | None:
    rec = read_result(run.path)
    if rec is not None:
        _check_settings(run, rec, config)
        rec.setdefault("result_file", run.path)
    return rec


def execute_run(run: PlannedRun, ctx: _Context) -> dict:
    """Compute one planned run through :func:`~clip_adapter.protocol.run_one` and record it in ``runs.jsonl``."""
    config = ctx.config
    spec = RunSpec(method=run.method, shots=run.shots, seed=run.seed, overrides=dict(run.overrides), grid=run.grid,
                   n_views=config.n_views, repeat_shots=config.repeat_shots, variant=run.variant,
                   templates=list(config.templates) if config.templates else None, device=config.backbone.device)
    extra: dict[str, Any] = {"variant": run.variant, "experiment": config.name, "run_settings": run.settings(config)}
    if run.ablation is not None:
        extra["ablation"] = dict(run.ablation)
    record = run_one(ctx.datasets[run.dataset_index], ctx.backbone, spec, cache=ctx.cache, output=config.output,
                     text=ctx.text(run.dataset_index), extra=extra)
    append_run(config.output, record)
    return record


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
        return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return config


def run_experiment(config: ExperimentConfig | Mapping | str | Path, *, progress: bool = True,
                   report: bool | None = None, dry_run: bool = False, **overrides: Any) -> ExperimentResult:
    """Run every unfinished run of ``config`` (a YAML path, a dict or an :class:`ExperimentConfig`).

    Finished runs (result file present and parseable) are skipped, so a rerun resumes an interrupted
    experiment. ``overrides`` replace top-level config keys (``output=``, ``cache_dir=``...). Returns an
    :class:`ExperimentResult`; tables and figures are written when ``report`` (default: the config's ``report``,
    true). Raises ``RuntimeError`` after the others finish if a run failed.
    """
    config = resolve(config, **overrides)
    t0 = time.perf_counter()
    datasets = load_datasets(config)
    runs = plan_runs(config, dataset_labels(config, datasets))
    output = Path(config.output)
    records = {r.path: rec for r in runs if (rec := _finished(r, config)) is not None}
    skipped = len(records)
    log.info("%s: %d runs, %d done, %d to go -> %s", config.name, len(runs), skipped, len(runs) - skipped, output)
    if dry_run:
        return ExperimentResult(config, [records[r.path] for r in runs if r.path in records], 0, skipped,
                                time.perf_counter() - t0, 0, planned=len(runs))
    output.mkdir(parents=True, exist_ok=True)
    write_config_copy(config)
    rebuild_runs_jsonl(output)
    ctx = _Context(config, datasets, progress)
    with torch_threads(config.threads):
        result = _run_all(config, runs, records, ctx, progress, t0, skipped)
    if config.report if report is None else report:
        result.report = build_report(output)
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} of {len(runs)} runs failed (first: {result.failed[0][0]}: "
                           f"{result.failed[0][1]}); the others are saved in {output}; rerun the same command to "
                           f"retry the failed ones.")
    return result


class _Progress:
    """Claims, runs and counts planned runs for :func:`_run_all` (one per experiment)."""

    def __init__(self, config: ExperimentConfig, records: dict[str, dict], ctx: _Context, bar):
        self.config, self.records, self.ctx, self.bar = config, records, ctx, bar
        self.ran, self.failed = 0, []

    def do(self, run: PlannedRun, wait: bool) -> bool:
        """Run ``run`` unless another process holds it (False) or finished it meanwhile; errors are collected."""
        with claim_run(self.config.output, run.path, wait=wait) as got:
            if not got:
                return False
            rec = _finished(run, self.config)  # another process may have finished it meanwhile
            if rec is None:
                self.bar.set_postfix_str(run.describe(), refresh=True)
                try:
                    rec = execute_run(run, self.ctx)
                except Exception as e:  # one broken run must not stop the grid
                    self.failed.append((run.describe(), f"{type(e).__name__}: {e}"))
                    log.error("%s failed (%s: %s); continuing with the other runs", run.describe(),
                              type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
                    self.bar.update(1)
                    return True
                self.ran += 1
                log.info("%s: accuracy %.4f (chosen on val: %s)", run.describe(), rec["accuracy"],
                         rec.get("chosen") or "-")
            self.records[run.path] = rec
            self.bar.update(1)
            return True


def _run_all(config: ExperimentConfig, runs: list[PlannedRun], records: dict[str, dict], ctx: _Context,
             progress: bool, t0: float, skipped: int) -> ExperimentResult:
    todo = [r for r in runs if r.path not in records]
    with logging_redirect_tqdm(), progress_bar(len(runs), config.name, "run", enabled=progress,
                                               initial=skipped) as bar:
        state = _Progress(config, records, ctx, bar)
        busy = [run for run in todo if not state.do(run, wait=False)]  # held by another process: come back later
        for run in busy:
            log.info("waiting for another process to finish %s", run.describe())
            state.do(run, wait=True)
        bar.set_postfix_str(f"done; {state.ran} ran, {skipped} skipped", refresh=True)
    n = rebuild_runs_jsonl(config.output)
    log.info("%s: %d runs in %s", config.name, n, Path(config.output) / RUNS_FILE)
    return ExperimentResult(config, [records[r.path] for r in runs if r.path in records], state.ran, skipped,
                            time.perf_counter() - t0, ctx.encoded_images, failed=state.failed, planned=len(runs))


def write_config_copy(config: ExperimentConfig) -> Path:
    """The resolved config next to the results, runnable as is (each result file also keeps its own settings)."""
    path = Path(config.output) / "experiment.yaml"
    return write_text(path, f"# {config.name}: resolved from {config.source}; rerun with "
                            f"'clip-adapter experiment {path}'\n" +
                      yaml.safe_dump(json.loads(json.dumps(config.to_raw(), default=list)), sort_keys=False))
