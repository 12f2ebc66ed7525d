"""The result store of one output folder: where each run's record lives, reading them back, claiming a run across
processes, and the ``runs.jsonl`` index.

Layout: ``<output>/<dataset>/<variant>/shots<K>-seed<S>.json`` (one record per run, written atomically),
``<output>/runs.jsonl`` (one line per run, rebuilt from the record files, so it never holds duplicates), and
``<output>/.locks/`` (one lock file per run being computed).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from filelock import FileLock, Timeout

from .io import atomic_path

__all__ = ["RUNS_FILE", "PLAN_FILE", "LOCK_DIR", "missing_runs", "result_path", "read_result", "find_result_files", "load_records", "claim_run",
           "append_run", "rebuild_runs_jsonl"]

log = logging.getLogger(__name__)

RUNS_FILE = "runs.jsonl"
PLAN_FILE = "plan.json"  # the experiment's planned result files, written when it starts
LOCK_DIR = ".locks"


def result_path(output: str | Path, dataset: str, variant: str, shots: int, seed: int) -> Path:
    """Where the record of one run lives: ``<output>/<dataset>/<variant>/shots<K>-seed<S>.json`` (the variant is the
    method's name unless the run names itself otherwise)."""
    return Path(output) / dataset / variant / f"shots{shots}-seed{seed}.json"


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


@contextlib.contextmanager
def claim_run(output: str | Path, result_file: str | Path, wait: bool = False) -> Iterator[bool]:
    """Hold the run's lock (``<output>/.locks/<run>.lock``, a ``filelock`` lock); yields False when another process
    holds it and ``wait`` is false.

    The lock is an OS file lock (released by the kernel when its holder dies, even by ``kill -9``, so a dead run never
    blocks a rerun), through ``filelock`` so that it also works on Windows.
    """
    rel = os.path.relpath(Path(result_file), Path(output))
    lock = FileLock(_lock_file(Path(output), rel.replace(os.sep, "__") + ".lock"))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextlib.contextmanager
def _runs_lock(output: Path) -> Iterator[None]:
    """Serialise appends to and rebuilds of ``runs.jsonl`` between processes."""
    with FileLock(_lock_file(output, "runs.jsonl.lock")):
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
    return len(planned), [p for p in planned if read_result(outdir / p) is None]
