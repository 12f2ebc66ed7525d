"""Predictions streamed to a JSON-lines file: one line per image as soon as its batch is done, resumable."""
from __future__ import annotations

import errno
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_path, write_error

__all__ = ["predict_to_jsonl", "check_output", "read_journal", "pending", "open_append", "write_records",
           "jsonl_to_parquet", "settings_of"]

log = logging.getLogger(__name__)

# What each record carries besides the prediction: the resolved image path (the resume key), the model's fingerprint
# (AdaptedClassifier.fingerprint) and the settings that change a record. A file is resumed only by the same model
# with the same settings.
STAMP_KEYS = ("resolved_path", "model", "settings")


def settings_of(model, top_k: int) -> dict[str, Any]:
    """The settings that change a record: the number of classes listed (``top_k``, at most the model's classes)."""
    return {"top_k": min(int(top_k), len(model.classes_))}


def _again(out: Path) -> str:
    return f"use another --out, or --overwrite to start {out} over"


def check_output(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """An output file to stream into: never a symbolic link or something other than a regular file (a FIFO, a
    device); with ``overwrite`` an existing file is removed first."""
    out = Path(out)
    if out.is_symlink():
        raise ValueError(f"The output {out} is a symbolic link; refusing to write through it. Give the real path.")
    if out.exists() and not out.is_file():
        raise ValueError(f"The output {out} exists and is not a regular file; expected a file name.")
    if overwrite and out.exists():
        out.unlink()
    return out


def _is_record(rec: Any) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("path"), str) and all(k in rec for k in STAMP_KEYS)


def read_journal(out: Path, model_id: str, settings: dict[str, Any]) -> set[str]:
    """Resolved paths already predicted in ``out`` by this model with these settings.

    A partial last line (an interrupted write) is cut off. Error records are dropped from the file so that those
    images are tried again. A file with lines this tool did not write, or written by another model or with other
    settings, is a one-line error (nothing in it is touched)."""
    if not out.exists():
        return set()
    with _open_nofollow(out, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    records, kept, retry = [], [], 0
    for n, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not _is_record(rec):
            raise ValueError(f"{out} line {n} is not a prediction record written by clip-adapter predict; refusing "
                             f"to append to this file: {_again(out)}.")
        if rec["model"] != model_id:
            raise ValueError(f"{out} holds predictions of another model ({rec['model']!r:.40}; this one is "
                             f"{model_id!r}); {_again(out)}.")
        if rec["settings"] != settings:
            raise ValueError(f"{out} holds predictions made with other settings ({json.dumps(rec['settings'])[:80]}; "
                             f"now {json.dumps(settings)}); {_again(out)}.")
        records.append(rec)
        if "error" in rec:
            retry += 1
        else:
            kept.append(line)
    if end < len(data):
        log.warning("%s ends with a partial line (interrupted run); it is dropped and that image redone.", out)
    if end < len(data) or retry:
        if retry:
            log.info("%s: %d images failed before; trying them again.", out, retry)
        with atomic_path(out, what="prediction file") as tmp:
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return {r["resolved_path"] for r in records if "error" not in r}


def _open_nofollow(path: Path, mode: str):
    """``open`` that never follows a symbolic link at ``path`` (a link planted after the check cannot redirect the
    write)."""
    def opener(p, flags):
        return os.open(p, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        return open(path, mode, opener=opener, **({} if "b" in mode else {"encoding": "utf-8"}))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"The output {path} is a symbolic link; refusing to write through it.") from None
        raise write_error(e, path, "prediction file") from None


def open_append(out: Path):
    """``out`` opened for appending text, created if missing, without following a link."""
    return _open_nofollow(out, "a")


def pending(out: Path, images: Sequence[str | os.PathLike], extra_records: Sequence[dict[str, Any]] = (), *,
            model_id: str, settings: dict[str, Any], overwrite: bool = False
            ) -> tuple[list[str], list[dict[str, Any]], dict[str, int]]:
    """(image paths still to predict, extra records still to write, counts) for an output file that may hold an
    earlier, interrupted run's records of the same model and settings: what is already in ``out`` (by resolved
    path) is skipped, failures are tried again."""
    out = check_output(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, out, "prediction file") from None
    done = read_journal(out, model_id, settings)
    fresh = [r for r in extra_records if os.path.realpath(r["path"]) not in done]
    todo = [str(p) for p in images if os.path.realpath(str(p)) not in done]
    skipped = len(images) + len(extra_records) - len(todo) - len(fresh)
    if skipped:
        log.info("%s already holds %d of these images; predicting the other %d.", out, skipped, len(todo) + len(fresh))
    return todo, fresh, {"written": 0, "errors": 0, "skipped": skipped}


def write_records(f, records, counts: dict[str, int], model_id: str, settings: dict[str, Any]) -> None:
    """Append records as JSON lines, each stamped (resolved path, model, settings) and flushed before the next one
    (a kill loses at most a partial line)."""
    for rec in records:
        rec = {**rec, "resolved_path": os.path.realpath(rec["path"]), "model": model_id, "settings": settings}
        try:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        except OSError as e:
            raise write_error(e, f.name, "prediction file") from None
        counts["written"] += 1
        counts["errors"] += "error" in rec


def predict_to_jsonl(model, images: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                     top_k: int = 5, batch_size: int | None = None, num_workers: int | None = None,
                     progress: bool = False, extra_records: Sequence[dict[str, Any]] = (),
                     overwrite: bool = False) -> dict[str, int]:
    """Append one JSON line per image to ``out``, written as soon as its batch is done; resumable.

    Each record names the model (:meth:`~clip_adapter.model.AdaptedClassifier.fingerprint`), the settings
    (``top_k``) and the image's resolved path. A rerun with the same model and settings skips the images already
    in ``out`` and tries the failed ones again; another model or other settings, or a file this tool did not write,
    is an error unless ``overwrite`` (start the file over). Returns counts: ``written``, ``errors``, ``skipped``.
    """
    model_id, settings = model.fingerprint(), settings_of(model, top_k)
    out = Path(out)
    todo, fresh, counts = pending(out, images, extra_records, model_id=model_id, settings=settings,
                                  overwrite=overwrite)
    with open_append(out) as f:
        stream = model.predict_stream(todo, top_k=top_k, batch_size=batch_size, num_workers=num_workers,
                                      progress=progress)
        write_records(f, itertools.chain(fresh, stream), counts, model_id, settings)  # each on disk before the next
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
    # The stamps are kept: "model" and "settings" (as JSON) say what made each row.
    table = pa.table({"path": [r["path"] for r in rows], "prediction": [r.get("prediction") for r in rows],
                      "probability": [r.get("probability") for r in rows],
                      "top_k": [json.dumps(r["top_k"]) if "top_k" in r else None for r in rows],
                      "error": [r.get("error") for r in rows],
                      "model": [r.get("model") for r in rows],
                      "settings": [json.dumps(r["settings"]) if "settings" in r else None for r in rows]})
    with atomic_path(out, what="parquet file") as tmp:
        pq.write_table(table, str(tmp))
    return len(rows)
