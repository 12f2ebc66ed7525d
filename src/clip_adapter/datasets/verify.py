"""Check a dataset on disk: every image of every split exists and opens, and the counts are the expected ones
(``clip-adapter datasets verify NAME | PATH``)."""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import progress_bar
from .catalog import get_info
from .images import to_rgb
from .builtin import read_builtin
from .load import load_dataset
from .readers import read_coop
from .types import SPLITS

__all__ = ["VerifyReport", "verify"]


@dataclass
class VerifyReport:
    """Result of :func:`verify`: counts, expectations and every missing or unreadable file."""

    name: str
    folder: str
    counts: dict[str, int]
    classes: int
    expected_counts: dict[str, int] | None = None
    expected_classes: int | None = None
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # facts that are not problems (e.g. the fewest training images)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.problems)

    def summary(self) -> str:
        """One line: verdict, counts against expectations, number of bad files."""
        def vs(got: int, exp: int | None) -> str:
            return f"{got}" if exp is None or exp == got else f"{got} (expected {exp})"
        exp = self.expected_counts or {}
        parts = ", ".join(f"{s} {vs(self.counts.get(s, 0), exp.get(s))}" for s in SPLITS)
        verdict = "OK" if self.ok else "FAILED"
        return (f"{self.name}: {verdict}: {self.checked} files checked in {self.folder}; {parts}; classes "
                f"{vs(self.classes, self.expected_classes)}; {len(self.missing)} missing, {len(self.corrupt)} corrupt.")

    def lines(self, limit: int | None = 50) -> list[str]:
        """The summary, then one line per problem, missing and corrupt file (at most ``limit`` file lines)."""
        out = [self.summary(), *self.problems, *self.notes]
        bad = [f"missing: {p}" for p in self.missing] + [f"corrupt: {p} ({why})" for p, why in self.corrupt]
        shown = bad if limit is None else bad[:limit]
        out += shown
        if len(bad) > len(shown):
            out.append(f"... and {len(bad) - len(shown)} more (use --format json for all).")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folder": self.folder, "ok": self.ok, "checked": self.checked,
                "counts": self.counts, "expected_counts": self.expected_counts, "classes": self.classes,
                "expected_classes": self.expected_classes, "problems": self.problems, "missing": self.missing,
                "corrupt": [{"path": p, "error": e} for p, e in self.corrupt], "notes": self.notes}


def class_problems(ds) -> list[str]:
    """What would stop a few-shot run on ``ds`` whatever the shots: an empty train split, a single class, classes
    without training images (in val/test only); a run names the same classes."""
    per_class = Counter(it.label for it in ds.splits.get("train", []))
    names = ds.classnames
    if not per_class:
        return ["the 'train' split is empty: runs that train (every method but zero_shot) need training images."]
    if len(names) < 2:
        return [f"one class only ({names[0]!r}): a classifier needs at least 2 classes."] if names else []
    missing = [names[y] for y in range(len(names)) if not per_class.get(y)]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                                            else "")
        verb = "has" if len(missing) == 1 else "have"
        return [f"{len(missing)} of {len(names)} classes {verb} no training images ({shown}): runs that train "
                f"refuse this dataset."]
    return []


def shots_note(ds) -> list[str]:
    """The fewest training images of a class: more shots than that are an error unless sampled with repetition."""
    per_class = Counter(it.label for it in ds.splits.get("train", []))
    if not per_class or len(per_class) < ds.num_classes:
        return []
    low = min(per_class.values())
    name = ds.classnames[min(y for y in per_class if per_class[y] == low)]
    return [f"training images per class: {low} to {max(per_class.values())} (fewest: {name!r}); --shots above {low} "
            f"needs --repeat-shots."]


def _check_image(path: str, full: bool) -> str | None:
    """None if the image opens (and, with ``full``, decodes); else ``'missing'`` or the error."""
    from PIL import Image

    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as im:
            if full:
                to_rgb(im)  # the decoder training and prediction use, so "OK" means they can read it
            else:
                im.verify()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        msg = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {msg}".rstrip(": ")
    return None


def _guess_image_dir(folder: Path, split_file: Path, sample: int = 50) -> Path:
    """The folder (``folder`` or one of its subfolders) holding the most of the first ``sample`` relpaths of each
    split; ``folder`` when none holds any (every file is then reported missing)."""
    try:
        raw = json.loads(split_file.read_text())
        rels = [e[0] for s in SPLITS for e in raw.get(s, [])[:sample]]
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return folder  # read_coop reports the malformed file
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    hits = [sum((c / r).exists() for r in rels) for c in candidates]
    return candidates[max(range(len(candidates)), key=hits.__getitem__)]


def _load(name_or_path: str | os.PathLike, root: str | os.PathLike | None, allow_outside_paths: bool = False):
    """(dataset, its folder, expected split counts, expected classes, its name): expectations for built-in names."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        info = get_info(str(name_or_path))
        return (read_builtin(info.name, root, allow_outside_paths), info.path(root),
                dict(zip(SPLITS, info.split_sizes)), info.num_classes, info.name)
    split_files = sorted(path.glob("split_zhou_*.json")) if path.is_dir() else []
    if len(split_files) == 1:
        # read_coop locates the image folder from the first entries of each split, which is exactly what may be
        # missing here; vote over a larger sample instead.
        ds = read_coop(path, split_file=split_files[0], image_dir=_guess_image_dir(path, split_files[0]),
                       allow_outside_paths=allow_outside_paths)
    else:
        ds = load_dataset(path, allow_outside_paths=allow_outside_paths)
    return ds, path if path.is_dir() else path.parent, None, None, ds.name


def verify(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None, *, full: bool = False,
           workers: int | None = None, progress: bool = True, allow_outside_paths: bool = False) -> VerifyReport:
    """Check that every image of every split exists and opens, and that the counts are the expected ones.

    Args:
        name_or_path: a built-in name (counts checked against the registry) or a dataset folder/CSV in any form
            :func:`clip_adapter.datasets.load_dataset` reads (counts then come from its split file only).
        root: data root for names.
        full: decode every image (slower, catches truncated JPEGs) instead of PIL's ``verify()``.
        workers: threads opening images (default: up to 8).
        allow_outside_paths: let split-file entries reach outside the dataset folder (absolute paths, ``..``,
            symlinks to elsewhere), as :func:`~clip_adapter.datasets.load_dataset` does.

    Raises:
        ValueError / FileNotFoundError: unknown name, or the split file/required folders are missing.
    """
    ds, folder, expected_counts, expected_classes, label = _load(name_or_path, root, allow_outside_paths)
    counts = {s: len(ds.splits.get(s, [])) for s in SPLITS}
    report = VerifyReport(label, str(folder), counts, ds.num_classes, expected_counts, expected_classes)
    if expected_counts and counts != expected_counts:
        report.problems.append("split sizes differ from the registry: " + ", ".join(
            f"{s} {counts[s]} vs {expected_counts[s]}" for s in SPLITS if counts[s] != expected_counts[s]) + ".")
    if expected_classes is not None and ds.num_classes != expected_classes:
        report.problems.append(f"{ds.num_classes} classes; the registry expects {expected_classes}.")
    report.problems += class_problems(ds)
    report.notes += shots_note(ds)
    paths = sorted({it.path for s in SPLITS for it in ds.splits.get(s, [])})
    report.checked = len(paths)

    def rel(p: str) -> str:
        try:
            return str(Path(p).relative_to(folder))
        except ValueError:
            return p

    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    check: Callable[[str], str | None] = lambda p: _check_image(p, full)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, paths, chunksize=64)
        with progress_bar(len(paths), f"verify {label}", "img", enabled=progress) as bar:
            for p, err in zip(paths, results):
                bar.update(1)
                if err == "missing":
                    report.missing.append(rel(p))
                elif err:
                    report.corrupt.append((rel(p), err))
    return report
