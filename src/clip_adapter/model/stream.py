"""Predictions streamed to a JSON-lines file: one line per image as soon as its batch is done, resumable."""
from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["predict_to_jsonl", "done_paths"]

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


def predict_to_jsonl(model, images: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                     top_k: int = 5, batch_size: int | None = None, num_workers: int | None = None,
                     progress: bool = False, extra_records: Sequence[dict[str, Any]] = ()) -> dict[str, int]:
    """Append one JSON line per image to ``out``, written as soon as its batch is done; resumable.

    Images whose path is already in ``out`` (from an earlier, possibly interrupted run) are skipped, error records
    included (delete those lines to retry them). Returns counts: ``written``, ``errors``, ``skipped``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_paths(out)
    fresh = [r for r in extra_records if os.path.abspath(r["path"]) not in done]
    todo = [str(p) for p in images if os.path.abspath(str(p)) not in done]
    skipped = len(images) + len(extra_records) - len(todo) - len(fresh)
    if skipped:
        log.info("%s already holds %d of these images; predicting the other %d.", out, skipped, len(todo) + len(fresh))
    counts = {"written": 0, "errors": 0, "skipped": skipped}
    with open(out, "a", encoding="utf-8") as f:
        stream = model.predict_stream(todo, top_k=top_k, batch_size=batch_size, num_workers=num_workers,
                                      progress=progress)
        for rec in itertools.chain(fresh, stream):  # lazily: each record is on disk before the next batch runs
            f.write(json.dumps(rec) + "\n")
            f.flush()
            counts["written"] += 1
            counts["errors"] += "error" in rec
    return counts
