"""The experiment config: one table of keys drives validation, defaults, the resolved copy (``to_raw``) and the docs.

The table is the dataclasses below, each a :class:`~clip_adapter.config.Config`: each field's :func:`setting` says
its YAML key, what it accepts (a :mod:`clip_adapter.config` constraint), whether it is a path, and what it means.
Values are checked by the one ``Config.__post_init__``, from Python as from a file; reading a file only adds the
file's structure (unknown keys, where a value is, a short way of writing it: ``shots: 4``, a dataset as a bare
string; each ``parse`` converts, the entry's check judges) and says a failure in the file's terms
(``cfg.yaml: datasets[0]: 'label' must be ...``). Adding a config key is one field here (and its use in the
runner); ``docs/experiment-config.md`` is generated from it (:func:`reference_markdown`) and a test keeps the two
equal.

    clip-adapter experiment configs/reproduce/shared_lite.yaml
    >>> from clip_adapter import run_experiment
    >>> result = run_experiment("configs/reproduce/shared_lite.yaml")     # a path, a dict or an ExperimentConfig
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import (Bool, Config, IntList, Interval, NoneOr, Options, Predicate, SettingError, Text, brief,
                      check_keys, invalid_value, setting, settings_of, settings_table)
from ..backbones.base import BackboneSpec, normalise_pretrained
from ..backbones.encoder import DEFAULT_RUNTIME, ENCODER_KEYS, PRECISIONS, RUNTIMES
from ..methods import get_method_class
from ..selection import HP_SELECTION

__all__ = ["ExperimentConfig", "DatasetEntry", "MethodEntry", "BackboneKeys", "BackboneEntry", "AblationEntry",
           "ExecutorEntry", "RayEntry", "TransferEntry", "PROTOCOLS", "parse_config", "load_config", "read_yaml",
           "MAX_YAML_NODES",
           "reference_markdown", "setting", "DEFAULT_SHOTS", "DEFAULT_SEEDS"]

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
PROTOCOLS = ("few_shot", "base_to_new")


@dataclass(frozen=True)
class _Ctx:
    """What parsers need besides the value, fixed before any key is parsed: the config's name in errors, the folder
    paths are relative to, the top-level data root of built-in names (an explicit input of the datasets' parser),
    and whether method names must be registered."""

    source: str
    base: Path
    check_registry: bool
    root: str | None = None


def _resolve_path(p: str, base: Path) -> str:
    path = Path(os.path.expanduser(str(p)))
    return str(path if path.is_absolute() else (base / path))


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or s.startswith((".", "~")) or s.lower().endswith(".csv")


def _settings(cls) -> list:
    """The file keys of ``cls`` (its :func:`setting` fields; plain fields such as ``source`` are not keys)."""
    declared = {f.name for f in fields(cls) if f.metadata}
    return [x for x in settings_of(cls) if x.name in declared]


def _yaml_keys(cls) -> list[str]:
    return [x.key or x.name for x in _settings(cls)]


# -- reading an entry: the file's structure here, every value checked by the entry's own Config -------------------
def _fields(cls, raw: Mapping, where: str, ctx: _Ctx) -> dict[str, Any]:
    """Keyword arguments of ``cls`` from the file's ``raw`` mapping: unknown keys refused, structured values
    converted by their parser, paths resolved. Values are not checked here: :func:`_build` does, through the
    entry's own ``Config.__post_init__``."""
    check_keys(raw, _yaml_keys(cls), where)
    out: dict[str, Any] = {}
    for x in _settings(cls):
        name = x.key or x.name
        if name not in raw:
            continue
        value = raw[name]
        if x.parse is not None:
            value = x.parse(value, f"{where}.{name}" if where != ctx.source else f"{where}: {name!r}", ctx)
        if x.path and isinstance(value, str) and value.strip():   # anything else is left for the check to refuse
            value = _resolve_path(value, ctx.base)
        out[x.name] = value
    return out


@contextlib.contextmanager
def _as_file(cls, where: str, raw: Mapping):
    """A value of ``cls`` that fails its check, said in the file's terms: ``<where>: 'key' must be <what it
    accepts>. Got <the value as written> instead.``"""
    try:
        yield
    except SettingError as e:
        if e.owner is not cls:
            raise
        key = e.setting.key or e.setting.name
        raise invalid_value(key, raw.get(key, e.value), e.setting.accepts, where=where) from None


def _build(cls, kw: dict[str, Any], raw: Mapping, where: str, **fixed: Any):
    """``cls(**kw, **fixed)``, validated by its ``Config.__post_init__`` (errors in the file's terms); a required
    key the file left out is named first."""
    for x in _settings(cls):
        if x.required and x.name not in kw and x.name not in fixed:
            raise ValueError(f"{where}: {x.key or x.name!r} is required ({x.doc}). Keys: "
                             f"{', '.join(_yaml_keys(cls))}.")
    with _as_file(cls, where, raw):
        return cls(**kw, **fixed)


def _entry(cls, raw: Mapping, where: str, ctx: _Ctx, **fixed: Any):
    """One entry of the file (a dataset, a method, the backbone's keys, ...), read and checked."""
    return _build(cls, _fields(cls, raw, where, ctx), raw, where, **fixed)


def _mapping(v: Any, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError(f"{what} must be a mapping (key: value). Got {brief(v)} instead.")
    return dict(v)


# -- conversions of how a file may write a value (the entry's check then judges the result) ---------------------
def _int_tuple(v: Any, where: str, ctx: _Ctx) -> Any:
    """``4`` is ``(4,)``, a list a tuple; anything else is left for the check (an :class:`IntList`) to refuse."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,)
    return tuple(v) if isinstance(v, list) else v


def _tuple(v: Any, where: str, ctx: _Ctx) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _mapping_or_empty(v: Any, where: str, ctx: _Ctx) -> Any:
    """``null`` is ``{}``; a mapping a dict; anything else is left for the check to refuse."""
    return {} if v is None else dict(v) if isinstance(v, Mapping) else v


def _grid(v: Any, where: str, ctx: _Ctx) -> Any:
    """A grid's value lists as lists (YAML may give tuples through aliases); anything else is left for the check."""
    if not isinstance(v, Mapping):
        return v
    return {k: list(x) if isinstance(x, (list, tuple)) else x for k, x in v.items()}


def _templates(v: Any, where: str, ctx: _Ctx) -> Any:
    """One template may be written as a string."""
    return (v,) if isinstance(v, str) else _tuple(v, where, ctx)


def _data_location(v: Any, where: str, ctx: _Ctx) -> Any:
    """A dataset's ``data`` with its path resolved against the config's folder: an ``hf:`` save_to_disk folder (a
    hub name stays as written), or anything that looks like a path; a built-in name stays a name."""
    if not isinstance(v, str) or not v.strip():
        return v
    if v.startswith("hf:"):
        rest = v[3:]
        local = _resolve_path(rest, ctx.base)
        return "hf:" + local if rest.startswith((".", "/", "~")) or Path(local).is_dir() else v
    return _resolve_path(v, ctx.base) if _looks_like_path(v) else v


def _method_class(name: str, where: str, ctx: _Ctx):
    try:
        return get_method_class(name)
    except ValueError as e:
        if ctx.check_registry:
            raise ValueError(f"{where}: {e}") from None
        return None


def _check_method_values(cls, overrides: dict, grid: dict | None, where: str) -> None:
    """Overrides and grid keys must be config fields (with a suggestion); every value must validate."""
    if cls is None:
        return
    cls.config_cls.check_field_names(overrides, "key", f"{where}.overrides")
    cls.config_cls.check_field_names(grid or {}, "key", f"{where}.grid")
    both = sorted(set(overrides) & set(grid or {}))
    if both:
        raise ValueError(f"{where}: {both[0]!r} is both fixed (overrides, or an ablation's param) and searched "
                         f"(grid); the fixed value would silently win. Keep it in one of them.")
    points = [dict(overrides)]
    for k, vals in (grid or {}).items():
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"{where}.grid.{k} must be a non-empty list of values. Got {brief(vals)} instead.")
        points += [{**overrides, k: v} for v in vals]
    for point in points:
        try:
            cls.config_cls(**point)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None


def _is(kind: type, text: str) -> Predicate:
    """A value a parser built: a ``kind`` (the backbone's recipe, the executor)."""
    return Predicate(lambda v: isinstance(v, kind), text)


def _entries(kind: type, text: str, nonempty: bool = False) -> Predicate:
    """Entries a parser built: a tuple of ``kind`` (datasets, methods, ablations)."""
    return Predicate(lambda v: isinstance(v, tuple) and all(isinstance(x, kind) for x in v)
                     and (bool(v) or not nonempty), text)


FIELDS = "a mapping of method config fields"
GRID = "a mapping of config fields to non-empty lists"
_LABEL = Text(no_slash=True, text="a non-empty name without '/'")
_MAPPING = Predicate(lambda v: isinstance(v, dict), FIELDS)
_GRID = NoneOr(Predicate(lambda v: isinstance(v, dict), GRID))
_TEMPLATES = Predicate(lambda v: isinstance(v, tuple) and len(v) > 0 and all(isinstance(t, str) and t.count("{}") == 1
                                                                              for t in v),
                       "a list of strings with {} once, or null")


# -- entries -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetEntry(Config):
    """One dataset: a path (resolved) or a built-in name, its root, and the label used in results."""

    data: str = setting(doc="a path (CoOp folder, class folders, CSV) or a built-in name", check=Text(),
                        parse=_data_location)
    root: str | None = setting(None, "where built-in names live (default: the top-level root)", NoneOr(Text()),
                               path=True)
    label: str | None = setting(None, "the dataset's name in results (default: its own name)", NoneOr(_LABEL))
    allow_outside_paths: bool = setting(False, "let split-file/CSV entries point outside the dataset folder", Bool())


@dataclass(frozen=True)
class MethodEntry(Config):
    """A method line of the grid: ``label`` names it in results (default: the method's registry name)."""

    label: str
    method: str = setting(doc="registered method name (default: the line's label)", check=Text())
    overrides: dict[str, Any] = setting(doc="fixed config values", check=_MAPPING, factory=dict, shown="{}",
                                        parse=_mapping_or_empty)
    grid: dict[str, list] | None = setting(None, "values searched on val (null: the method's default grid)", _GRID,
                                           parse=_grid, accepts=GRID)


@dataclass(frozen=True)
class BackboneKeys(Config):
    """The YAML keys of ``backbone`` (parsing and docs only): the value in :class:`ExperimentConfig` is the
    backbone's one recipe, a :class:`~clip_adapter.backbones.BackboneSpec` (``BackboneSpec.of(**keys)``)."""

    name: str = setting("RN50", "'lite', an open_clip architecture, an architecture JSON path or hf:PATH", Text())
    pretrained: str | None = setting("openai", "open_clip pretrained tag; null or 'none' for random init",
                                     NoneOr(Text()))
    checkpoint: str | None = setting(None, "local checkpoint file (offline use)", NoneOr(Text()), path=True)
    device: str = setting("cpu", "torch device of encoders and training (cpu, cuda, cuda:1)", Text())
    precision: str = setting("fp32", "image-encoder precision: fp32, or bf16/fp16 autocast (features move; cached "
                             "separately)", Options(PRECISIONS))
    compile: bool = setting(False, "torch.compile the image encoder", Bool())
    runtime: str = setting(DEFAULT_RUNTIME, "image-encoder runtime: torch, onnx (ONNX Runtime, CPU, fp32) or auto "
                           "(onnx for lite on the CPU with fp32 and no compile, else torch)", Options(RUNTIMES))
    gpu_decode: bool = setting(False, "decode JPEGs on the GPU when filling the feature cache (CUDA only)", Bool())


@dataclass(frozen=True)
class AblationEntry(Config):
    """Fixed values of one config field (``alpha``): each value is a run with that override.

    The result is TEST accuracy per value, an analysis figure; it is never used to choose the value.
    """

    method: str = setting(doc="a trained method", check=Text())
    param: str = setting(doc="the config field to fix", check=Text())
    values: tuple = setting(doc="its values (one run each)", check=Predicate(
        lambda v: isinstance(v, tuple) and len(v) > 0, "a non-empty list"), parse=_tuple)
    shots: tuple[int, ...] = setting((16,), "shot counts", IntList(1), parse=_int_tuple)
    seeds: tuple[int, ...] | None = setting(None, "seeds (null: the experiment's)", NoneOr(IntList()),
                                            parse=_int_tuple)
    overrides: dict[str, Any] = setting(doc="other fixed config values", check=_MAPPING, factory=dict, shown="{}",
                                        parse=_mapping_or_empty)
    grid: dict[str, list] | None = setting(None, "other parameters still searched on val (null: method default)",
                                           _GRID, parse=_grid, accepts=GRID)
    label: str | None = setting(None, "result folder prefix (default '<method>-<param>')", NoneOr(_LABEL))

    def variant(self, value: Any) -> str:
        """The result folder of one value: ``clip_adapter-alpha0.2``."""
        shown = format(value, "g") if isinstance(value, float) else str(value)
        return f"{self.label or f'{self.method}-{self.param}'}{shown}"


@dataclass(frozen=True)
class RayEntry(Config):
    """Run the grid on a Ray cluster (``clip-adapter experiment CONFIG --ray [ADDRESS]`` sets this too)."""

    address: str | None = setting(None, "null: a local cluster on this machine; 'auto': the running cluster; or "
                                  "host:port", NoneOr(Text()))
    gpus_per_run: float | None = setting(None, "GPUs per run (null: 1 when backbone.device is cuda, else 0)",
                                         NoneOr(Interval(float, 0)))
    cpus_per_run: float = setting(1.0, "CPUs per run", Interval(float, 0, closed="neither"))
    encoder_actors: int | None = setting(None, "feature-extraction actors (null: one per GPU, or 1 on the CPU)",
                                         NoneOr(Interval(int, 1)))


def _ray(v: Any, where: str, ctx: _Ctx) -> RayEntry | None:
    return None if v is None else _entry(RayEntry, _mapping(v, where), where, ctx)


@dataclass(frozen=True)
class ExecutorEntry(Config):
    """Where the runs execute: in this process (no ``ray``), or on Ray."""

    ray: RayEntry | None = setting(None, "{address, gpus_per_run, cpus_per_run, encoder_actors}",
                                   NoneOr(_is(RayEntry, "a mapping")), parse=_ray, accepts="a mapping or null")


def _datasets(v: Any, where: str, ctx: _Ctx) -> tuple[DatasetEntry, ...]:
    """The ``datasets`` list (and a transfer's ``targets``): an entry may be written as its bare ``data``; the
    top-level ``root`` is each entry's default root."""
    if not isinstance(v, list) or not v:
        raise ValueError(f"{where} must be a non-empty list of paths or built-in names. Got {brief(v)}.")
    out = []
    for i, d in enumerate(v):
        at = f"{ctx.source}: datasets[{i}]"
        if isinstance(d, str):
            d = {"data": d}
        if not isinstance(d, Mapping):
            raise ValueError(f"{at} must be a path, a built-in name or a mapping with 'data'. Got {brief(d)}.")
        out.append(_entry(DatasetEntry, {"root": ctx.root, **d}, at, ctx))
    return tuple(out)


@dataclass(frozen=True)
class TransferEntry(Config):
    """Cross-dataset transfer and domain shift: the models trained on ``source`` (one of the experiment's datasets)
    are scored on every target's test split. Targets with the source's classes (ImageNet-V2/-Sketch/-A/-R, mapped
    by wnid) take every method; other targets only methods whose learned part carries over to new class names."""

    source: str = setting(doc="the source dataset: a 'datasets' entry's label or data", check=Text())
    targets: tuple[DatasetEntry, ...] = setting(doc="target datasets (entries as in 'datasets'); their test split "
                                                "is scored with the source's models",
                                                check=_entries(DatasetEntry, "a non-empty list", nonempty=True),
                                                parse=_datasets)


# -- parsers of the structured top-level keys ------------------------------------------------------------------
def _methods(v: Any, where: str, ctx: _Ctx) -> tuple[MethodEntry, ...]:
    if isinstance(v, list):
        if not all(isinstance(m, str) for m in v):
            raise ValueError(f"{where} as a list must hold method names. Got {brief(v)}.")
        v = {m: {} for m in v}
    out = []
    for label, spec in _mapping(v, where).items():
        at = f"{ctx.source}: methods.{label}"
        if not _LABEL.ok(label):
            raise ValueError(f"{at}: a method label must be a non-empty name without '/'.")
        spec = _mapping(spec, at)
        kw = _fields(MethodEntry, spec, at, ctx)
        entry = _build(MethodEntry, {"method": label, **kw}, spec, at, label=label)
        cls = _method_class(entry.method.replace("-", "_").lower(), at, ctx)
        _check_method_values(cls, entry.overrides, entry.grid, at)
        out.append(entry.replace(method=cls.name if cls else entry.method.replace("-", "_").lower()))
    return tuple(out)


def _ablations(v: Any, where: str, ctx: _Ctx) -> tuple[AblationEntry, ...]:
    items = [] if v is None else v if isinstance(v, list) else [v]
    out = []
    for i, a in enumerate(items):
        at = f"{ctx.source}: ablation" + (f"[{i}]" if isinstance(v, list) else "")
        entry = _entry(AblationEntry, _mapping(a, at), at, ctx)
        method = entry.method.replace("-", "_").lower()
        cls = _method_class(method, at, ctx)
        if cls is not None:
            cls.config_cls.check_field_names([entry.param], "param", at)
            for value in entry.values:
                _check_method_values(cls, {**entry.overrides, entry.param: value}, entry.grid, at)
            if not cls.trains:
                raise ValueError(f"{at}: method {method!r} does not train; an ablation needs a trained method.")
            method = cls.name
        out.append(entry.replace(method=method))
    return tuple(out)


def _backbone(v: Any, where: str, ctx: _Ctx) -> BackboneSpec:
    raw = _mapping({"name": v} if isinstance(v, str) else v, f"{ctx.source}: 'backbone'")
    keys = _entry(BackboneKeys, raw, f"{ctx.source}: backbone", ctx)
    name = _resolve_path(keys.name, ctx.base) if keys.name.endswith(".json") else keys.name
    # Encoder keys at their defaults are left out of the recipe's options, so the settings of a run (which include
    # the backbone) stay those of results made before these keys existed.
    defaults = {x.name: x.default for x in BackboneKeys.settings()}
    options = {k: getattr(keys, k) for k in ENCODER_KEYS if getattr(keys, k) != defaults[k]}
    return BackboneSpec.of(name, normalise_pretrained(keys.pretrained), keys.checkpoint, keys.device, **options)


def BackboneEntry(name: str = "RN50", pretrained: str | None = "openai", checkpoint: str | None = None,
                  device: str = "cpu") -> BackboneSpec:
    """Deprecated: an experiment's backbone is a :class:`~clip_adapter.backbones.BackboneSpec`
    (``BackboneSpec.of(name, pretrained, checkpoint, device)``)."""
    import warnings
    warnings.warn("clip_adapter.experiment.BackboneEntry is deprecated; use clip_adapter.backbones.BackboneSpec.of"
                  "(name, pretrained, checkpoint, device).", DeprecationWarning, stacklevel=2)
    return BackboneSpec.of(name, pretrained, checkpoint, device)


def _executor(v: Any, where: str, ctx: _Ctx) -> ExecutorEntry:
    return _entry(ExecutorEntry, _mapping(v, where), f"{ctx.source}: executor", ctx)


def _transfer(v: Any, where: str, ctx: _Ctx) -> TransferEntry | None:
    return None if v is None else _entry(TransferEntry, _mapping(v, where), f"{ctx.source}: transfer", ctx)


# -- the experiment ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentConfig(Config):
    """A validated experiment; build it with :func:`load_config` (YAML) or :func:`parse_config` (dict).

    Field order is the YAML order; each field's :func:`setting` is its row in the key table.
    """

    name: str = setting("", "the experiment's name", NoneOr(Text(no_slash=True)), shown="the config file's stem")
    root: str | None = setting(None, "default data root of built-in names ($CLIP_ADAPTER_DATA, else ~/data)",
                               NoneOr(Text(text="a string")), path=True)
    datasets: tuple[DatasetEntry, ...] = setting((), "paths (CoOp folder, class folders, CSV) or built-in names; "
                                                 "an entry may be {data, root, label}",
                                                 _entries(DatasetEntry, "a non-empty list", nonempty=True),
                                                 parse=_datasets, shown="required")
    shots: tuple[int, ...] = setting(DEFAULT_SHOTS, "shot counts", IntList(1), parse=_int_tuple)
    seeds: tuple[int, ...] = setting(DEFAULT_SEEDS, "seeds (few-shot sampling and training)", IntList(),
                                     parse=_int_tuple)
    methods: tuple[MethodEntry, ...] = setting((), "label: {method, grid, overrides}; methods that do not train run "
                                               "once per dataset (shots 0, first seed)",
                                               _entries(MethodEntry, "a mapping (or a list of method names)"),
                                               parse=_methods, shown="{}")
    ablations: tuple[AblationEntry, ...] = setting((), "fixed values of one parameter, TEST accuracy for analysis: "
                                                   "{method, param, values, shots, seeds, overrides, grid, label} "
                                                   "or a list of them",
                                                   _entries(AblationEntry, "a mapping or a list of mappings"),
                                                   key="ablation", parse=_ablations, shown="none")
    backbone: BackboneSpec = setting(BackboneSpec.of(), "{name, pretrained, checkpoint, device, precision, compile, "
                                     "runtime, gpu_decode} or a name", _is(BackboneSpec, "a mapping or a name"),
                                     parse=_backbone, shown="{name: RN50, pretrained: openai, device: cpu}")
    n_views: int = setting(10, "cached augmented views per training image", Interval(int, 0))
    hp_selection: str = setting("few_shot_val", "where hyper-parameters are chosen: few_shot_val (min(K, 4) val "
                                "images per class), full_val (the whole val split) or none (no search)",
                                Options(HP_SELECTION))
    repeat_shots: bool = setting(False, "sample with repetition when a class has fewer images than shots", Bool())
    templates: tuple[str, ...] | None = setting(None, "prompt templates with {} (null: each dataset's)",
                                                NoneOr(_TEMPLATES), parse=_templates,
                                                accepts=_TEMPLATES.describe())
    cache_dir: str | None = setting(None, "feature cache ($CLIP_ADAPTER_CACHE/features)", NoneOr(Text()),
                                    path=True)
    output: str = setting("", "results folder", Text(), path=True, shown="results/<name>")
    batch_size: int = setting(32, "images per encoder call", Interval(int, 1))
    workers: int | None = setting(None, "image-decoding processes (null: half the cores, at most 4)",
                                  NoneOr(Interval(int, 0)))
    threads: int | None = setting(None, "torch CPU threads (null: torch's default)", NoneOr(Interval(int, 1)))
    report: bool = setting(True, "write tables and figures at the end", Bool())
    batch_seeds: bool = setting(False, "fit the runs that differ only by seed together, one stacked model where the "
                                "method can (CLIP-Adapter; local executor); each record is the one its run gives "
                                "alone", Bool())
    protocol: str = setting("few_shot", "'few_shot', or 'base_to_new' (CoCoOp: train on the base half of each "
                            "dataset's classes; records get base_accuracy, new_accuracy, harmonic_mean)",
                            Options(PROTOCOLS))
    transfer: TransferEntry | None = setting(None, "{source, targets}: score the models trained on source on each "
                                             "target (cross-dataset transfer, domain shift)",
                                             NoneOr(_is(TransferEntry, "a mapping")), parse=_transfer,
                                             shown="none", accepts="a mapping or null")
    executor: ExecutorEntry = setting(ExecutorEntry(), "where runs execute: {ray: {address, gpus_per_run, "
                                      "cpus_per_run, encoder_actors}} for a Ray cluster (default: this process)",
                                      _is(ExecutorEntry, "a mapping"), parse=_executor, shown="this process")
    source: str = "config"   # how errors name the config (its file name); not a YAML key

    def validate(self) -> None:
        """Something to run; a transfer source is one of the datasets; base-to-new has no ablations and no
        transfer."""
        if not self.methods and not self.ablations:
            raise ValueError(f"{self.source}: nothing to run; give 'methods' (and/or an 'ablation').")
        if self.transfer is not None:
            names = [n for d in self.datasets for n in (d.label, d.data, Path(d.data).name) if n]
            if self.transfer.source not in names:
                raise ValueError(f"{self.source}: transfer.source {self.transfer.source!r} is not one of the "
                                 f"datasets; expected a 'datasets' entry's label or data "
                                 f"({', '.join(dict.fromkeys(names))}).")
        if self.protocol == "base_to_new" and (self.ablations or self.transfer is not None):
            raise ValueError(f"{self.source}: protocol 'base_to_new' cannot be combined with "
                             f"{'an ablation' if self.ablations else 'transfer'}; run them as separate experiments.")

    def replace(self, **keys: Any) -> "ExperimentConfig":
        """A copy with top-level ``keys`` (YAML keys: ``output=``, ``backbone={...}``) changed, validated as a file
        is (:func:`parse_config` of :meth:`to_raw` plus ``keys``): an unknown key gets the "did you mean", a relative
        path resolves against the current directory."""
        return parse_config({**self.to_raw(), **keys}, source=self.source, check_registry=False)

    def to_raw(self) -> dict[str, Any]:
        """This config in the YAML schema (paths resolved): ``parse_config(cfg.to_raw())`` gives it back."""
        raw = _raw(self)
        raw["methods"] = {m.label: _raw(m) for m in self.methods}
        if raw.get("protocol") == "few_shot":
            del raw["protocol"]  # the default: resolved copies of older configs stay as they were
        return {k: v for k, v in raw.items() if v not in (None, [], {})}


def _raw_backbone(spec: BackboneSpec) -> dict[str, Any]:
    """A backbone recipe as its YAML keys (the encoder keys live in its options; absent ones are the defaults)."""
    defaults = _raw(BackboneKeys())
    return {k: spec.options.get(k, defaults.get(k)) if k in ENCODER_KEYS else getattr(spec, k)
            for k in _yaml_keys(BackboneKeys)}


def _raw(obj: Any) -> dict[str, Any]:
    """The YAML keys of a config dataclass with their values (tuples as lists, entries as mappings, no nulls)."""
    out: dict[str, Any] = {}
    for x in _settings(type(obj)):
        value = getattr(obj, x.name)
        if isinstance(value, ExecutorEntry):
            value = {"ray": _raw(value.ray)} if value.ray is not None else None
        elif dataclasses.is_dataclass(value):
            value = _raw_backbone(value) if isinstance(value, BackboneSpec) else _raw(value)
        elif isinstance(value, tuple):
            value = [_raw(x) if dataclasses.is_dataclass(x) else x for x in value]
        elif isinstance(value, dict):
            value = dict(value)
        if value is not None:
            out[x.key or x.name] = value
    return out


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
    with _as_file(ExperimentConfig, source, raw):   # read first: the datasets' parser gets it, whatever the order
        ExperimentConfig.check_value("root", raw.get("root"))
    ctx = _Ctx(source, Path(base_dir) if base_dir is not None else Path.cwd(), check_registry, raw.get("root"))
    if "datasets" not in raw:
        raise ValueError(f"{source}: 'datasets' must be a non-empty list of paths or built-in names. Got None.")
    kw = _fields(ExperimentConfig, raw, source, ctx)
    if kw.get("name") is None:
        kw["name"] = Path(source).stem or "experiment"
    if "output" not in raw:
        kw["output"] = _resolve_path(f"results/{kw['name']}", ctx.base)
    return _build(ExperimentConfig, kw, raw, source, source=source)


MAX_YAML_NODES = 100_000   # values in a config once every alias is expanded; far above any real experiment


def _strict_loader():
    """A SafeLoader that loses nothing silently: a duplicate key or a merge key (``<<``) is an error (PyYAML keeps
    the last value / merges keys away), and ``1e-3`` is a float (YAML 1.2), not the string YAML 1.1 makes of it."""
    import re

    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else []:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise yaml.constructor.ConstructorError(
                        None, None, "merge keys ('<<') are not supported: they silently drop keys; write the keys out",
                        key_node.start_mark)
                key = self.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
                try:
                    first = seen.setdefault(key, key_node) if key is not None else key_node
                except TypeError:   # an unhashable key: SafeLoader reports it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {brief(key)} (first on line {first.start_mark.line + 1}); YAML "
                        f"would keep only the last value; give each key once", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    StrictLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return StrictLoader


def _expanded_size(node, memo: dict[int, int], active: set[int]) -> int:
    """Values under ``node`` with every alias expanded (a shared node counts each time it is used); computed once
    per node, so a billion-laughs file is measured in microseconds, never expanded."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ValueError("an alias refers to a value that contains it (a recursive structure)")
    active.add(key)
    children = node.value if isinstance(node.value, list) else []
    size = 1 + sum(_expanded_size(x, memo, active) for pair in children
                   for x in (pair if isinstance(pair, tuple) else (pair,)))
    active.discard(key)
    memo[key] = size
    return size


def read_yaml(path: str | Path, text: str | None = None) -> Any:
    """The YAML document at ``path`` (or ``text``), read with a one-line error for everything a config file can get
    wrong: invalid YAML, duplicate and merge keys, too deep nesting, and alias expansions above
    :data:`MAX_YAML_NODES` values (a 600-byte "billion laughs" file), refused before anything is built."""
    import yaml
    text = Path(path).read_text(encoding="utf-8") if text is None else text
    loader = _strict_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise ValueError(f"{path}: its aliases (*name) expand to {size:,} values, more than the {MAX_YAML_NODES:,} "
                             f"a config may hold; refused (write the values out, or use fewer aliases).")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}:{at} is not valid YAML ({getattr(e, 'problem', None) or brief(str(e))}).") from None
    except RecursionError:
        raise ValueError(f"{path}: is nested too deeply to be an experiment config.") from None
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: {e}.") from None
    finally:
        loader.dispose()


def load_config(path: str | Path, base_dir: str | Path | None = None, check_registry: bool = True,
                **overrides: Any) -> ExperimentConfig:
    """Read and validate a YAML experiment config; ``overrides`` replace top-level keys (e.g. ``output=...``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Experiment config {path} not found.")
    try:
        raw = read_yaml(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    if raw is None:
        raise ValueError(f"{path} is empty; expected datasets, methods, ...")
    if isinstance(raw, Mapping):
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        raw.setdefault("name", path.stem)
    return parse_config(raw, source=str(path), base_dir=base_dir, check_registry=check_registry)


def reference_markdown() -> str:
    """The config reference (``docs/experiment-config.md``), generated from the key table."""
    out = ["# Experiment config reference", "",
           "Generated from the key table in `src/clip_adapter/experiment/schema.py` (a test keeps this file equal to "
           "`reference_markdown()`). Relative paths are relative to the current directory.", ""]
    for title, cls in (("Top level", ExperimentConfig), ("`datasets` entries", DatasetEntry),
                       ("`methods` entries (`label: {...}`)", MethodEntry), ("`backbone`", BackboneKeys),
                       ("`ablation`", AblationEntry), ("`transfer`", TransferEntry), ("`executor.ray`", RayEntry)):
        out += [f"## {title}", "", *settings_table(_settings(cls)), ""]
    return "\n".join(out)
