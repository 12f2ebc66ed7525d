"""The result store of one output folder: where each run's record lives, reading them back, claiming a run across
processes, and the ``runs.jsonl`` index.

Layout: ``<output>/<dataset>/<variant>/shots<K>-seed<S>.json`` (one record per run, written atomically),
``<output>/runs.jsonl`` (one line per run, rebuilt from the record files, so it never holds duplicates), and
``<output>/.locks/`` (one lock file per run being computed, and ``<lock>.pid`` naming its holder).

Dataset and variant names become one folder name each (:func:`path_component`): a dataset or label named ``..``, or
holding ``/``, never places a record outside the output folder. A lock held by a live but stuck process is waited
for with a message naming the lock file and the holder's pid every :data:`LOCK_NOTICE` seconds, and at most
``$CLIP_ADAPTER_LOCK_TIMEOUT`` seconds when set (``--lock-timeout``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from filelock import FileLock, Timeout

from .io import atomic_path, safe_name

__all__ = ["RUNS_FILE", "PLAN_FILE", "LOCK_DIR", "LOCK_TIMEOUT_ENV", "LockTimeout", "missing_runs", "result_path",
           "path_component", "read_result", "find_result_files", "load_records", "claim_run", "append_run",
           "rebuild_runs_jsonl", "lock_timeout"]

log = logging.getLogger(__name__)

RUNS_FILE = "runs.jsonl"
PLAN_FILE = "plan.json"  # the experiment's planned result files, written when it starts
LOCK_DIR = ".locks"
LOCK_TIMEOUT_ENV = "CLIP_ADAPTER_LOCK_TIMEOUT"
LOCK_NOTICE = 30.0  # seconds between "still waiting for <lock>" messages


class LockTimeout(TimeoutError):
    """A lock was not obtained within the configured timeout (one line naming the lock file and its holder)."""


def path_component(name: str) -> str:
    """``name`` as one folder name: unchanged when it already is one (no ``/``, ``\\`` or NUL, not ``.``/``..``, not
    hidden, at most 120 characters), else :func:`~clip_adapter.io.safe_name` of it (``..`` -> ``__``)."""
    name = str(name)
    if name and len(name) <= 120 and not name.startswith(".") and not re.search(r"[/\\\x00]", name) and \
            not re.fullmatch(r"[A-Za-z]:.*", name):
        return name
    return safe_name(name)


def result_path(output: str | Path, dataset: str, variant: str, shots: int, seed: int) -> Path:
    """Where the record of one run lives: ``<output>/<dataset>/<variant>/shots<K>-seed<S>.json`` (the variant is the
    method's name unless the run names itself otherwise); each name is one folder (:func:`path_component`)."""
    output = Path(output)
    path = output / path_component(dataset) / path_component(variant) / f"shots{int(shots)}-seed{int(seed)}.json"
    root = os.path.normpath(os.path.abspath(output))
    if os.path.commonpath([os.path.normpath(os.path.abspath(path)), root]) != root:  # pragma: no cover - by design
        raise ValueError(f"Result path {path} leaves the output folder {output}.")
    return path


def read_result(path: str | Path) -> dict | None:
    """The record in a result file, or None when it is missing or does not parse (an unfinished run)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "accuracy" in rec else None


def _lock_file(output: Path, name: str) -> Path:
    path = output / LOCK_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def lock_timeout() -> float | None:
    """How long to wait for a lock: ``$CLIP_ADAPTER_LOCK_TIMEOUT`` seconds; None (forever, with messages) when
    unset."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds >= 0. Got {raw!r} instead.")
    return value


def _holder(path: Path) -> str:
    """Who holds ``path``, as its holder wrote it in ``<lock>.pid`` (``pid N on HOST``), or ``an unknown process``."""
    try:
        info = json.loads(path.with_name(path.name + ".pid").read_text())
        return f"pid {int(info['pid'])} on {str(info.get('host', '?'))[:100]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def _hold(path: Path, wait: bool, timeout: float | None) -> Iterator[bool]:
    """Hold the OS lock on ``path``, writing ``<lock>.pid`` while held; yields False when it is taken and ``wait``
    is false. Waiting logs who holds it every :data:`LOCK_NOTICE` seconds and gives up after ``timeout``."""
    lock = FileLock(path)
    start = time.monotonic()
    while True:
        left = None if timeout is None else timeout - (time.monotonic() - start)
        step = 0 if not wait else LOCK_NOTICE if left is None else max(0.0, min(LOCK_NOTICE, left))
        try:
            lock.acquire(timeout=step)
            break
        except Timeout:
            if not wait:
                yield False
                return
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise LockTimeout(f"Gave up after {waited:.0f} s waiting for the lock {path}, held by {_holder(path)} "
                                  f"(stuck? stop it, or raise {LOCK_TIMEOUT_ENV} / --lock-timeout).") from None
            log.warning("Waiting for the lock %s, held by %s, for %.0f s so far (%s).", path, _holder(path), waited,
                        f"giving up after {timeout:g} s" if timeout is not None else
                        f"set {LOCK_TIMEOUT_ENV} or --lock-timeout to give up")
    pid_file = path.with_name(path.name + ".pid")
    try:
        with contextlib.suppress(OSError):
            with atomic_path(pid_file) as tmp:
                tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        yield True
    finally:
        with contextlib.suppress(OSError):
            pid_file.unlink()
        lock.release()


@contextlib.contextmanager
def claim_run(output: str | Path, result_file: str | Path, wait: bool = False,
              timeout: float | None = None) -> Iterator[bool]:
    """Hold the run's lock (``<output>/.locks/<run>.lock``, a ``filelock`` lock); yields False when another process
    holds it and ``wait`` is false. With ``wait``, a message names the lock and its holder's pid while waiting, and
    :class:`LockTimeout` is raised after ``timeout`` seconds (default :func:`lock_timeout`).

    The lock is an OS file lock (released by the kernel when its holder dies, even by ``kill -9``, so a dead run never
    blocks a rerun), through ``filelock`` so that it also works on Windows.
    """
    rel = os.path.relpath(Path(result_file), Path(output))
    path = _lock_file(Path(output), rel.replace(os.sep, "__") + ".lock")
    with _hold(path, wait, lock_timeout() if timeout is None else timeout) as got:
        yield got


@contextlib.contextmanager
def _runs_lock(output: Path) -> Iterator[None]:
    """Serialise appends to and rebuilds of ``runs.jsonl`` between processes."""
    with _hold(_lock_file(output, "runs.jsonl.lock"), True, lock_timeout()):
        yield


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


def load_records(outdir: str | Path) -> list[dict]:
    """Every parseable result record under ``outdir``; unreadable files are logged and skipped."""
    out = []
    for p in find_result_files(outdir):
        rec = read_result(p)
        if rec is None:
            log.warning("skipping %s: not a finished result file (missing or unparseable)", p)
            continue
        rec.setdefault("result_file", str(p))
        out.append(rec)
    return out


def missing_runs(outdir: str | Path) -> tuple[int, list[str]] | None:
    """``(planned, missing result files)`` of the experiment in ``outdir`` from its ``plan.json``; None without one
    (a folder not written by ``clip-adapter experiment``, or by a version before the plan was recorded)."""
    outdir = Path(outdir)
    try:
        planned = json.loads((outdir / PLAN_FILE).read_text())["planned"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(planned, list) or not all(isinstance(p, str) for p in planned):
        return None
    root = outdir.resolve()
    # plan.json is data: an entry leaving the folder (absolute, '..') is not a run of this experiment
    inside = [p for p in planned if (outdir / p).resolve().is_relative_to(root)]
    return len(inside), [p for p in inside if read_result(outdir / p) is None]
