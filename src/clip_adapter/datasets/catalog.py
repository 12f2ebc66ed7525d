"""The 11 benchmark datasets of CLIP-Adapter / CoOp and the 4 ImageNet variants of the domain-shift protocol
(-V2, -Sketch, -A, -R) as data: ``catalog.json`` read into :class:`DatasetInfo` rows.

The rows (layout, sizes, prompt templates, aliases, download sources) are data, as open_clip keeps its architectures:
adding or fixing a dataset is an edit of ``catalog.json``, never of code. The on-disk layout is CoOp's
(``KaiyangZhou/CoOp/DATASETS.md``), so a ``$DATA`` folder prepared for CoOp/CLIP-Adapter works as is::

    <root>/dtd/images/...              + split_zhou_DescribableTextures.json
    <root>/oxford_flowers/jpg/...      + split_zhou_OxfordFlowers.json
    <root>/fgvc_aircraft/images/...    + variants.txt, images_variant_{train,val,test}.txt
    <root>/imagenet/images/{train,val}/<wnid>/...  + classnames.txt

``root`` is the argument, else ``$CLIP_ADAPTER_DATA``, else ``~/data``. :func:`templates_for` gives the CoOp prompt
template of any dataset name (a catalog name, alias or CoOp name, or one of those followed by a count: ``dtd10``).

Rows are validated when read (an unknown or missing key, a value of the wrong kind: one line naming the file, the row
and the key). :func:`add_catalog` adds the rows of a user's own catalog file (same schema) to the built-in ones. A
row's ``split_format`` names a reader in :data:`FORMATS` (:func:`register_format`; the built-in ones, ``coop``,
``fgvc`` and ``imagenet``, live in :mod:`~clip_adapter.datasets.builtin`). :func:`catalog_markdown` renders the
README's dataset table from the rows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..config import Constraint, Interval, Predicate, Text, check_keys, closest, invalid_value, unknown_key
from .types import DEFAULT_TEMPLATE

__all__ = ["DatasetInfo", "Resource", "REGISTRY", "FORMATS", "DATA_ENV", "CATALOG_FILE", "resolve_root", "get_info",
           "dataset_names", "list_datasets", "templates_for", "read_catalog", "add_catalog", "register_format",
           "catalog_markdown"]

DATA_ENV = "CLIP_ADAPTER_DATA"
CATALOG_FILE = Path(__file__).with_name("catalog.json")


@dataclass(frozen=True)
class Resource:
    """One file a dataset needs: where to get it, how to check it and where its content goes.

    Attributes:
        filename: name of the downloaded file (under ``<root>/.downloads/<dataset dir>/``).
        urls: mirrors tried in order; empty when the file can only be fetched by hand (see ``manual``).
        sha256, md5: published checksums; ``None`` when unknown (the sha256 is then recorded at first download
            and later downloads must match it).
        members: for archives, ``(path inside the archive, path under the dataset folder)`` pairs, moved into
            place in this order (put the image folder last). Empty: a plain file placed at ``dest``.
        dest: where a plain (non-archive) file goes under the dataset folder (default: ``filename``).
        inner: an archive inside the archive to unpack instead (Caltech-101's zip holds a .tar.gz).
        manual: how to get the file by hand when ``urls`` is empty or fails.
        max_bytes: the most an archive may unpack to (its size budget; default: 256 GiB and at most 100x the
            archive's size, see :class:`~clip_adapter.datasets.archive.Budget`).
    """

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    members: tuple[tuple[str, str], ...] = ()
    dest: str | None = None
    inner: str | None = None
    manual: str = ""
    max_bytes: int | None = None

    @property
    def is_archive(self) -> bool:
        return bool(self.members)

    @property
    def targets(self) -> list[str]:
        """Paths (relative to the dataset folder) this resource creates."""
        return [d for _, d in self.members] if self.members else [self.dest or self.filename]

    def present(self, dataset_dir: Path) -> bool:
        return all((dataset_dir / t).exists() for t in self.targets)


@dataclass(frozen=True)
class DatasetInfo:
    """One benchmark dataset (a ``catalog.json`` row): CoOp layout, split source, sizes, prompt, download sources.

    Attributes:
        name: short lowercase key (``dtd``); ``aliases`` are other accepted keys.
        title: display name.
        coop_name: CoOp's dataset name (``DescribableTextures``): split file ``split_zhou_<coop_name>.json``.
        directory: folder under the data root (CoOp's: ``dtd``, ``caltech-101``, ``food-101``...).
        image_dir: folder (relative to ``directory``) the split relpaths are relative to; ``""`` = ``directory``.
        split_format: ``coop`` (split_zhou JSON), ``fgvc`` (FGVC-Aircraft txt files), ``imagenet`` (folders) or
            ``imagenet_variant`` (test-only wnid or index folders).
        num_classes, split_sizes: expected class count and (train, val, test) sizes (CoOp's Table; checked by
            :func:`clip_adapter.datasets.verify`).
        templates: CoOp's hand-crafted prompt template(s).
        resources: files to fetch/unpack.
        manual_steps: steps no resource covers (``{root}`` is replaced by the data root).
        required: paths under ``directory`` that must exist for the dataset to load.
        licence: terms of use of the images (not of this code).
        homepage: where the dataset is described.
        notes: anything that differs from the paper's protocol.
        class_list: a shipped wnid list (``class_lists/<name>.txt``) naming the classes of a subset of ImageNet's
            (ImageNet-A and -R: 200 classes); empty for the others.
    """

    name: str
    title: str
    coop_name: str
    directory: str
    image_dir: str
    split_format: str
    num_classes: int
    split_sizes: tuple[int, int, int]
    resources: tuple[Resource, ...]
    licence: str
    homepage: str
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    required: tuple[str, ...] = ()
    manual_steps: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    notes: str = ""
    class_list: str = ""

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.coop_name}.json"

    @property
    def download_mode(self) -> str:
        """``auto`` (one command), ``partial`` (some files by hand) or ``manual``."""
        fetchable = [bool(r.urls) for r in self.resources]
        if fetchable and all(fetchable) and not self.manual_steps:
            return "auto"
        return "partial" if any(fetchable) else "manual"

    def path(self, root: str | os.PathLike | None = None) -> Path:
        """The dataset folder under ``root`` (resolved as in :func:`resolve_root`)."""
        return resolve_root(root) / self.directory

    def missing(self, root: str | os.PathLike | None = None) -> list[Path]:
        """Required paths that do not exist under ``root``."""
        d = self.path(root)
        return [d / r for r in self.required if not (d / r).exists()]

    def present(self, root: str | os.PathLike | None = None) -> bool:
        return not self.missing(root)

    def summary(self) -> dict[str, Any]:
        tr, va, te = self.split_sizes
        return {"name": self.name, "title": self.title, "directory": self.directory, "classes": self.num_classes,
                "train": tr, "val": va, "test": te, "download": self.download_mode}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def _keys(info: DatasetInfo) -> set[str]:
    return {_norm(info.name), _norm(info.coop_name), *(_norm(a) for a in info.aliases)}


# -- reading and validating rows ---------------------------------------------------------------------------------
def _str_list(nonempty: bool = False, text: str = "a list of strings") -> Predicate:
    return Predicate(lambda v: isinstance(v, list) and (len(v) > 0 or not nonempty)
                     and all(isinstance(x, str) and x for x in v), text)


_NAME = Predicate(lambda v: isinstance(v, str) and bool(re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", v)),
                  "a lowercase name (letters, digits, '_', '-')")
_ROW: dict[str, Constraint] = {
    "name": _NAME, "title": Text(), "coop_name": Text(), "directory": Text(), "image_dir": Text(nonempty=False),
    "split_format": Text(), "num_classes": Interval(int, 1),
    "split_sizes": Predicate(lambda v: isinstance(v, list) and len(v) == 3 and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v), "3 ints >= 0 (train, val, test)"),
    "resources": Predicate(lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                           "a list of mappings"),
    "licence": Text(), "homepage": Text(),
    "templates": Predicate(lambda v: isinstance(v, list) and len(v) > 0 and all(
        isinstance(t, str) and t.count("{}") == 1 for t in v), "a non-empty list of strings each with '{}' once"),
    "required": _str_list(), "manual_steps": _str_list(), "aliases": _str_list(), "notes": Text(nonempty=False),
    "class_list": Text(nonempty=False),
}
_RESOURCE: dict[str, Constraint] = {
    "filename": Text(no_slash=True), "urls": _str_list(),
    "sha256": Predicate(lambda v: v is None or bool(re.fullmatch(r"[0-9a-f]{64}", v)), "64 hex digits or null"),
    "md5": Predicate(lambda v: v is None or bool(re.fullmatch(r"[0-9a-f]{32}", v)), "32 hex digits or null"),
    "members": Predicate(lambda v: isinstance(v, list) and all(
        isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m) for m in v),
        "a list of [path in archive, path under the dataset folder] pairs"),
    "dest": Predicate(lambda v: v is None or (isinstance(v, str) and bool(v)), "a path or null"),
    "inner": Predicate(lambda v: v is None or (isinstance(v, str) and bool(v)), "a path or null"),
    "manual": Text(nonempty=False),
    "max_bytes": Predicate(lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
                           "an int > 0 (bytes) or null"),
}


def _checked(d: Any, table: dict[str, Constraint], cls: type, where: str) -> dict[str, Any]:
    """``d``'s keys and values checked against ``table``; the keys ``cls`` has no default for are required (but
    ``resources``: a row without files to fetch has none)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping. Got {d!r} instead.")
    check_keys(d, table, where)
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and
                f.default_factory is dataclasses.MISSING and f.name in table and f.name != "resources"]
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r} (required: {', '.join(required)}).")
    for k, v in d.items():
        if not table[k].ok(v):
            raise invalid_value(k, v, table[k].describe(), where=where)
    return d


def _resource(d: Any, where: str) -> Resource:
    d = _checked(d, _RESOURCE, Resource, where)
    return Resource(d["filename"], urls=tuple(d.get("urls", ())), sha256=d.get("sha256"), md5=d.get("md5"),
                    members=tuple(tuple(m) for m in d.get("members", ())), dest=d.get("dest"),
                    inner=d.get("inner"), manual=d.get("manual", ""), max_bytes=d.get("max_bytes"))


def _row(d: Any, where: str) -> DatasetInfo:
    d = _checked(d, _ROW, DatasetInfo, where)
    tuples = ("split_sizes", "templates", "required", "manual_steps", "aliases")
    kw = {k: tuple(v) if k in tuples else v for k, v in d.items() if k != "resources"}
    res = tuple(_resource(r, f"{where}.resources[{i}]") for i, r in enumerate(d.get("resources", ())))
    return DatasetInfo(resources=res, **kw)


def read_catalog(path: str | os.PathLike = CATALOG_FILE) -> dict[str, DatasetInfo]:
    """The rows of a catalog file (``{"datasets": [row, ...]}``, the schema of the built-in ``catalog.json``), by
    name, in file order; every row validated (one-line ``ValueError`` naming the file, the row and the key)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Catalog file {path} not found.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a JSON catalog ({e}).") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'datasets' list of rows.")
    rows: dict[str, DatasetInfo] = {}
    for i, d in enumerate(raw["datasets"]):
        name = d.get("name") if isinstance(d, dict) else None
        row = _row(d, f"{path}: datasets[{i}]" + (f" ({name!r})" if isinstance(name, str) else ""))
        clash = next((o for o in rows.values() if _keys(row) & _keys(o)), None)
        if clash is not None:
            raise ValueError(f"{path}: datasets[{i}] ({row.name!r}) has a name or alias of row {clash.name!r}; "
                             f"expected each name and alias once.")
        rows[row.name] = row
    return rows


REGISTRY: dict[str, DatasetInfo] = read_catalog()

# split_format -> reader(info, dataset folder) -> Dataset; filled by register_format (builtin.py: coop, fgvc...).
FORMATS: dict[str, Callable[..., Any]] = {}


def register_format(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``reader(info: DatasetInfo, ds_dir: Path) -> Dataset`` for catalog rows with ``split_format: name``."""
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in FORMATS:
            raise ValueError(f"Split format {name!r} is already registered ({FORMATS[name].__qualname__}).")
        FORMATS[name] = fn
        return fn
    return deco


def format_reader(info: DatasetInfo) -> Callable[..., Any]:
    """The reader of ``info.split_format`` (one-line error listing the registered formats)."""
    if info.split_format not in FORMATS:
        raise unknown_key("split_format", info.split_format, FORMATS, where=f"catalog row {info.name!r}")
    return FORMATS[info.split_format]


def add_catalog(path: str | os.PathLike) -> list[str]:
    """Add the rows of your own catalog file (the schema of the built-in ``catalog.json``) to the built-in datasets;
    returns their names. A name or alias already taken, or a ``split_format`` with no reader, is a one-line error
    and nothing is added."""
    rows = read_catalog(path)
    for row in rows.values():
        clash = next((o for o in REGISTRY.values() if _keys(row) & _keys(o)), None)
        if clash is not None:
            raise ValueError(f"{path}: dataset {row.name!r} has a name or alias of the catalog's {clash.name!r}; "
                             f"rename it or drop the alias.")
        format_reader(row)
    REGISTRY.update(rows)
    _template_table.cache_clear()
    return list(rows)


def dataset_names() -> list[str]:
    """Canonical names of the built-in datasets, in the paper's order."""
    return list(REGISTRY)


def get_info(name: str) -> DatasetInfo:
    """The row of ``name`` (canonical name, alias or CoOp name; case, ``-``/``_`` ignored).

    Raises:
        ValueError: unknown name, with the known names and the closest match.
    """
    key = _norm(name)
    for info in REGISTRY.values():
        if key in _keys(info):
            return info
    candidates = {n: info.name for info in REGISTRY.values() for n in (info.name, *info.aliases)}
    near = closest(name.lower(), candidates)
    hint = f"did you mean {candidates[near]!r}? " if near else ""
    raise ValueError(f"Unknown dataset {name!r}; {hint}expected a folder, a .csv file or one of: "
                     f"{', '.join(REGISTRY)}.")


@lru_cache(maxsize=None)
def _template_table() -> dict[str, tuple[str, ...]]:
    return {k: info.templates for info in REGISTRY.values() for k in _keys(info)}


def templates_for(dataset_name: str) -> list[str]:
    """CoOp's template(s) of a known dataset, matched on its name (``dtd``, ``DescribableTextures``, an alias) or on
    such a name followed by a count (``dtd10``, ``OxfordFlowers89``: the longest match wins); else the default."""
    key, table = _norm(dataset_name), _template_table()
    if key in table:
        return list(table[key])
    for k in sorted(table, key=len, reverse=True):
        if key.startswith(k) and key[len(k):].isdigit():
            return list(table[k])
    return [DEFAULT_TEMPLATE]


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Data root: ``root`` if given, else ``$CLIP_ADAPTER_DATA``, else ``~/data``."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ENV) or "~/data"
    return Path(root).expanduser()


def list_datasets(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per built-in dataset: name, title, directory, classes, train/val/test sizes, download mode
    (auto/partial/manual), ``present`` (its required files exist under ``root``) and ``path``."""
    root = resolve_root(root)
    return [{**info.summary(), "present": info.present(root), "path": str(info.path(root))}
            for info in REGISTRY.values()]


def catalog_markdown() -> str:
    """The README's dataset table, from the rows (a test keeps the README equal to it)."""
    out = ["| name (aliases) | folder under DIR: what must be there | classes | train / val / test | download |",
           "|---|---|---:|---|---|"]
    for info in REGISTRY.values():
        name = f"`{info.name}`" + (f" (`{info.aliases[0]}`)" if info.aliases else "")
        need = ", ".join(f"`{r}`" for r in info.required)
        sizes = " / ".join(f"{n:,}" for n in info.split_sizes)
        out.append(f"| {name} | `{info.directory}/`: {need} | {info.num_classes} | {sizes} | {info.download_mode} |")
    return "\n".join(out) + "\n"
