"""Running planned runs in this process: the run context (backbone, cache, class texts, loaded once), one run
through :func:`~clip_adapter.protocol.run_one`, and the loop that claims runs so that processes sharing an output
folder never compute the same one."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from ..datasets import load_dataset
from ..features import FeatureCache
from ..generalisation import run_base_to_new, transfer_after
from ..io import progress_bar
from ..prompts import encode_class_texts
from ..methods import get_method_class
from ..protocol import input_source, run_grid, run_one, selection_data
from ..results import append_run, claim_run, read_result
from ..selection import select_many
from .plan import PlannedRun
from .schema import ExperimentConfig

__all__ = ["RunContext", "finished", "execute_run", "run_local", "seed_groups", "select_seed_batch"]

log = logging.getLogger(__name__)


class RunContext:
    """Loads the backbone, the feature cache and the class-text embeddings on first use only."""

    def __init__(self, config: ExperimentConfig, datasets: list, progress: bool):
        self.config, self.datasets, self.progress = config, datasets, progress
        self._backbone = self._cache = None
        self._text: dict[int, Any] = {}
        self._targets: list | None = None

    @property
    def backbone(self):
        if self._backbone is None:
            b = self.config.backbone
            log.info("loading backbone %s (pretrained=%s)", b.name, b.pretrained)
            self._backbone = b.build()  # seeded: a random init is the same model in every process
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

    @property
    def targets(self) -> list:
        """The transfer targets (loaded on first use), each named by its label when it has one."""
        if self._targets is None:
            self._targets = []
            for entry in self.config.transfer.targets:
                ds = load_dataset(entry.data, root=entry.root, allow_outside_paths=entry.allow_outside_paths)
                ds.name = entry.label or ds.name
                self._targets.append(ds)
        return self._targets

    def text(self, di: int):
        if di not in self._text:
            ds = self.datasets[di]
            self._text[di] = encode_class_texts(self.backbone, ds.classnames,
                                                list(self.config.templates or ds.templates))
        return self._text[di]


def _first_difference(want: Any, have: Any, at: str = "") -> tuple[str, Any, Any]:
    """The dotted key of the first leaf where two settings differ (``dataset.sha256.train``), and both values."""
    if isinstance(want, dict) and isinstance(have, dict):
        for k in sorted(set(want) | set(have), key=str):
            if want.get(k) != have.get(k):
                return _first_difference(want.get(k), have.get(k), f"{at}.{k}" if at else str(k))
    return at, want, have


def _check_settings(run: PlannedRun, rec: dict, config: ExperimentConfig) -> None:
    want = run.settings(config)
    have = rec.get("run_settings")
    if have is None or have == want:
        return
    diff, want_v, have_v = _first_difference(want, have)
    raise ValueError(f"Result {run.path} was made with other settings ({diff}: {have_v!r} there, "
                     f"{want_v!r} in {config.source}); use another output folder or delete that file.")


def finished(run: PlannedRun, config: ExperimentConfig) -> dict | None:
    rec = read_result(run.path)
    if rec is not None:
        _check_settings(run, rec, config)
        rec.setdefault("result_file", run.path)
    return rec


def execute_run(run: PlannedRun, ctx: RunContext, selected=None) -> dict:
    """Compute one planned run through :func:`~clip_adapter.protocol.run_one` and record it in ``runs.jsonl``
    (``selected``: its search, made already with other seeds' runs by :func:`select_seed_batch`)."""
    config = ctx.config
    spec = run.spec(config)
    extra: dict[str, Any] = {"variant": run.variant, "experiment": config.name, "run_settings": run.settings(config)}
    if run.ablation is not None:
        extra["ablation"] = dict(run.ablation)
    dataset = ctx.datasets[run.dataset_index]
    if config.protocol == "base_to_new":
        record = run_base_to_new(dataset, ctx.backbone, spec, cache=ctx.cache, output=config.output, extra=extra)
    else:
        after = transfer_after(dataset, ctx.targets, ctx.backbone, ctx.cache) \
            if run.transfer_source(config) is not None else None
        record = run_one(dataset, ctx.backbone, spec, cache=ctx.cache, output=config.output,
                         text=ctx.text(run.dataset_index), extra=extra, after=after, selected=selected)
    append_run(config.output, record)
    return record


def seed_groups(runs: list[PlannedRun], config: ExperimentConfig) -> list[list[PlannedRun]]:
    """``runs`` that differ only by seed, grouped (plan order kept), when they can be searched together
    (``batch_seeds``, the few-shot protocol, a method that stacks different data: ``stacks_data``)."""
    if not config.batch_seeds or config.protocol != "few_shot":
        return []
    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        if r.shots and get_method_class(r.method).stacks_data:
            key = json.dumps([r.dataset_index, r.variant, r.method, r.shots, r.overrides, r.grid, r.ablation],
                             sort_keys=True, default=str)
            groups.setdefault(key, []).append(r)
    return [g for g in groups.values() if len(g) > 1]


def select_seed_batch(runs: list[PlannedRun], ctx: RunContext) -> list[tuple]:
    """The searches of ``runs`` (one :func:`seed_groups` group) made at once
    (:func:`~clip_adapter.selection.select_many`): per run ``(selection, train items, val items)`` for
    :func:`execute_run`, each equal to what the run's own search gives."""
    specs = [r.spec(ctx.config) for r in runs]
    di = runs[0].dataset_index
    dataset, text = ctx.datasets[di], ctx.text(di)
    resolved = [run_grid(s) for s in specs]
    cls, grid = resolved[0][0], resolved[0][2]
    cache = input_source(cls, ctx.backbone, ctx.cache)
    data = [selection_data(dataset, s, cache, text) for s in specs]
    sels = select_many(specs[0].method, [c for _, c, _ in resolved], grid, [d[0] for d in data],
                       [d[1] for d in data], text, backbone=ctx.backbone)
    return [(sel, d[2], d[3]) for sel, d in zip(sels, data)]


class _Progress:
    """Claims, runs and counts planned runs for :func:`_run_all` (one per experiment)."""

    def __init__(self, config: ExperimentConfig, records: dict[str, dict], ctx: RunContext, bar, total: int):
        self.config, self.records, self.ctx, self.bar = config, records, ctx, bar
        self.ran, self.failed, self.total = 0, [], total

    def do(self, run: PlannedRun, wait: bool) -> bool:
        """Run ``run`` unless another process holds it (False) or finished it meanwhile; errors are collected."""
        with claim_run(self.config.output, run.path, wait=wait) as got:
            if not got:
                return False
            rec = finished(run, self.config)  # another process may have finished it meanwhile
            if rec is None:
                self.bar.set_postfix_str(run.describe(), refresh=True)
                self._finish(run, lambda: execute_run(run, self.ctx))
            else:
                self.records[run.path] = rec
                self.bar.update(1)
            return True

    def do_seeds(self, group: list[PlannedRun]) -> None:
        """Run a :func:`seed_groups` group with one search (:func:`select_seed_batch`): the runs no other process
        holds or finished; the rest (and every run, if the shared search fails) are left to :meth:`do`."""
        with contextlib.ExitStack() as stack:
            mine = []
            for run in group:
                if stack.enter_context(claim_run(self.config.output, run.path, wait=False)):
                    rec = finished(run, self.config)
                    if rec is None:
                        mine.append(run)
                    else:
                        self.records[run.path] = rec
                        self.bar.update(1)
            if len(mine) < 2:
                return
            self.bar.set_postfix_str(f"{mine[0].describe()} (+{len(mine) - 1} seeds)", refresh=True)
            try:
                selected = select_seed_batch(mine, self.ctx)
            except Exception as e:  # run them one by one: each error then names its run
                log.warning("searching %s with its other seeds failed (%s: %s); running them one by one",
                            mine[0].describe(), type(e).__name__, e)
                return
            for run, sel in zip(mine, selected):
                self._finish(run, lambda run=run, sel=sel: execute_run(run, self.ctx, selected=sel))

    def _finish(self, run: PlannedRun, compute) -> None:
        t0 = time.perf_counter()
        try:
            rec = compute()
        except Exception as e:  # one broken run must not stop the grid
            self.failed.append((run.describe(), f"{type(e).__name__}: {e}"))
            log.error("%s failed (%s: %s); continuing with the other runs", run.describe(),
                      type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
            self.bar.update(1)
            return
        self.ran += 1
        # One line per finished run, as it finishes (a log or a file shows the experiment moving).
        log.info("[%d/%d] %s: accuracy %.4f (chosen on val: %s), %.0f s", len(self.records) + 1, self.total,
                 run.describe(), rec["accuracy"], rec.get("chosen") or "-", time.perf_counter() - t0)
        self.records[run.path] = rec
        self.bar.update(1)


def run_local(config: ExperimentConfig, runs: list[PlannedRun], records: dict[str, dict], ctx: RunContext,
              progress: bool, skipped: int) -> tuple[int, list[tuple[str, str]]]:
    """Run the unfinished ``runs`` here; returns (runs computed, failures); ``records`` gains every finished one."""
    todo = [r for r in runs if r.path not in records]
    with logging_redirect_tqdm(), progress_bar(len(runs), config.name, "run", enabled=progress,
                                               initial=skipped) as bar:
        state = _Progress(config, records, ctx, bar, len(runs))
        for group in seed_groups(todo, config):
            state.do_seeds(group)
        todo = [r for r in todo if r.path not in records]
        busy = [run for run in todo if not state.do(run, wait=False)]  # held by another process: come back later
        for run in busy:
            log.info("waiting for another process to finish %s", run.describe())
            state.do(run, wait=True)
        bar.set_postfix_str(f"done; {state.ran} ran, {skipped} skipped", refresh=True)
    return state.ran, state.failed
