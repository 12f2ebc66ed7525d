"""Predictions streamed to a JSON-lines file: one line per image as soon as its batch is done, resumable."""
from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_path

__all__ = ["predict_to_jsonl", "done_paths", "pending", "write_records", "jsonl_to_parquet"]

log = logging.getLogger(__name__)


def done_paths(out: Path) -> set[str]:
    """Paths already recorded in ``out``; a partial last line (interrupted write) is cut off the file."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s ends with a partial line (interrupted run); it is dropped and that image redone.", out)
        with open(out, "r+b") as f:
            f.truncate(end)
    done = set()
    for n, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(os.path.abspath(json.loads(line)["path"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s line %d is not a prediction record; ignored.", out, n)
    return done


def pending(out: Path, images: Sequence[str | os.PathLike], extra_records: Sequence[dict[str, Any]] = ()
            ) -> tuple[list[str], list[dict[str, Any]], dict[str, int]]:
    """(image paths still to predict, extra records still to write, counts) for an output file that may hold an
    earlier, interrupted run's records: what is already in ``out`` is skipped."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_paths(out)
    fresh = [r for r in extra_records if os.path.abspath(r["path"]) not in done]
    todo = [str(p) for p in images if os.path.abspath(str(p)) not in done]
    skipped = len(images) + len(extra_records) - len(todo) - len(fresh)
    if skipped:
        log.info("%s already holds %d of these images; predicting the other %d.", out, skipped, len(todo) + len(fresh))
    return todo, fresh, {"written": 0, "errors": 0, "skipped": skipped}


def write_records(f, records, counts: dict[str, int]) -> None:
    """Append records as JSON lines, each flushed before the next one (a kill loses at most a partial line)."""
    for rec in records:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        counts["written"] += 1
        counts["errors"] += "error" in rec


def predict_to_jsonl(model, images: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                     top_k: int = 5, batch_size: int | None = None, num_workers: int | None = None,
                     progress: bool = False, extra_records: Sequence[dict[str, Any]] = ()) -> dict[str, int]:
    """Append one JSON line per image to ``out``, written as soon as its batch is done; resumable.

    Images whose path is already in ``out`` (from an earlier, possibly interrupted run) are skipped, error records
    included (delete those lines to retry them). Returns counts: ``written``, ``errors``, ``skipped``.
    """
    todo, fresh, counts = pending(Path(out), images, extra_records)
    with open(out, "a", encoding="utf-8") as f:
        stream = model.predict_stream(todo, top_k=top_k, batch_size=batch_size, num_workers=num_workers,
                                      progress=progress)
        write_records(f, itertools.chain(fresh, stream), counts)  # lazily: each on disk before the next batch
    return counts


def jsonl_to_parquet(journal: str | os.PathLike, out: str | os.PathLike) -> int:
    """The records of a finished JSON-lines journal as a Parquet file (``path``, ``prediction``, ``probability``,
    ``top_k`` as JSON, ``error``), written atomically; returns the row count. Needs pyarrow (in the ray extra)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("Parquet output needs pyarrow: pip install pyarrow (or 'clip-adapter[ray]').") from None
    rows = [json.loads(line) for line in Path(journal).read_text(encoding="utf-8").splitlines() if line.strip()]
    table = pa.table({"path": [r["path"] for r in rows], "prediction": [r.get("prediction") for r in rows],
                      "probability": [r.get("probability") for r in rows],
                      "top_k": [json.dumps(r["top_k"]) if "top_k" in r else None for r in rows],
                      "error": [r.get("error") for r in rows]})
    with atomic_path(out) as tmp:
        pq.write_table(table, str(tmp))
    return len(rows)
