"""Fetch, check and unpack dataset files: HTTP(S) with resume, sha256/md5 checks, safe atomic extraction.

The pieces, each usable on its own:

* :func:`fetch` downloads one URL into ``<file>.part`` (resuming it with an HTTP ``Range`` request when it
  exists) and renames it to ``<file>`` only when every byte has arrived.
* :func:`check_digest` compares a file with its published sha256/md5; a mismatch deletes the file.
* :func:`extract` unpacks a zip/tar(.gz) into a temporary folder next to the target, refuses members that would
  land outside it, then moves each wanted member into place with one ``os.replace``: a path under the dataset
  folder exists only once it is complete.
* :func:`download_dataset` does all of that for every :class:`~clip_adapter.datasets.catalog.Resource` of a catalog
  row and returns what is still missing (files that need a manual step); :func:`download` takes a dataset name.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..io import atomic_path, file_digest, progress_bar
from .catalog import DatasetInfo, Resource, get_info, resolve_root

__all__ = ["Resource", "DownloadError", "ChecksumError", "UnsafeArchiveError", "DownloadResult", "fetch",
           "file_digest", "check_digest", "extract", "download_dataset", "download", "downloads_dir"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "clip-adapter-datasets/1 (+python-requests)"


class DownloadError(RuntimeError):
    """A file could not be fetched, checked or unpacked (one-line message)."""


class ChecksumError(DownloadError):
    """A downloaded file does not have its published (or first-recorded) checksum; the file has been deleted."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction folder (path traversal, links, devices)."""


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


def fetch(url: str, dest: str | os.PathLike, *, session: Any = None, progress: bool = True,
          retries: int = 3, timeout: float = 60.0, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial ``.part`` with an HTTP Range request.

    ``dest`` appears only once the whole body has arrived (its size matches Content-Length/Content-Range). A
    server that ignores Range restarts the file from zero. Connection drops are retried ``retries`` times
    (waiting ``backoff * 2**attempt`` seconds), each retry resuming where the last one stopped.

    Raises:
        DownloadError: HTTP error, or the connection kept failing (the ``.part`` is kept for a later resume).
    """
    import requests
    import urllib3

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if session is None:
        with _session() as own:
            return fetch(url, dest, session=own, progress=progress, retries=retries, timeout=timeout,
                         backoff=backoff)
    last_error = ""
    for attempt in range(retries + 1):
        try:
            retry = _attempt(session, url, dest, part, timeout, progress)
            if retry is None:
                return dest
            last_error = retry or last_error
            continue
        # r.raw.stream raises urllib3's own errors (ProtocolError, ReadTimeoutError), not requests' wrappers.
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError, OSError) as e:
            last_error = _short_error(e)
            log.warning("%s: attempt %d/%d failed (%s).", dest.name, attempt + 1, retries + 1, last_error)
            if attempt < retries and backoff:
                time.sleep(backoff * 2 ** attempt)
    have = part.stat().st_size if part.exists() else 0
    if have:
        raise DownloadError(f"Download of {url} did not complete ({last_error}); {have} bytes kept in {part}, "
                            f"rerun to resume.")
    part.unlink(missing_ok=True)
    raise DownloadError(f"Download of {url} failed ({last_error}).")


def _attempt(session: Any, url: str, dest: Path, part: Path, timeout: float, progress: bool) -> str | None:
    """One GET that continues ``part``; None once ``dest`` is complete, else why to retry ("" for no new reason)."""
    offset = part.stat().st_size if part.exists() else 0
    with session.get(url, headers={"Range": f"bytes={offset}-"} if offset else {}, stream=True,
                     timeout=(15, timeout)) as r:
        plan = _resume_plan(r, url, dest, part, offset)
        if not isinstance(plan, tuple):
            return plan
        mode, total, offset = plan
        with part.open(mode) as f, progress_bar(total, dest.name, "B", enabled=progress, initial=offset,
                                                unit_scale=True, unit_divisor=1024) as bar:
            for block in r.raw.stream(CHUNK, decode_content=False):
                f.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        return f"got {size} of {total} bytes"
    os.replace(part, dest)
    return None


def _resume_plan(r: Any, url: str, dest: Path, part: Path, offset: int) -> tuple[str, int | None, int] | str | None:
    """How to write the response body: ``(file mode, total size, start offset)``; or None when the ``.part`` was
    already whole (now ``dest``); or a retry reason after discarding a ``.part`` the server will not continue."""
    if offset and r.status_code == 416:
        # Nothing left to send: the .part may already be whole.
        if _content_range_total(r.headers.get("Content-Range")) == offset:
            os.replace(part, dest)
            return None
        part.unlink()
        return ""
    if r.status_code == 206 and offset:
        start = (r.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
        if start != str(offset):  # not the range we asked for: start over
            log.info("%s: server resumed at byte %r, not %d; restarting.", dest.name, start, offset)
            part.unlink()
            return f"server resumed at byte {start!r}, expected {offset}"
        log.info("%s: resuming at %d bytes.", dest.name, offset)
        return "ab", _content_range_total(r.headers.get("Content-Range")), offset
    if r.status_code == 200:
        if offset:
            log.info("%s: server ignored the Range request; downloading from the start.", dest.name)
        length = r.headers.get("Content-Length")
        return "wb", int(length) if length and length.isdigit() else None, 0
    raise DownloadError(f"Download of {url} failed: HTTP {r.status_code} {r.reason}.")


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
    damaged first download must not become the reference.
    """
    if res.sha256 or res.md5:
        check_digest(path, sha256=res.sha256, md5=res.md5, delete=delete)
        return None
    recorded = _recorded(record_file).get(key)
    if recorded:
        check_digest(path, sha256=recorded, delete=delete)
        return None
    return file_digest(path)


def _record(record_file: Path, key: str, sha256: str) -> None:
    records = {**_recorded(record_file), key: sha256}
    with atomic_path(record_file) as tmp:
        tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    log.info("%s: no published checksum; recorded sha256 %s in %s.", key, sha256, record_file)


# -- extraction ----------------------------------------------------------------------------------------------
def _unsafe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # () matches nothing on Pythons without tar filters


def _unpack(archive: Path, out: Path) -> None:
    """Unpack a zip or tar(.gz/.bz2/.xz) into ``out``, refusing members that escape it."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    if _unsafe_name(info.filename):
                        raise UnsafeArchiveError(f"Archive {archive.name} has unsafe member {info.filename!r} "
                                                 f"(absolute or '..' path); refusing to extract it.")
                z.extractall(out)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as t:
                if hasattr(tarfile, "data_filter"):
                    # 'data' refuses '..', absolute links, links leaving the folder, devices; strips setuid bits.
                    t.extractall(out, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    for m in t.getmembers():
                        if _unsafe_name(m.name) or m.islnk() or m.issym() or m.isdev():
                            raise UnsafeArchiveError(f"Archive {archive.name} has unsafe member {m.name!r}; "
                                                     f"refusing to extract it.")
                    t.extractall(out)
        else:
            raise DownloadError(f"{archive} is not a zip or tar archive.")
    except _TAR_FILTER_ERROR as e:
        member = e.tarinfo.name if getattr(e, "tarinfo", None) is not None else "?"
        raise UnsafeArchiveError(f"Archive {archive.name} has unsafe member {member!r} ({type(e).__name__}); "
                                 f"refusing to extract it.") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DownloadError(f"Archive {archive} is damaged ({type(e).__name__}: {e}); delete it and rerun.") from None


def extract(archive: str | os.PathLike, target_dir: str | os.PathLike, members: Iterable[tuple[str, str]],
            inner: str | None = None) -> list[str]:
    """Unpack ``archive`` and move each ``(member, dest)`` to ``target_dir/dest``; returns the dests placed.

    Everything is unpacked into a hidden temporary folder inside ``target_dir`` (same filesystem, so the final
    move is one atomic ``os.replace`` per member) and the folder is removed whatever happens: an interrupted
    extraction leaves no partial ``dest``. A ``dest`` that already exists is kept (it was placed whole before).
    """
    archive, target_dir = Path(archive), Path(target_dir)
    members = list(members)
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".extract-{archive.name}-", dir=target_dir) as tmp:
        src = Path(tmp) / "a"
        _unpack(archive, src)
        if inner:
            inner_path = src / inner
            if not inner_path.is_file():
                raise DownloadError(f"Archive {archive.name} has no {inner!r}; expected it to hold that archive.")
            _unpack(inner_path, Path(tmp) / "b")
            src = Path(tmp) / "b"
        missing = [m for m, _ in members if not (src / m).exists()]
        if missing:
            raise DownloadError(f"Archive {archive.name} has no {missing[0]!r}; expected members "
                                f"{', '.join(m for m, _ in members)}.")
        placed = []
        for member, dest in members:
            final = target_dir / dest
            if final.exists():
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src / member, final)
            placed.append(dest)
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
                     keep_archives: bool = False, progress: bool = True, session: Any = None) -> DownloadResult:
    """Fetch, check and unpack every resource of ``info`` into ``<root>/<info.directory>``.

    Resources already in place are skipped, so rerunning after an interruption continues where it stopped. A
    resource file is looked up, in order, in ``sources_dir`` (a folder of files you already have, used in place),
    in ``<root>/.downloads/<dir>/`` (e.g. put there by hand), then fetched from its URLs. Archives fetched by
    this function are deleted after extraction unless ``keep_archives``; files from ``sources_dir`` are never
    modified. Do not run two downloads of the same dataset at once (they share ``.part`` and temporary files).

    Returns:
        a :class:`DownloadResult`; ``result.manual`` lists the steps still needed (files without URL, dead URLs,
        the dataset's own manual steps). Nothing is raised for those: the caller prints them.

    Raises:
        DownloadError / ChecksumError / UnsafeArchiveError: a file failed its checksum or could not be unpacked.
    """
    job = _DatasetDownload(info, Path(root).expanduser(), sources_dir, keep_archives, progress, session)
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
                return fetch(url, downloaded, session=self.session(), progress=self.progress), True
            except DownloadError as e:
                errors.append(str(e))
                log.warning("%s", e)
        hint = (res.manual or f"Download {res.urls[0]} by other means.").rstrip(".")
        self.result.manual.append(f"{res.filename}: {errors[-1]} {hint}; put the file at {downloaded} and rerun.")
        return None

    def place(self, res: Resource, path: Path, ours: bool) -> None:
        """Check the file, then unpack it (archives) or move/copy it into the dataset folder."""
        key = f"{self.info.directory}/{res.filename}"
        to_record = _check_known(path, res, self.record_file, key, delete=ours)
        if res.is_archive:
            log.info("%s: extracting %s", self.info.name, path.name)
            self.result.placed.extend(extract(path, self.ds_dir, res.members, inner=res.inner))
        else:
            dest = self.ds_dir / res.targets[0]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if ours:
                os.replace(path, dest)  # same filesystem (both under root): atomic
            else:
                with atomic_path(dest) as tmp:  # never move the user's own file
                    shutil.copyfile(path, tmp)
            self.result.placed.append(res.targets[0])
        if to_record:
            _record(self.record_file, key, to_record)
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
             progress: bool = True) -> DownloadResult:
    """Fetch everything that can be fetched for a dataset into ``<root>/<directory>``; see
    :func:`download_dataset`. ``result.manual`` lists the steps left to do by hand."""
    info = get_info(name_or_info) if isinstance(name_or_info, str) else name_or_info
    root = resolve_root(root)
    if info.split_format == "imagenet":
        _write_imagenet_classnames(root)
    return download_dataset(info, root, sources_dir=sources_dir, keep_archives=keep_archives, progress=progress)
