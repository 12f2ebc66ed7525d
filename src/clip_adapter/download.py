"""Fetch, check and unpack dataset files: HTTP(S) with resume, sha256/md5 checks, safe atomic extraction.

The pieces, each usable on its own:

* :func:`fetch` downloads one URL into ``<file>.part`` (resuming it with an HTTP ``Range`` request when it
  exists) and renames it to ``<file>`` only when every byte has arrived.
* :func:`check_digest` compares a file with its published sha256/md5; a mismatch deletes the file.
* :func:`extract` unpacks a zip/tar(.gz) into a temporary folder next to the target, refuses members that would
  land outside it, then moves each wanted member into place with one ``os.replace``: a path under the dataset
  folder exists only once it is complete.
* :func:`download_dataset` does all of that for every :class:`Resource` of a catalog entry and returns what is
  still missing (files that need a manual step).
"""
from __future__ import annotations

import hashlib
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
from typing import TYPE_CHECKING, Any

from .io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import DatasetInfo

__all__ = ["Resource", "DownloadError", "ChecksumError", "UnsafeArchiveError", "DownloadResult", "fetch",
           "file_digest", "check_digest", "extract", "download_dataset", "downloads_dir"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "clip-adapter-datasets/1 (+python-requests)"


class DownloadError(RuntimeError):
    """A file could not be fetched, checked or unpacked (one-line message)."""


class ChecksumError(DownloadError):
    """A downloaded file does not have its published (or first-recorded) checksum; the file has been deleted."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction folder (path traversal, links, devices)."""


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
    """

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    members: tuple[tuple[str, str], ...] = ()
    dest: str | None = None
    inner: str | None = None
    manual: str = ""

    @property
    def is_archive(self) -> bool:
        return bool(self.members)

    @property
    def targets(self) -> list[str]:
        """Paths (relative to the dataset folder) this resource creates."""
        return [d for _, d in self.members] if self.members else [self.dest or self.filename]

    def present(self, dataset_dir: Path) -> bool:
        return all((dataset_dir / t).exists() for t in self.targets)


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
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if session is None:
        with _session() as own:
            return fetch(url, dest, session=own, progress=progress, retries=retries, timeout=timeout,
                         backoff=backoff)
    last_error = ""
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=(15, timeout)) as r:
                if offset and r.status_code == 416:
                    # Nothing left to send: the .part may already be whole.
                    if _content_range_total(r.headers.get("Content-Range")) == offset:
                        os.replace(part, dest)
                        return dest
                    part.unlink()
                    continue
                if r.status_code == 206 and offset:
                    start = (r.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
                    if start != str(offset):  # not the range we asked for: start over
                        log.info("%s: server resumed at byte %r, not %d; restarting.", dest.name, start, offset)
                        part.unlink()
                        last_error = f"server resumed at byte {start!r}, expected {offset}"
                        continue
                    mode, total = "ab", _content_range_total(r.headers.get("Content-Range"))
                elif r.status_code == 200:
                    if offset:
                        log.info("%s: server ignored the Range request; downloading from the start.", dest.name)
                    offset, mode = 0, "wb"
                    length = r.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                else:
                    raise DownloadError(f"Download of {url} failed: HTTP {r.status_code} {r.reason}.")
                if offset:
                    log.info("%s: resuming at %d bytes.", dest.name, offset)
                with part.open(mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                unit_divisor=1024, desc=dest.name, disable=not progress,
                                                leave=False) as bar:
                    for block in r.raw.stream(CHUNK, decode_content=False):
                        f.write(block)
                        bar.update(len(block))
            size = part.stat().st_size
            if total is not None and size != total:
                last_error = f"got {size} of {total} bytes"
                continue
            os.replace(part, dest)
            return dest
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
def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


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
    root = Path(root).expanduser()
    ds_dir = root / info.directory
    dl_dir = downloads_dir(root, info)
    record_file = root / ".downloads" / "recorded_sha256.json"
    result = DownloadResult(info.name, ds_dir)
    _clean_stale(ds_dir)
    opened: list[Any] = []

    def get_session() -> Any:  # one HTTP session for all files, opened only if something is fetched
        nonlocal session
        if session is None:
            session = _session()
            opened.append(session)
        return session

    try:
        for res in info.resources:
            if res.present(ds_dir):
                result.present.extend(res.targets)
                continue
            local = Path(sources_dir) / res.filename if sources_dir else None
            downloaded = dl_dir / res.filename
            if local is not None and local.is_file():
                path, ours = local, False
            elif downloaded.is_file():
                path, ours = downloaded, True
            elif res.urls:
                path, ours, errors = None, True, []
                for url in res.urls:
                    try:
                        log.info("%s: downloading %s", info.name, url)
                        path = fetch(url, downloaded, session=get_session(), progress=progress)
                        break
                    except DownloadError as e:
                        errors.append(str(e))
                        log.warning("%s", e)
                if path is None:
                    hint = (res.manual or f"Download {res.urls[0]} by other means.").rstrip(".")
                    result.manual.append(f"{res.filename}: {errors[-1]} {hint}; put the file at {downloaded} and "
                                         f"rerun.")
                    continue
            else:
                if not info.manual_steps:  # else the dataset's own steps explain these files
                    result.manual.append(f"{res.filename}: {res.manual} Put the file at {downloaded} (or in the "
                                         f"folder given by --from) and rerun.")
                continue
            key = f"{info.directory}/{res.filename}"
            to_record = _check_known(path, res, record_file, key, delete=ours)
            if res.is_archive:
                log.info("%s: extracting %s", info.name, path.name)
                result.placed.extend(extract(path, ds_dir, res.members, inner=res.inner))
            else:
                dest = ds_dir / res.targets[0]
                dest.parent.mkdir(parents=True, exist_ok=True)
                if ours:
                    os.replace(path, dest)  # same filesystem (both under root): atomic
                else:
                    with atomic_path(dest) as tmp:  # never move the user's own file
                        shutil.copyfile(path, tmp)
                result.placed.append(res.targets[0])
            if to_record:
                _record(record_file, key, to_record)
            if ours and not keep_archives and res.is_archive:
                path.unlink(missing_ok=True)
    finally:
        for sess in opened:
            sess.close()
    missing = [r for r in info.required if not (ds_dir / r).exists()]
    if missing:
        steps = [s.replace("{root}", str(root)) for s in info.manual_steps]
        result.manual.extend(s for s in steps if s not in result.manual)
        if not result.manual:
            result.manual.append(f"Still missing under {ds_dir}: {', '.join(missing)}.")
    return result
