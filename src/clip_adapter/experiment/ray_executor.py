"""An experiment's runs on a Ray cluster: features extracted once per dataset, then the runs as tasks of a pool of
run actors, each with the run's resources (a GPU when the backbone runs on CUDA).

1. Extraction: the driver lists every image the runs will read (few-shot train sets with their augmented views,
   val sets, test splits), and :func:`~clip_adapter.distributed.extract_features` encodes those the cache lacks on
   Ray Data, once, so no two workers encode the same image and the runs encode nothing.
2. Runs: each actor holds a :class:`~clip_adapter.experiment.local.RunContext` (the backbone and class texts,
   loaded once) and computes a run exactly as a plain process does (:func:`~clip_adapter.experiment.local.
   execute_run`: the same record, claimed with the same lock, written to the same result store), so a Ray run and a
   plain run of a config give the same records and ``report`` cannot tell them apart.
3. Faults: an actor whose process dies (``kill -9``, a lost node) is restarted by Ray and its run retried; a run
   whose record was already written is not computed again (the record file is checked under the run's lock), and
   ``runs.jsonl`` never holds a run twice.
"""
from __future__ import annotations

import logging

from ..distributed import (ExtractRequest, check_resources, check_shared_folder, connect,
                           extract_features)
from ..features import FeatureCache
from ..protocol import fewshot_items
from ..results import claim_run
from .local import RunContext, execute_run, finished
from .plan import PlannedRun
from .schema import ExperimentConfig

__all__ = ["run_on_ray", "extraction_requests"]

log = logging.getLogger(__name__)


class RunWorker:
    """A run actor: computes planned runs with its own context (wrapped by :func:`ray.remote` in :func:`run_on_ray`)."""

    def __init__(self, config: ExperimentConfig, datasets: list, threads: int | None):
        if threads:
            import torch
            torch.set_num_threads(threads)
        self.config, self.ctx = config, RunContext(config, datasets, progress=False)

    def run(self, run: PlannedRun) -> tuple[dict | None, str | None, int, bool]:
        """(record, error, images encoded, whether this call computed it); claimed as in a plain process."""
        before = self.ctx.encoded_images
        with claim_run(self.config.output, run.path, wait=True):
            rec = finished(run, self.config)  # computed before a restart, or by another process
            if rec is not None:
                return rec, None, 0, False
            try:
                return execute_run(run, self.ctx), None, self.ctx.encoded_images - before, True
            except Exception as e:  # noqa: BLE001 - one broken run must not stop the grid
                return None, f"{type(e).__name__}: {e}", self.ctx.encoded_images - before, False


def extraction_requests(config: ExperimentConfig, runs: list[PlannedRun], datasets: list) -> list[ExtractRequest]:
    """Every image the runs will read, grouped by transform (duplicates are merged by the extractor)."""
    from ..methods import get_method_class
    test, train, val = [], [], []
    for di in sorted({r.dataset_index for r in runs}):
        test.extend(datasets[di].split("test"))
    for r in runs:
        if not get_method_class(r.method).trains:
            continue
        tr, va = fewshot_items(datasets[r.dataset_index], r.spec(config))
        train.extend(tr)
        val.extend(va)
    requests = [ExtractRequest(test + train + val, "test")]
    if config.n_views > 0 and train:
        requests.append(ExtractRequest(train, "train", tuple(range(config.n_views))))
    return requests


def _extract(config: ExperimentConfig, runs: list[PlannedRun], datasets: list, ray) -> int:
    recipe = config.backbone
    cache = FeatureCache(recipe.build(device="cpu"), root=config.cache_dir, batch_size=config.batch_size,
                         progress=False)  # the driver only needs the cache's addresses, so its copy stays on the CPU
    check_shared_folder(ray, cache.root, "feature cache folder")
    stats = extract_features(recipe, cache, extraction_requests(config, runs, datasets),
                             encoder_actors=config.executor.ray.encoder_actors,
                             gpus_per_actor=config.executor.ray.gpus_per_run)
    log.info("%s: extracted %d images on Ray in %.1f s (%d actors)", config.name, stats["encoded"],
             stats["seconds"], stats["actors"])
    return stats["encoded"]


def run_on_ray(config: ExperimentConfig, runs: list[PlannedRun], records: dict[str, dict], datasets: list,
               progress: bool) -> tuple[int, list[tuple[str, str]], int]:
    """Run the unfinished ``runs`` on the cluster of ``config.executor.ray``; returns (runs computed, failures,
    images encoded); ``records`` gains every finished run."""
    todo = [r for r in runs if r.path not in records]
    if not todo:
        return 0, [], 0
    opts = config.executor.ray
    ray = connect(opts.address)
    gpus = opts.gpus_per_run if opts.gpus_per_run is not None else (1.0 if config.backbone.device.startswith("cuda")
                                                                    else 0.0)
    total = check_resources(ray, gpus=gpus, cpus=opts.cpus_per_run)
    check_shared_folder(ray, config.output, "results folder")
    encoded = _extract(config, todo, datasets, ray)
    slots = int(total["GPU"] // gpus) if gpus else int(total["CPU"] // opts.cpus_per_run)
    n_actors = max(1, min(len(todo), slots))
    actor_cls = ray.remote(num_cpus=opts.cpus_per_run, num_gpus=gpus, max_restarts=-1,
                           max_task_retries=-1)(RunWorker)
    config_ref, datasets_ref = ray.put(config), ray.put(datasets)  # shipped once, not once per actor
    threads = config.threads or (None if gpus else max(1, int(opts.cpus_per_run)))
    actors = [actor_cls.remote(config_ref, datasets_ref, threads) for _ in range(n_actors)]
    pool = ray.util.ActorPool(actors)
    ran, failed = 0, []
    for run, (rec, err, n, computed) in zip(todo, pool.map(lambda a, r: a.run.remote(r), todo)):
        encoded += n
        if err is not None:
            failed.append((run.describe(), err))
            log.error("%s failed (%s); continuing with the other runs", run.describe(), err)
            continue
        ran += computed
        records[run.path] = rec
        log.info("%s: accuracy %.4f (chosen on val: %s)", run.describe(), rec["accuracy"], rec.get("chosen") or "-")
    for a in actors:
        ray.kill(a)
    return ran, failed, encoded
