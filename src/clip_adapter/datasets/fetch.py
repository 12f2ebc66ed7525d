"""Fetch, check and unpack dataset files: HTTP(S) with resume, sha256/md5 checks, safe atomic extraction.

The pieces, each usable on its own:

* :func:`fetch` downloads one URL into ``<file>.part`` (resuming it with ``Range`` + ``If-Range`` only when the
  server proves it is the same file, else from zero) and renames it to ``<file>`` only when every byte has arrived,
  within an overall deadline.
* :func:`check_digest` compares a file with its published sha256/md5; a mismatch deletes the file.
* :func:`extract` unpacks the wanted members of a zip/tar(.gz) into a temporary folder next to the target with
  :mod:`~clip_adapter.datasets.archive` (no links, nothing outside, a size budget), then moves each into place with
  one ``os.replace``: a path under the dataset folder exists only once it is complete.
* :func:`download_dataset` does all of that for every :class:`~clip_adapter.datasets.catalog.Resource` of a catalog
  row and returns what is still missing (files that need a manual step); :func:`download` takes a dataset name.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_path, file_digest, progress_bar, write_text as atomic_write
from .archive import Budget, member_parts, safe_makedirs, unpack
from .catalog import DatasetInfo, Resource, get_info, resolve_root
from .errors import ArchiveTooLargeError, ChecksumError, DownloadError, UnsafeArchiveError

__all__ = ["Resource", "DownloadError", "ChecksumError", "UnsafeArchiveError", "ArchiveTooLargeError", "Budget",
           "DownloadResult", "fetch", "file_digest", "check_digest", "extract", "download_dataset", "download",
           "downloads_dir", "default_deadline", "resumed_marker", "DEADLINE_ENV"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "clip-adapter-datasets/1 (+python-requests)"


@dataclass
class DownloadResult:
    """What :func:`download_dataset` did: files fetched or placed, already there, and steps left to the user."""

    name: str
    dataset_dir: Path
    placed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.manual


# -- HTTP ----------------------------------------------------------------------------------------------------
def _session():
    try:
        import requests
    except ImportError as e:  # pragma: no cover - requests is a declared dependency
        raise DownloadError("Downloading needs the 'requests' package; pip install requests.") from e
    s = requests.Session()
    # identity: a gzip Content-Encoding would change the bytes we checksum and break Range offsets.
    s.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return s


def _content_range_total(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


DEADLINE_ENV = "CLIP_ADAPTER_DOWNLOAD_DEADLINE"
DEFAULT_DEADLINE = 6 * 3600.0  # seconds for one file, all retries included; a server dripping bytes cannot hold us


def default_deadline() -> float:
    """The overall time limit of one file's download: ``$CLIP_ADAPTER_DOWNLOAD_DEADLINE`` seconds, else 6 hours."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return DEFAULT_DEADLINE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DownloadError(f"{DEADLINE_ENV} must be a number of seconds > 0. Got {raw!r} instead.")
    return value


def resumed_marker(dest: str | os.PathLike) -> Path:
    """The file saying ``dest`` was assembled from several HTTP responses (its hash is never trusted on first use)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".resumed")


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _validator(headers: Any) -> str | None:
    """The response's strong ETag, else its Last-Modified date: what ``If-Range`` can name (weak ETags cannot)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None


def _saved_validator(part: Path, url: str) -> str | None:
    try:
        saved = json.loads(_validator_file(part).read_text())
    except (OSError, ValueError):
        return None
    return saved.get("validator") if isinstance(saved, dict) and saved.get("url") == url else None


class _Restart(Exception):
    """This attempt ended without the whole file; the reason is the retry's log line."""


def fetch(url: str, dest: str | os.PathLike, *, session: Any = None, progress: bool = True,
          retries: int = 3, timeout: float = 60.0, backoff: float = 1.0, deadline: float | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial ``.part`` only when the server proves
    it is the same file.

    A ``.part`` is continued with ``Range`` + ``If-Range`` (the ETag or Last-Modified of the response that started
    it, saved next to it as ``.part.validator``); without a saved validator, when the server answers 200 (the file
    changed, or Range is not supported) or 416, the download restarts from zero: a ``.part`` is never accepted
    unread. ``dest`` appears only once the whole body has arrived (its size matches Content-Length/Content-Range).
    Connection drops are retried ``retries`` times (waiting ``backoff * 2**attempt`` seconds); ``timeout`` bounds
    each read and ``deadline`` (seconds, default :func:`default_deadline`) the whole download. A file assembled
    from several responses gets a :func:`resumed_marker` next to it.

    Raises:
        DownloadError: HTTP error, the deadline passed, or the connection kept failing (the ``.part`` is kept).
    """
    return _fetch(url, Path(dest), session=session, progress=progress, retries=retries, timeout=timeout,
                  backoff=backoff, deadline=deadline)[0]


def _fetch(url: str, dest: Path, *, session: Any, progress: bool, retries: int, timeout: float, backoff: float,
           deadline: float | None) -> tuple[Path, bool]:
    """:func:`fetch`, also saying whether the file was resumed (assembled from more than one response)."""
    import requests
    import urllib3

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    limit = default_deadline() if deadline is None else deadline
    if session is None:
        with _session() as own:
            return _fetch(url, dest, session=own, progress=progress, retries=retries, timeout=timeout,
                          backoff=backoff, deadline=limit)
    resumed_marker(dest).unlink(missing_ok=True)
    end = time.monotonic() + limit
    last_error = ""
    for attempt in range(retries + 1):
        try:
            resumed = _attempt(session, url, dest, part, timeout, progress, end, limit)
            if resumed:
                resumed_marker(dest).write_text(f"{url}\n")
            return dest, resumed
        except _Restart as e:
            last_error = str(e) or last_error
            log.info("%s: %s", dest.name, last_error)
        # r.raw.stream raises urllib3's own errors (ProtocolError, ReadTimeoutError), not requests' wrappers.
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError, OSError) as e:
            last_error = _short_error(e)
            log.warning("%s: attempt %d/%d failed (%s).", dest.name, attempt + 1, retries + 1, last_error)
            if attempt < retries and backoff:
                time.sleep(min(backoff * 2 ** attempt, max(0.0, end - time.monotonic())))
        if time.monotonic() > end:
            break
    have = part.stat().st_size if part.exists() else 0
    if have:
        raise DownloadError(f"Download of {url} did not complete ({last_error}); {have} bytes kept in {part}, "
                            f"rerun to resume.")
    part.unlink(missing_ok=True)
    raise DownloadError(f"Download of {url} failed ({last_error}).")


def _attempt(session: Any, url: str, dest: Path, part: Path, timeout: float, progress: bool, end: float,
             limit: float) -> bool:
    """One GET that continues (or restarts) ``part``; True when ``dest`` is complete and was resumed, False when it
    came from this one response. Raises :class:`_Restart` to try again."""
    offset = part.stat().st_size if part.exists() else 0
    validator = _saved_validator(part, url) if offset else None
    if offset and validator is None:
        log.info("%s: no validator saved for the partial file; restarting from zero.", dest.name)
        part.unlink()
        offset = 0
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=(15, timeout)) as r:
        mode, total = _resume_plan(r, url, dest, part, offset, validator)
        if mode == "wb":
            offset = 0
            _validator_file(part).unlink(missing_ok=True)
            if _validator(r.headers):
                atomic_write(_validator_file(part), json.dumps({"url": url, "validator": _validator(r.headers)}))
        with part.open(mode) as f, progress_bar(total, dest.name, "B", enabled=progress, initial=offset,
                                                unit_scale=True, unit_divisor=1024) as bar:
            for block in _blocks(r.raw):
                f.write(block)
                bar.update(len(block))
                if time.monotonic() > end:
                    f.flush()
                    raise DownloadError(f"Download of {url} passed its deadline of {limit:g} s; "
                                        f"{part.stat().st_size} bytes kept in {part}; rerun to resume, or raise "
                                        f"{DEADLINE_ENV}.")
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Restart(f"got {size} of {total} bytes")
    os.replace(part, dest)
    _validator_file(part).unlink(missing_ok=True)
    return offset > 0


def _blocks(raw: Any):
    """The body as it arrives: ``read1`` returns after each network read, so the deadline is checked even when a
    server sends one byte at a time (``stream`` would wait for a full block)."""
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # pragma: no cover - urllib3 < 2
        yield from raw.stream(CHUNK, decode_content=False)
        return
    while block := read1(CHUNK, decode_content=False):
        yield block


def _resume_plan(r: Any, url: str, dest: Path, part: Path, offset: int,
                 validator: str | None) -> tuple[str, int | None]:
    """How to write the response body: ``(file mode, total size)``; raises :class:`_Restart` after discarding a
    ``.part`` the server will not continue."""
    if offset and r.status_code == 416:
        # The .part is as long as (or longer than) the remote file: it may be another file; never accept it unread.
        _discard(part)
        raise _Restart("HTTP 416 for the partial file; restarting from zero")
    if r.status_code == 206 and offset:
        start = (r.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
        if start != str(offset):  # not the range we asked for: start over
            _discard(part)
            raise _Restart(f"server resumed at byte {start!r}, expected {offset}; restarting from zero")
        now = _validator(r.headers)
        if now and validator and now != validator:
            _discard(part)
            raise _Restart("the file changed on the server (another ETag/Last-Modified); restarting from zero")
        log.info("%s: resuming at %d bytes.", dest.name, offset)
        return "ab", _content_range_total(r.headers.get("Content-Range"))
    if r.status_code == 200:
        if offset:
            log.info("%s: the server sent the whole file (it changed, or ignores Range); restarting from zero.",
                     dest.name)
        length = r.headers.get("Content-Length")
        return "wb", int(length) if length and length.isdigit() else None
    raise DownloadError(f"Download of {url} failed: HTTP {r.status_code} {r.reason}.")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _short_error(e: BaseException) -> str:
    """urllib3 nests the useful part ('Failed to resolve host', 'Connection refused') deep in its message."""
    msg = " ".join(str(e).split())
    m = re.search(r"Caused by (\w+)\((.*)\)\)$", msg)
    if m:
        inner = re.sub(r"^<[^>]*>:\s*|^\w+\([^)]*\):\s*", "", m.group(2).strip("'\""))
        msg = f"{m.group(1)}: {inner}"
    msg = f"{type(e).__name__}: {msg}" if not m else msg
    return msg if len(msg) <= 200 else msg[:197] + "..."


# -- checksums -----------------------------------------------------------------------------------------------
def check_digest(path: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
                 delete: bool = True) -> None:
    """Check ``path`` against its sha256 (preferred) or md5; on mismatch delete it (if ``delete``) and raise.

    Raises:
        ChecksumError: ``Checksum mismatch for NAME: expected sha256 X, got Y; ...``.
    """
    path = Path(path)
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        if not expected:
            continue
        got = file_digest(path, algo)
        if got != expected.lower():
            if delete:
                path.unlink(missing_ok=True)
            gone = "the file was deleted; rerun to download it again" if delete else f"the file is {path}"
            raise ChecksumError(f"Checksum mismatch for {path.name}: expected {algo} {expected}, got {got}; {gone}.")
        return


def _recorded(record_file: Path) -> dict[str, str]:
    try:
        return json.loads(record_file.read_text())
    except (OSError, ValueError):
        return {}


def _check_known(path: Path, res: Resource, record_file: Path, key: str, delete: bool) -> str | None:
    """Check the published checksum, else the one recorded at first download (trust on first use).

    Returns the sha256 to record once the file has been placed successfully (None when nothing to record): a
    damaged first download must not become the reference, and neither must a file assembled from several HTTP
    responses (a resumed download: its parts may come from two versions of the file).
    """
    if res.sha256 or res.md5:
        check_digest(path, sha256=res.sha256, md5=res.md5, delete=delete)
        return None
    recorded = _recorded(record_file).get(key)
    if recorded:
        check_digest(path, sha256=recorded, delete=delete)
        return None
    if resumed_marker(path).exists():
        log.warning("%s: no published checksum and the download was resumed; its sha256 is not recorded as the "
                    "reference (the next full download will be).", key)
        return None
    return file_digest(path)


def _record(record_file: Path, key: str, sha256: str) -> None:
    records = {**_recorded(record_file), key: sha256}
    with atomic_path(record_file) as tmp:
        tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    log.info("%s: no published checksum; recorded sha256 %s in %s.", key, sha256, record_file)


# -- extraction ----------------------------------------------------------------------------------------------
def extract(archive: str | os.PathLike, target_dir: str | os.PathLike, members: Iterable[tuple[str, str]],
            inner: str | None = None, budget: Budget | None = None) -> list[str]:
    """Unpack the wanted members of ``archive`` and move each ``(member, dest)`` to ``target_dir/dest``; returns the
    dests placed.

    Only the listed members are unpacked (:func:`~clip_adapter.datasets.archive.unpack`: no links, no path outside,
    within ``budget``), into a hidden temporary folder inside ``target_dir`` (same filesystem, so the final move is one
    atomic ``os.replace`` per member), and the folder is removed whatever happens: an interrupted or refused
    extraction leaves no partial ``dest``. A ``dest`` that already exists is kept (it was placed whole before); a
    ``dest`` whose way goes through a symlink is refused.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    members = list(members)
    wanted = [m for m, _ in members]
    target_dir.mkdir(parents=True, exist_ok=True)
    dests = [(member, member_parts(dest, f"catalog entry for {archive.name}")) for member, dest in members]
    with tempfile.TemporaryDirectory(prefix=f".extract-{archive.name}-", dir=target_dir) as tmp:
        src = Path(tmp) / "a"
        if inner:
            unpack(archive, src, [inner], budget)
            inner_path = src / inner
            if not inner_path.is_file():
                raise DownloadError(f"Archive {archive.name} has no {inner!r}; expected it to hold that archive.")
            src = Path(tmp) / "b"
            unpack(inner_path, src, wanted, budget)
        else:
            unpack(archive, src, wanted, budget)
        missing = [m for m in wanted if not os.path.lexists(src / m)]
        if missing:
            raise DownloadError(f"Archive {archive.name} has no {missing[0]!r}; expected members "
                                f"{', '.join(wanted)}.")
        placed = []
        for member, parts in dests:
            final = target_dir.joinpath(*parts)
            if os.path.lexists(final):
                continue
            safe_makedirs(target_dir, parts[:-1], f"Extracting {archive.name}")
            os.replace(src / member, final)
            placed.append("/".join(parts))
    return placed


def _clean_stale(target_dir: Path) -> None:
    """Remove temporary folders left by a killed extraction (they are hidden and never look complete)."""
    if target_dir.is_dir():
        for p in target_dir.glob(".extract-*"):
            shutil.rmtree(p, ignore_errors=True)


# -- a whole dataset ---------------------------------------------------------------------------------------
def downloads_dir(root: str | os.PathLike, info: DatasetInfo) -> Path:
    """Where the archives of ``info`` are downloaded: ``<root>/.downloads/<dataset dir>/``."""
    return Path(root) / ".downloads" / info.directory


def download_dataset(info: DatasetInfo, root: str | os.PathLike, *, sources_dir: str | os.PathLike | None = None,
                     keep_archives: bool = False, progress: bool = True, session: Any = None,
                     deadline: float | None = None) -> DownloadResult:
    """Fetch, check and unpack every resource of ``info`` into ``<root>/<info.directory>``.

    Resources already in place are skipped, so rerunning after an interruption continues where it stopped. A
    resource file is looked up, in order, in ``sources_dir`` (a folder of files you already have, used in place),
    in ``<root>/.downloads/<dir>/`` (e.g. put there by hand), then fetched from its URLs. Archives fetched by
    this function are deleted after extraction unless ``keep_archives``; files from ``sources_dir`` are never
    modified. Do not run two downloads of the same dataset at once (they share ``.part`` and temporary files).
    ``deadline`` bounds each file's download in seconds (default :func:`default_deadline`).

    Returns:
        a :class:`DownloadResult`; ``result.manual`` lists the steps still needed (files without URL, dead URLs,
        the dataset's own manual steps). Nothing is raised for those: the caller prints them.

    Raises:
        DownloadError / ChecksumError / UnsafeArchiveError: a file failed its checksum or could not be unpacked.
    """
    job = _DatasetDownload(info, Path(root).expanduser(), sources_dir, keep_archives, progress, session)
    job.deadline = deadline
    try:
        for res in info.resources:
            if res.present(job.ds_dir):
                job.result.present.extend(res.targets)
                continue
            found = job.locate(res)
            if found is not None:
                job.place(res, *found)
    finally:
        job.close()
    return job.finish()


class _DatasetDownload:
    """The state of one :func:`download_dataset` call: folders, the shared HTTP session, what was done."""

    def __init__(self, info: DatasetInfo, root: Path, sources_dir, keep_archives: bool, progress: bool,
                 session: Any):
        self.info, self.root, self.keep_archives, self.progress = info, root, keep_archives, progress
        self.sources_dir = Path(sources_dir) if sources_dir else None
        self.ds_dir, self.dl_dir = root / info.directory, downloads_dir(root, info)
        self.record_file = root / ".downloads" / "recorded_sha256.json"
        self.result = DownloadResult(info.name, self.ds_dir)
        self._session, self._own_session = session, False
        self.deadline: float | None = None
        _clean_stale(self.ds_dir)

    def session(self) -> Any:
        """One HTTP session for all files, opened only if something is fetched."""
        if self._session is None:
            self._session, self._own_session = _session(), True
        return self._session

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def locate(self, res: Resource) -> tuple[Path, bool] | None:
        """(the resource's file, whether it is ours to move/delete), fetching it if needed; None (and a manual step
        in the result) when it cannot be had."""
        downloaded = self.dl_dir / res.filename
        if self.sources_dir is not None and (self.sources_dir / res.filename).is_file():
            return self.sources_dir / res.filename, False
        if downloaded.is_file():
            return downloaded, True
        if not res.urls:
            if not self.info.manual_steps:  # else the dataset's own steps explain these files
                self.result.manual.append(f"{res.filename}: {res.manual} Put the file at {downloaded} (or in the "
                                          f"folder given by --from) and rerun.")
            return None
        errors = []
        for url in res.urls:
            try:
                log.info("%s: downloading %s", self.info.name, url)
                return _fetch(url, downloaded, session=self.session(), progress=self.progress, retries=3,
                              timeout=60.0, backoff=1.0, deadline=self.deadline)[0], True
            except DownloadError as e:
                errors.append(str(e))
                log.warning("%s", e)
        hint = (res.manual or f"Download {res.urls[0]} by other means.").rstrip(".")
        self.result.manual.append(f"{res.filename}: {errors[-1]} {hint}; put the file at {downloaded} and rerun.")
        return None

    def place(self, res: Resource, path: Path, ours: bool) -> None:
        """Check the file, then unpack it (archives) or move/copy it into the dataset folder. An archive that is
        refused (unsafe member, over its size budget, damaged) is deleted when we downloaded it, and nothing of it
        is recorded as trusted."""
        key = f"{self.info.directory}/{res.filename}"
        to_record = _check_known(path, res, self.record_file, key, delete=ours)
        if res.is_archive:
            log.info("%s: extracting %s", self.info.name, path.name)
            budget = Budget(max_bytes=res.max_bytes) if res.max_bytes else None
            try:
                self.result.placed.extend(extract(path, self.ds_dir, res.members, inner=res.inner, budget=budget))
            except DownloadError:
                if ours:
                    path.unlink(missing_ok=True)
                    resumed_marker(path).unlink(missing_ok=True)
                raise
        else:
            dest = self.ds_dir / res.targets[0]
            self.ds_dir.mkdir(parents=True, exist_ok=True)
            safe_makedirs(self.ds_dir, member_parts(res.targets[0], key)[:-1], key)
            if ours:
                os.replace(path, dest)  # same filesystem (both under root): atomic
            else:
                with atomic_path(dest) as tmp:  # never move the user's own file
                    shutil.copyfile(path, tmp)
            self.result.placed.append(res.targets[0])
        if to_record:
            _record(self.record_file, key, to_record)
        if ours:
            resumed_marker(path).unlink(missing_ok=True)
        if ours and not self.keep_archives and res.is_archive:
            path.unlink(missing_ok=True)

    def finish(self) -> DownloadResult:
        """The result, with the dataset's own manual steps when required paths are still missing."""
        missing = [r for r in self.info.required if not (self.ds_dir / r).exists()]
        if missing:
            steps = [s.replace("{root}", str(self.root)) for s in self.info.manual_steps]
            self.result.manual.extend(s for s in steps if s not in self.result.manual)
            if not self.result.manual:
                self.result.manual.append(f"Still missing under {self.ds_dir}: {', '.join(missing)}.")
        return self.result


def _write_imagenet_classnames(root: Path) -> bool:
    """Write ``imagenet/classnames.txt`` from open_clip's CLIP class names (the list CoOp's file copies), paired
    with the sorted wnid folders of ``images/train``. Returns False when that is not possible yet."""
    ds_dir = root / "imagenet"
    target, train_dir = ds_dir / "classnames.txt", ds_dir / "images" / "train"
    if target.exists() or not train_dir.is_dir():
        return False
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError:
        log.warning("open_clip is not installed; get classnames.txt from CoOp (see the manual steps).")
        return False
    if len(wnids) != len(IMAGENET_CLASSNAMES):
        log.warning("%s has %d class folders; expected %d, classnames.txt not written.", train_dir, len(wnids),
                    len(IMAGENET_CLASSNAMES))
        return False
    with atomic_path(target) as tmp:
        tmp.write_text("".join(f"{w} {c}\n" for w, c in zip(wnids, IMAGENET_CLASSNAMES)))
    log.info("Wrote %s (CLIP's ImageNet class names).", target)
    return True


def download(name_or_info: str | DatasetInfo, root: str | os.PathLike | None = None, *,
             sources_dir: str | os.PathLike | None = None, keep_archives: bool = False,
             progress: bool = True, deadline: float | None = None) -> DownloadResult:
    """Fetch everything that can be fetched for a dataset into ``<root>/<directory>``; see
    :func:`download_dataset`. ``result.manual`` lists the steps left to do by hand."""
    info = get_info(name_or_info) if isinstance(name_or_info, str) else name_or_info
    root = resolve_root(root)
    if info.split_format == "imagenet":
        _write_imagenet_classnames(root)
    return download_dataset(info, root, sources_dir=sources_dir, keep_archives=keep_archives, progress=progress,
                            deadline=deadline)
