"""The paper's protocol as one command: datasets x shots x seeds x methods from a YAML config, resumable.

    clip-adapter experiment configs/shared_lite.yaml          # or: python -m clip_adapter.grid CONFIG.yaml
    >>> from clip_adapter.grid import run_experiment
    >>> result = run_experiment("configs/shared_lite.yaml")     # a path, a dict or an ExperimentConfig

Config (YAML; relative paths are relative to the current directory)::

    name: shared_lite                  # default: the config file's stem
    datasets:                          # paths (CoOp folder, class folders, CSV) or built-in names
      - ../shared/datasets/dtd10
      - {data: dtd, root: ~/data, label: DTD}   # built-in name + its root; label = name used in results
    root: null                         # default root of built-in names ($CLIP_ADAPTER_DATA or ~/data)
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    methods:                           # name: {grid: {...searched on val}, overrides: {...fixed}}
      zero_shot: {}                    # methods that do not train run once per dataset (shots 0, first seed)
      linear_probe: {grid: {C: [0.1, 1, 10]}}
      clip_adapter: {grid: {alpha: [0.2, 0.4, 0.6, 0.8]}, overrides: {epochs: 200}}
      clip_adapter_both: {method: clip_adapter, overrides: {target: both}}   # a named variant
    ablation:                          # optional: fixed values of one parameter, TEST accuracy for analysis
      {method: clip_adapter, param: alpha, values: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], shots: [16]}
    backbone: {name: RN50, pretrained: openai, checkpoint: null, device: cpu}
    n_views: 10                        # cached augmented views per training image
    cache_dir: null                    # feature cache (default $CLIP_ADAPTER_CACHE/features)
    output: results/NAME

One run = one ``(dataset, method, shots, seed)``: :func:`clip_adapter.experiments.run_one` samples K shots,
chooses the hyper-parameters on the validation split only (``selection.select``) and scores the test split
once. Its record goes to ``<output>/<dataset>/<method>/shots<K>-seed<S>.json`` (atomic write) and one line to
``<output>/runs.jsonl``; then :mod:`clip_adapter.report` writes the tables and figures.

Resuming: a run whose result file exists and parses is skipped, so rerunning the same command after Ctrl-C or
``kill -9`` finishes the rest; features are cached per image, so nothing is re-encoded. Each run is claimed with
an ``fcntl.flock`` on ``<output>/.locks/<...>.lock`` (released by the kernel if the process dies), so two
processes sharing an output folder never compute or write the same run. ``runs.jsonl`` is rebuilt from the
result files at the start and end of every experiment, so it never holds duplicates.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import torch_threads

__all__ = ["ExperimentConfig", "DatasetEntry", "MethodEntry", "BackboneEntry", "AblationEntry", "PlannedRun",
           "ExperimentResult", "load_config", "parse_config", "plan_runs", "run_experiment", "claim_run",
           "read_result", "rebuild_runs_jsonl", "append_run", "add_subcommands", "main", "RUNS_FILE",
           "DEFAULT_SHOTS", "DEFAULT_SEEDS"]

log = logging.getLogger(__name__)

RUNS_FILE = "runs.jsonl"
LOCK_DIR = ".locks"
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)

_TOP_KEYS = ("name", "datasets", "root", "shots", "seeds", "methods", "ablation", "backbone", "n_views",
             "repeat_shots", "templates", "cache_dir", "output", "batch_size", "workers", "threads", "report")
_DATASET_KEYS = ("data", "root", "label")
_METHOD_KEYS = ("method", "grid", "overrides")
_BACKBONE_KEYS = ("name", "pretrained", "checkpoint", "device")
_ABLATION_KEYS = ("method", "param", "values", "shots", "seeds", "overrides", "grid", "label")


# -- config --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: a path (resolved) or a built-in name, its root, and the label used in results."""

    data: str
    root: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class MethodEntry:
    """A method line of the grid: ``label`` names it in results (default: the method's registry name)."""

    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)   # fixed config values
    grid: dict[str, list] | None = None                       # searched on val; None = the method's default grid


@dataclass(frozen=True)
class BackboneEntry:
    name: str = "RN50"
    pretrained: str | None = "openai"
    checkpoint: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class AblationEntry:
    """Fixed values of one config field (``alpha``; later ``layer``): each value is a run with that override.

    The result is TEST accuracy per value, an analysis figure; it is never used to choose the value.
    """

    method: str
    param: str
    values: tuple
    shots: tuple[int, ...] = (16,)
    seeds: tuple[int, ...] | None = None    # None = the experiment's seeds
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] | None = None     # other parameters still searched on val (None = method default)
    label: str | None = None                # result folder prefix (default "<method>-<param>")

    def variant(self, value: Any) -> str:
        return f"{self.label or f'{self.method}-{self.param}'}{_fmt_value(value)}"


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment; build it with :func:`load_config` (YAML) or :func:`parse_config` (dict)."""

    name: str
    datasets: tuple[DatasetEntry, ...]
    methods: tuple[MethodEntry, ...] = ()
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    ablations: tuple[AblationEntry, ...] = ()
    backbone: BackboneEntry = BackboneEntry()
    n_views: int = 10
    repeat_shots: bool = False
    templates: tuple[str, ...] | None = None
    cache_dir: str | None = None
    output: str = "results"
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None     # torch CPU threads for this experiment (None = torch's default)
    report: bool = True
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_raw(self) -> dict[str, Any]:
        """This config in the YAML schema (paths resolved): ``parse_config(cfg.to_raw())`` gives it back."""
        def clean(d: dict) -> dict:
            return {k: v for k, v in d.items() if v is not None}
        raw: dict[str, Any] = {
            "name": self.name,
            "datasets": [clean(dataclasses.asdict(d)) for d in self.datasets],
            "shots": list(self.shots), "seeds": list(self.seeds),
            "methods": {m.label: clean({"method": m.method, "overrides": dict(m.overrides), "grid": m.grid})
                        for m in self.methods},
            "ablation": [clean({"method": a.method, "param": a.param, "values": list(a.values), "shots": list(a.shots),
                                "seeds": list(a.seeds) if a.seeds else None, "overrides": dict(a.overrides),
                                "grid": a.grid, "label": a.label}) for a in self.ablations] or None,
            "backbone": dataclasses.asdict(self.backbone), "n_views": self.n_views,
            "repeat_shots": self.repeat_shots, "templates": list(self.templates) if self.templates else None,
            "cache_dir": self.cache_dir, "output": self.output, "batch_size": self.batch_size,
            "workers": self.workers, "threads": self.threads, "report": self.report}
        return clean(raw)


def _fmt_value(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def _near(key: str, valid: tuple[str, ...] | list[str]) -> str:
    near = difflib.get_close_matches(str(key), list(valid), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _check_keys(d: Mapping, valid: tuple[str, ...], where: str) -> None:
    for k in d:
        if k not in valid:
            raise ValueError(f"{where}: unknown key {k!r}{_near(k, valid)}. Valid keys: {', '.join(valid)}.")


def _int_list(v: Any, what: str, minimum: int | None = None) -> tuple[int, ...]:
    vals = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    ok = isinstance(vals, (list, tuple)) and vals and all(isinstance(x, int) and not isinstance(x, bool)
                                                          and (minimum is None or x >= minimum) for x in vals)
    if not ok:
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{what} must be a non-empty list of ints{bound}. Got {v!r} instead.")
    if len(set(vals)) != len(vals):
        raise ValueError(f"{what} lists a value twice. Got {v!r} instead.")
    return tuple(vals)


def _mapping(v: Any, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError(f"{what} must be a mapping (key: value). Got {v!r} instead.")
    return dict(v)


def _resolve_path(p: str, base: Path) -> str:
    path = Path(os.path.expanduser(str(p)))
    return str(path if path.is_absolute() else (base / path))


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or s.startswith((".", "~")) or s.lower().endswith(".csv")


def _method_class(name: str, where: str, check_registry: bool):
    from .methods import get_method_class
    try:
        return get_method_class(name)
    except ValueError as e:
        if check_registry:
            raise ValueError(f"{where}: {e}") from None
        return None


def _check_method_values(cls, overrides: dict, grid: dict | None, where: str) -> None:
    """Overrides and grid keys must be config fields (with a suggestion); every value must validate."""
    if cls is None:
        return
    fields = tuple(sorted(cls.config_cls.__dataclass_fields__))
    for key, what in [(k, "overrides") for k in overrides] + [(k, "grid") for k in (grid or {})]:
        if key not in fields:
            raise ValueError(f"{where}.{what}: {key!r} is not a {cls.config_cls.__name__} field{_near(key, fields)}. "
                             f"Valid: {', '.join(fields)}.")
    points = [dict(overrides)]
    for k, vals in (grid or {}).items():
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"{where}.grid.{k} must be a non-empty list of values. Got {vals!r} instead.")
        points += [{**overrides, k: v} for v in vals]
    for point in points:
        try:
            cls.config_cls(**point)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None


def parse_config(raw: Mapping[str, Any], source: str = "config", base_dir: str | Path | None = None,
                 check_registry: bool = True) -> ExperimentConfig:
    """Validate a config mapping; every error is one line naming the key, the value and what was expected.

    Args:
        raw: the parsed YAML (or an equivalent dict).
        source: how errors name the config (its file name).
        base_dir: what relative paths are relative to (default: the current directory).
        check_registry: also check that every method is registered (off: unknown methods are allowed, e.g. to
            validate a config whose methods live in another branch).
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: expected a mapping of settings at the top level. Got {type(raw).__name__}.")
    _check_keys(raw, _TOP_KEYS, source)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    name = str(raw.get("name") or Path(source).stem or "experiment")

    # datasets
    ds_raw = raw.get("datasets")
    if not isinstance(ds_raw, list) or not ds_raw:
        raise ValueError(f"{source}: 'datasets' must be a non-empty list of paths or built-in names. Got {ds_raw!r}.")
    default_root = raw.get("root")
    datasets = []
    for i, d in enumerate(ds_raw):
        where = f"{source}: datasets[{i}]"
        if isinstance(d, str):
            d = {"data": d}
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} must be a path, a built-in name or a mapping with 'data'. Got {d!r}.")
        _check_keys(d, _DATASET_KEYS, where)
        if not isinstance(d.get("data"), str) or not d["data"]:
            raise ValueError(f"{where}: 'data' (a path or a built-in name) is required. Got {d.get('data')!r}.")
        data = _resolve_path(d["data"], base) if _looks_like_path(d["data"]) else d["data"]
        root = d.get("root", default_root)
        label = d.get("label")
        if label is not None and (not isinstance(label, str) or not label or "/" in label):
            raise ValueError(f"{where}: 'label' must be a non-empty name without '/'. Got {label!r}.")
        datasets.append(DatasetEntry(data=data, root=_resolve_path(root, base) if root else None, label=label))

    shots = _int_list(raw.get("shots", list(DEFAULT_SHOTS)), f"{source}: 'shots'", minimum=1)
    seeds = _int_list(raw.get("seeds", list(DEFAULT_SEEDS)), f"{source}: 'seeds'")

    # methods
    m_raw = raw.get("methods")
    if isinstance(m_raw, list):
        if not all(isinstance(m, str) for m in m_raw):
            raise ValueError(f"{source}: 'methods' as a list must hold method names. Got {m_raw!r}.")
        m_raw = {m: {} for m in m_raw}
    m_raw = _mapping(m_raw, f"{source}: 'methods'")
    methods = []
    for label, spec in m_raw.items():
        where = f"{source}: methods.{label}"
        spec = _mapping(spec, where)
        _check_keys(spec, _METHOD_KEYS, where)
        method = str(spec.get("method", label)).replace("-", "_").lower()
        cls = _method_class(method, where, check_registry)
        overrides = _mapping(spec.get("overrides"), f"{where}.overrides")
        grid = spec.get("grid")
        grid = None if grid is None else {k: list(v) if isinstance(v, (list, tuple)) else v
                                          for k, v in _mapping(grid, f"{where}.grid").items()}
        _check_method_values(cls, overrides, grid, where)
        if not isinstance(label, str) or not label or "/" in label:
            raise ValueError(f"{where}: a method label must be a non-empty name without '/'.")
        methods.append(MethodEntry(label=label, method=cls.name if cls else method, overrides=overrides, grid=grid))

    # ablations
    a_raw = raw.get("ablation")
    a_list = [] if a_raw is None else a_raw if isinstance(a_raw, list) else [a_raw]
    ablations = []
    for i, a in enumerate(a_list):
        where = f"{source}: ablation" + (f"[{i}]" if isinstance(a_raw, list) else "")
        a = _mapping(a, where)
        _check_keys(a, _ABLATION_KEYS, where)
        for req in ("method", "param", "values"):
            if req not in a:
                raise ValueError(f"{where}: {req!r} is required (keys: method, param, values[, shots, seeds, "
                                 f"overrides, grid, label]).")
        method = str(a["method"]).replace("-", "_").lower()
        cls = _method_class(method, where, check_registry)
        values = a["values"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: 'values' must be a non-empty list. Got {values!r} instead.")
        overrides = _mapping(a.get("overrides"), f"{where}.overrides")
        grid = a.get("grid")
        grid = None if grid is None else _mapping(grid, f"{where}.grid")
        param = str(a["param"])
        if cls is not None:
            fields = tuple(sorted(cls.config_cls.__dataclass_fields__))
            if param not in fields:
                raise ValueError(f"{where}: 'param' {param!r} is not a {cls.config_cls.__name__} field"
                                 f"{_near(param, fields)}. Valid: {', '.join(fields)}.")
            for v in values:
                _check_method_values(cls, {**overrides, param: v}, grid, where)
            if not cls.trains:
                raise ValueError(f"{where}: method {method!r} does not train; an ablation needs a trained method.")
        ab_shots = _int_list(a.get("shots", [16]), f"{where}.shots", minimum=1)
        ab_seeds = _int_list(a["seeds"], f"{where}.seeds") if a.get("seeds") is not None else None
        ablations.append(AblationEntry(method=cls.name if cls else method, param=param, values=tuple(values),
                                       shots=ab_shots, seeds=ab_seeds, overrides=overrides, grid=grid,
                                       label=a.get("label")))
    if not methods and not ablations:
        raise ValueError(f"{source}: nothing to run; give 'methods' (and/or an 'ablation').")

    # backbone
    b_raw = raw.get("backbone", {})
    if isinstance(b_raw, str):
        b_raw = {"name": b_raw}
    b_raw = _mapping(b_raw, f"{source}: 'backbone'")
    _check_keys(b_raw, _BACKBONE_KEYS, f"{source}: backbone")
    pretrained = b_raw.get("pretrained", "openai")
    pretrained = None if pretrained is None or str(pretrained).lower() in ("none", "") else str(pretrained)
    checkpoint = b_raw.get("checkpoint")
    name_b = str(b_raw.get("name", "RN50"))
    if name_b.endswith(".json"):
        name_b = _resolve_path(name_b, base)
    backbone = BackboneEntry(name=name_b, pretrained=pretrained,
                             checkpoint=_resolve_path(checkpoint, base) if checkpoint else None,
                             device=str(b_raw.get("device", "cpu")))

    n_views = raw.get("n_views", 10)
    if not isinstance(n_views, int) or isinstance(n_views, bool) or n_views < 0:
        raise ValueError(f"{source}: 'n_views' must be an int >= 0. Got {n_views!r} instead.")
    batch_size = raw.get("batch_size", 32)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{source}: 'batch_size' must be an int >= 1. Got {batch_size!r} instead.")
    workers = raw.get("workers")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ValueError(f"{source}: 'workers' must be an int >= 0 or null. Got {workers!r} instead.")
    threads = raw.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"{source}: 'threads' must be an int >= 1 or null. Got {threads!r} instead.")
    for key in ("repeat_shots", "report"):
        if key in raw and not isinstance(raw[key], bool):
            raise ValueError(f"{source}: {key!r} must be true or false. Got {raw[key]!r} instead.")
    templates = raw.get("templates")
    if templates is not None:
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, list) or not templates or any(
                not isinstance(t, str) or t.count("{}") != 1 for t in templates):
            raise ValueError(f"{source}: 'templates' must be a list of strings each containing '{{}}' once. "
                             f"Got {templates!r} instead.")
        templates = tuple(templates)
    for key in ("cache_dir", "output", "name"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ValueError(f"{source}: {key!r} must be a string. Got {raw[key]!r} instead.")
    cache_dir = _resolve_path(raw["cache_dir"], base) if raw.get("cache_dir") else None
    output = _resolve_path(raw.get("output") or f"results/{name}", base)
    return ExperimentConfig(name=name, datasets=tuple(datasets), methods=tuple(methods), shots=shots, seeds=seeds,
                            ablations=tuple(ablations), backbone=backbone, n_views=n_views,
                            repeat_shots=bool(raw.get("repeat_shots", False)), templates=templates,
                            cache_dir=cache_dir, output=output, batch_size=batch_size, workers=workers,
                            threads=threads, report=bool(raw.get("report", True)), source=source)


def load_config(path: str | Path, base_dir: str | Path | None = None, check_registry: bool = True,
                **overrides: Any) -> ExperimentConfig:
    """Read and validate a YAML experiment config; ``overrides`` replace top-level keys (e.g. ``output=...``)."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Experiment config {path} not found.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}:{at} is not valid YAML ({getattr(e, 'problem', None) or e}).") from None
    if raw is None:
        raise ValueError(f"{path} is empty; expected datasets, methods, ...")
    if isinstance(raw, Mapping):
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        raw.setdefault("name", path.stem)
    return parse_config(raw, source=str(path), base_dir=base_dir, check_registry=check_registry)


# -- plan ----------------------------------------------------------------------------------------------------
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
        return json.loads(json.dumps({
            "method": self.method, "variant": self.variant, "shots": self.shots, "seed": self.seed,
            "overrides": self.overrides, "grid": self.grid, "ablation": self.ablation,
            "n_views": config.n_views if self.shots else 0, "repeat_shots": config.repeat_shots,
            "templates": list(config.templates) if config.templates else None,
            "backbone": {"name": b.name, "pretrained": b.pretrained, "checkpoint": b.checkpoint},
        }, sort_keys=True, default=str))

    def describe(self) -> str:
        return f"{self.dataset}/{self.variant} shots={self.shots} seed={self.seed}"


def _dataset_labels(config: ExperimentConfig, datasets: list) -> list[str]:
    labels = [e.label or ds.name for e, ds in zip(config.datasets, datasets)]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"{config.source}: two datasets are both named {dupes[0]!r}; give one a 'label'.")
    return labels


def plan_runs(config: ExperimentConfig, dataset_names: list[str]) -> list[PlannedRun]:
    """Every run of the experiment, in order: dataset, shots, seed, method line; then the ablations.

    Methods that do not train (zero-shot) are planned once per dataset, with shots 0 and the first seed.
    """
    from .experiments import result_path
    from .methods import get_method_class

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


# -- result files, claims, runs.jsonl ------------------------------------------------------------------------
def read_result(path: str | Path) -> dict | None:
    """The record in a result file, or None when it is missing or does not parse (an unfinished run)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "accuracy" in rec else None


@contextlib.contextmanager
def claim_run(output: str | Path, result_file: str | Path, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the run's lock file; yields False when another process holds it.

    The kernel drops the lock when its holder exits, even by ``kill -9``, so a dead run never blocks a rerun.
    """
    rel = os.path.relpath(Path(result_file), Path(output))
    lock = Path(output) / LOCK_DIR / (rel.replace(os.sep, "__") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _runs_lock(output: Path) -> Iterator[None]:
    """Serialise appends to and rebuilds of ``runs.jsonl`` between processes."""
    (output / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    fd = os.open(output / LOCK_DIR / "runs.jsonl.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _run_key(rec: Mapping) -> tuple:
    return (rec.get("dataset"), rec.get("variant", rec.get("method")), int(rec.get("shots", -1)),
            int(rec.get("seed", -1)))


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by kill -9; the next rebuild drops it
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _jsonl_line(rec: Mapping) -> str:
    return json.dumps(rec, sort_keys=True, default=str) + "\n"


def append_run(output: str | Path, record: Mapping) -> bool:
    """Append ``record`` to ``<output>/runs.jsonl`` unless a line for the same run is there; True if appended."""
    output = Path(output)
    path = output / RUNS_FILE
    with _runs_lock(output):
        keys = {_run_key(r) for r in _read_jsonl(path)}
        if _run_key(record) in keys:
            return False
        with path.open("a") as f:
            f.write(_jsonl_line(record))
            f.flush()
            os.fsync(f.fileno())
    return True


def find_result_files(output: str | Path) -> list[Path]:
    """Every ``<output>/<dataset>/<method>/shots<K>-seed<S>.json`` (hidden folders skipped)."""
    output = Path(output)
    return sorted(p for p in output.glob("*/*/shots*-seed*.json")
                  if not any(part.startswith(".") for part in p.relative_to(output).parts))


def rebuild_runs_jsonl(output: str | Path) -> int:
    """Rewrite ``runs.jsonl`` from the result files (one line per run, sorted, atomically); return the count."""
    from .io import atomic_path
    output = Path(output)
    with _runs_lock(output):
        records = {}
        for p in find_result_files(output):
            rec = read_result(p)
            if rec is not None:
                rec.setdefault("result_file", str(p))
                records[_run_key(rec)] = rec
        with atomic_path(output / RUNS_FILE) as tmp:
            tmp.write_text("".join(_jsonl_line(records[k]) for k in sorted(records, key=str)))
    return len(records)


# -- execution -----------------------------------------------------------------------------------------------
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
            from .cli import load_backbone_from_args
            b = self.config.backbone
            import torch
            log.info("loading backbone %s (pretrained=%s)", b.name, b.pretrained)
            # Seeded, so that a random-init backbone (id ".../random-init", tests) is the same model in every
            # process, as its feature-cache address assumes; pretrained weights are unaffected.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self._backbone = load_backbone_from_args(argparse.Namespace(
                    backbone=b.name, pretrained=b.pretrained or "none", checkpoint=b.checkpoint, device=b.device))
        return self._backbone

    @property
    def cache(self):
        if self._cache is None:
            from .features import FeatureCache
            self._cache = FeatureCache(self.backbone, root=self.config.cache_dir, batch_size=self.config.batch_size,
                                       num_workers=self.config.workers, progress=self.progress)
        return self._cache

    @property
    def encoded_images(self) -> int:
        return self._cache.encoded_images if self._cache is not None else 0

    def text(self, di: int):
        if di not in self._text:
            from .prompts import encode_class_texts
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
    return rec


def _execute(run: PlannedRun, ctx: _Context) -> dict:
    from .experiments import RunSpec, run_one
    from .io import write_json
    from .methods import get_method_class

    config = ctx.config
    overrides = dict(run.overrides)
    if "device" in get_method_class(run.method).config_cls.__dataclass_fields__:
        overrides.setdefault("device", config.backbone.device)
    dataset = ctx.datasets[run.dataset_index]
    spec = RunSpec(method=run.method, shots=run.shots, seed=run.seed, overrides=overrides, grid=run.grid,
                   n_views=config.n_views, repeat_shots=config.repeat_shots,
                   templates=list(config.templates) if config.templates else None)
    record = run_one(dataset, ctx.backbone, spec, cache=ctx.cache, output=None, text=ctx.text(run.dataset_index))
    record.update({"dataset": run.dataset, "variant": run.variant, "experiment": config.name,
                   "run_settings": run.settings(config), "result_file": run.path})
    if run.ablation is not None:
        record["ablation"] = dict(run.ablation)
    write_json(run.path, record)
    append_run(config.output, record)
    return record


def _load_datasets(config: ExperimentConfig) -> list:
    from .data import load_dataset
    out = []
    for entry in config.datasets:
        ds = load_dataset(entry.data, root=entry.root)
        if entry.label:
            ds.name = entry.label
        out.append(ds)
    return out


def run_experiment(config: ExperimentConfig | Mapping | str | Path, *, progress: bool = True,
                   report: bool | None = None, dry_run: bool = False, **overrides: Any) -> ExperimentResult:
    """Run every unfinished run of ``config`` (a YAML path, a dict or an :class:`ExperimentConfig`).

    Finished runs (result file present and parseable) are skipped, so a rerun resumes an interrupted
    experiment. ``overrides`` replace top-level config keys (``output=``, ``cache_dir=``...) when ``config`` is a
    path or a dict. Returns an :class:`ExperimentResult`; tables and figures are written when ``report``
    (default: the config's ``report``, true). Raises ``RuntimeError`` after the others finish if a run failed.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config, **overrides)
    elif isinstance(config, Mapping):
        config = parse_config({**config, **{k: v for k, v in overrides.items() if v is not None}})
    elif overrides:
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    t0 = time.perf_counter()
    datasets = _load_datasets(config)
    names = _dataset_labels(config, datasets)
    runs = plan_runs(config, names)
    output = Path(config.output)
    records: dict[str, dict] = {}
    for run in runs:
        rec = _finished(run, config)
        if rec is not None:
            records[run.path] = rec
    skipped = len(records)
    todo = [r for r in runs if r.path not in records]
    log.info("%s: %d runs, %d done, %d to go -> %s", config.name, len(runs), skipped, len(todo), output)
    if dry_run:
        return ExperimentResult(config, [records[r.path] for r in runs if r.path in records], 0, skipped,
                                time.perf_counter() - t0, 0, planned=len(runs))
    output.mkdir(parents=True, exist_ok=True)
    _write_config_copy(config)
    rebuild_runs_jsonl(output)

    ctx = _Context(config, datasets, progress)
    with torch_threads(config.threads):
        result = _run_all(config, runs, records, ctx, progress, t0, skipped)
    if config.report if report is None else report:
        from .report import build_report
        result.report = build_report(output)
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} of {len(runs)} runs failed (first: {result.failed[0][0]}: "
                           f"{result.failed[0][1]}); the others are saved in {output}; rerun the same command to "
                           f"retry the failed ones.")
    return result


def _run_all(config: ExperimentConfig, runs: list[PlannedRun], records: dict[str, dict], ctx: _Context,
             progress: bool, t0: float, skipped: int) -> ExperimentResult:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    output = Path(config.output)
    todo = [r for r in runs if r.path not in records]
    ran = 0
    busy: list[PlannedRun] = []
    failed: list[tuple[str, str]] = []
    with logging_redirect_tqdm(), tqdm(total=len(runs), initial=skipped, unit="run", desc=config.name,
                                       disable=not progress, dynamic_ncols=True) as bar:
        def do(run: PlannedRun, wait: bool) -> bool:
            nonlocal ran
            with claim_run(output, run.path, wait=wait) as got:
                if not got:
                    return False
                rec = _finished(run, config)  # another process may have finished it meanwhile
                if rec is None:
                    bar.set_postfix_str(run.describe(), refresh=True)
                    try:
                        rec = _execute(run, ctx)
                    except Exception as e:  # one broken run must not stop the grid
                        failed.append((run.describe(), f"{type(e).__name__}: {e}"))
                        log.error("%s failed (%s: %s); continuing with the other runs", run.describe(),
                                  type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
                        bar.update(1)
                        return True
                    ran += 1
                    log.info("%s: accuracy %.4f (chosen on val: %s)", run.describe(), rec["accuracy"],
                             rec.get("chosen") or "-")
                records[run.path] = rec
                bar.update(1)
                return True

        for run in todo:
            if not do(run, wait=False):
                busy.append(run)  # another process holds it; come back after the rest
        for run in busy:
            log.info("waiting for another process to finish %s", run.describe())
            do(run, wait=True)
        bar.set_postfix_str(f"done; {ran} ran, {skipped} skipped", refresh=True)

    n = rebuild_runs_jsonl(output)
    log.info("%s: %d runs in %s", config.name, n, output / RUNS_FILE)
    return ExperimentResult(config, [records[r.path] for r in runs if r.path in records], ran, skipped,
                            time.perf_counter() - t0, ctx.encoded_images, failed=failed, planned=len(runs))


def _write_config_copy(config: ExperimentConfig) -> None:
    """The resolved config next to the results, runnable as is (each result file also keeps its own settings)."""
    import yaml

    from .io import atomic_path
    with atomic_path(Path(config.output) / "experiment.yaml") as tmp:
        tmp.write_text(f"# {config.name}: resolved from {config.source}; rerun with "
                       f"'clip-adapter experiment {Path(config.output) / 'experiment.yaml'}'\n" +
                       yaml.safe_dump(json.loads(json.dumps(config.to_raw(), default=list)), sort_keys=False))


# -- command line --------------------------------------------------------------------------------------------
def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG.yaml", help="experiment config (see configs/*.yaml).")
    p.add_argument("--output", default=None, help="results folder (default: the config's 'output').")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: the config's 'cache_dir').")
    p.add_argument("--device", default=None, help="torch device, overriding the config's backbone.device.")
    p.add_argument("--dry-run", action="store_true", help="validate the config and count runs done/left; run none.")
    p.add_argument("--no-report", action="store_true", help="skip the tables and figures at the end.")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars.")


def cmd_experiment(args) -> int:
    config = load_config(args.config, output=args.output, cache_dir=args.cache_dir)
    if args.device:
        config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, device=args.device))
    try:
        result = run_experiment(config, progress=not args.no_progress, report=False if args.no_report else None,
                                dry_run=args.dry_run)
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are kept in {config.output}. Rerun the same command to resume.",
              file=sys.stderr)
        return 130
    if args.dry_run:
        print(f"{config.name}: {result.planned} runs, {result.skipped} done, {result.planned - result.skipped} to go "
              f"-> {config.output}")
        return 0
    if result.report.get("markdown"):
        print(Path(result.report["markdown"]).read_text())
    print(f"{result.ran} runs ran, {result.skipped} were already done, {result.seconds:.0f} s; "
          f"results in {config.output}")
    return 0


def add_subcommands(sub) -> None:
    """The ``experiment`` command (cli.py discovers it through ``_optional_command_modules``)."""
    p = sub.add_parser("experiment", help="run a datasets x shots x seeds x methods grid from a YAML config.",
                       description="Run the few-shot protocol over every dataset, shot count, seed and method of "
                                   "a YAML config (hyper-parameters chosen on val), then write tables and figures. "
                                   "Rerunning the same command resumes: finished runs are skipped.")
    _add_experiment_args(p)
    p.set_defaults(func=cmd_experiment)


def main(argv: list[str] | None = None) -> int:
    """``python -m clip_adapter.grid CONFIG.yaml`` (same as ``clip-adapter experiment CONFIG.yaml``)."""
    parser = argparse.ArgumentParser(prog="python -m clip_adapter.grid", description=__doc__.splitlines()[0])
    _add_experiment_args(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return cmd_experiment(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        if args.verbose >= 2:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
