"""Unpack a zip or tar(.gz/.bz2/.xz) without trusting it: our own member loop, not ``extractall``.

What an archive can make us do is limited to creating regular files and folders under the output folder:

* the format comes from the file's first bytes, not its name (a tar renamed ``.zip`` is read as a tar);
* only the wanted members (path prefixes) are written; everything else is read past and dropped;
* a wanted symlink, hard link, device, FIFO or socket refuses the whole archive (one line naming the archive and the
  member), so no link is ever created or followed; this does not depend on the interpreter's ``tarfile`` filters
  (CVE-2025-4517 let a chain of symlinks escape them on Python < 3.10.18 / 3.11.13 / 3.12.11 / 3.13.4);
* every member path is checked before anything is written: relative, no ``..``, no drive letter, no NUL; each folder
  on the way is created by us or, if it exists, is a real folder (``lstat``: never a symlink) inside the output;
* files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: a member never overwrites or writes through anything;
  modes from the archive (setuid bits...) are ignored;
* a size budget (:class:`Budget`: total bytes and a ratio to the archive's size) is checked against each member's
  declared size before writing it and against the bytes actually decompressed while reading (headers can lie);
* compressed tars are read to the very end, so a torn download fails its gzip/bz2/xz check before anything unpacked
  from it is used (zip members are checked against their CRC as they are read).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import ArchiveTooLargeError, DownloadError, UnsafeArchiveError

__all__ = ["Budget", "DEFAULT_BUDGET", "archive_kind", "unpack", "member_parts", "safe_makedirs"]

CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)


@dataclass(frozen=True)
class Budget:
    """How much an archive may unpack to: at most ``max_bytes`` in all, and at most ``max_ratio`` times the
    archive's own size (plus ``slack``, since tar padding of a tiny archive compresses to almost nothing).

    Image datasets are already-compressed JPEG/PNG files: their archives unpack to about their own size, so a 100x
    ratio only stops bombs (a 2 MB gzip of zeros unpacks to 2 GB).
    """

    max_bytes: int = 256 << 30
    max_ratio: float = 100.0
    slack: int = 16 << 20

    def limit(self, packed_size: int) -> int:
        """The most bytes an archive of ``packed_size`` bytes may unpack to (decompressed stream and files)."""
        return min(self.max_bytes, max(self.slack, int(self.max_ratio * packed_size)))


DEFAULT_BUDGET = Budget()


def archive_kind(path: str | os.PathLike) -> str:
    """``zip``, ``tar``, ``gz``, ``bz2`` or ``xz`` from the file's first bytes (the name is not trusted)."""
    with open(path, "rb") as f:
        head = f.read(262)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gz"
    if head[:3] == b"BZh":
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[257:262] == b"ustar":
        return "tar"
    raise DownloadError(f"{path} is not a zip or tar(.gz/.bz2/.xz) archive (judged by its first bytes, not its name).")


def member_parts(name: str, archive: str) -> tuple[str, ...]:
    """The path components of a member name; refuses absolute paths, ``..``, drive letters and NUL bytes."""
    clean = name.replace("\\", "/")
    bad = ("it is absolute" if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") else
           "it holds a NUL byte" if "\x00" in clean else
           "it holds '..'" if ".." in PurePosixPath(clean).parts else "")
    parts = tuple(p for p in clean.split("/") if p not in ("", "."))
    if bad or not parts:
        raise UnsafeArchiveError(f"Archive {archive} has unsafe member {name!r} ({bad or 'empty path'}); refusing to "
                                 f"extract it.")
    return parts


def safe_makedirs(root: Path, parts: Sequence[str], what: str) -> Path:
    """``root / parts`` as a folder, creating what is missing; every existing step must be a real folder (a symlink
    on the way is refused, never followed). ``what`` names the archive in the error."""
    cur = root
    for p in parts:
        cur = cur / p
        try:
            os.mkdir(cur)
        except FileExistsError:
            st = os.lstat(cur)
            if not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
                raise UnsafeArchiveError(f"{what}: {cur} is {kind}; refusing to write through it.") from None
    return cur


class _Counted(io.RawIOBase):
    """A read-only stream that counts what it hands out and stops past ``limit`` bytes (a decompression bomb)."""

    def __init__(self, raw: IO[bytes], limit: int, on_exceed):
        self.raw, self.limit, self.n, self.on_exceed = raw, limit, 0, on_exceed

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        self.n += len(data)
        if self.n > self.limit:
            self.on_exceed(self.n)
        b[:len(data)] = data
        return len(data)


class _Writer:
    """Writes members under ``out`` within ``limit`` bytes; see the module docstring for what it refuses."""

    def __init__(self, out: Path, archive: Path, wanted: Sequence[str] | None, limit: int, budget: Budget):
        self.out, self.archive, self.limit, self.budget = out, archive, limit, budget
        self.wanted = None if wanted is None else [member_parts(w, archive.name) for w in wanted]
        self.written = 0
        self._dirs: set[tuple[str, ...]] = {()}
        out.mkdir(parents=True, exist_ok=True)

    def too_large(self, n: int, declared: bool = False) -> None:
        how = "declares" if declared else "unpacks to"
        size = self.archive.stat().st_size
        raise ArchiveTooLargeError(
            f"Archive {self.archive.name} {how} more than {self.limit} bytes ({n} so far; its budget is at most "
            f"{self.budget.max_bytes} bytes and {self.budget.max_ratio:g}x its {size}-byte size); refusing it as a "
            f"decompression bomb or a wrong file.")

    def want(self, parts: tuple[str, ...]) -> bool:
        return self.wanted is None or any(parts[:len(w)] == w for w in self.wanted)

    def unsafe(self, name: str, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"Archive {self.archive.name} has unsafe member {name!r} ({why}); refusing to "
                                  f"extract it.")

    def folder(self, parts: tuple[str, ...]) -> Path:
        if parts not in self._dirs:
            safe_makedirs(self.out, parts, f"Archive {self.archive.name}")
            self._dirs.update(parts[:i] for i in range(1, len(parts) + 1))
        return self.out.joinpath(*parts)

    def file(self, name: str, parts: tuple[str, ...], src: IO[bytes], declared: int) -> None:
        if self.written + declared > self.limit:
            self.too_large(self.written + declared, declared=True)
        path = self.folder(parts[:-1]) / parts[-1]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o666)
        except FileExistsError:
            raise self.unsafe(name, "the same path appears twice") from None
        with os.fdopen(fd, "wb") as f:
            while block := src.read(CHUNK):
                self.written += len(block)
                if self.written > self.limit:
                    self.too_large(self.written)
                f.write(block)


def _link_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return f"a symbolic link to {m.linkname!r}"
    if m.islnk():
        return f"a hard link to {m.linkname!r}"
    if m.ischr() or m.isblk():
        return "a device"
    if m.isfifo():
        return "a FIFO"
    return f"tar member type {m.type!r}"


def _unpack_tar(stream: IO[bytes], w: _Writer) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as t:
        for m in t:
            parts = member_parts(m.name, w.archive.name)
            if not w.want(parts):
                continue
            if m.isdir():
                w.folder(parts)
            elif m.isreg():
                src = t.extractfile(m)
                w.file(m.name, parts, src, m.size)
            else:
                raise w.unsafe(m.name, f"{_link_kind(m)}; only files and folders are extracted")


def _zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0  # 3: made on Unix


def _unpack_zip(archive: Path, w: _Writer) -> None:
    with zipfile.ZipFile(archive) as z:
        todo = []
        for info in z.infolist():
            parts = member_parts(info.filename, archive.name)
            if not w.want(parts):
                continue
            fmt = stat.S_IFMT(_zip_mode(info))
            if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "a symbolic link" if fmt == stat.S_IFLNK else "a device, FIFO or socket"
                raise w.unsafe(info.filename, f"{kind}; only files and folders are extracted")
            todo.append((info, parts))
        declared = sum(i.file_size for i, _ in todo if not i.is_dir())
        if declared > w.limit:  # from the central directory, before writing anything
            w.too_large(declared, declared=True)
        for info, parts in todo:
            if info.is_dir():
                w.folder(parts)
                continue
            with z.open(info) as src:  # checks the member's CRC when read to the end
                w.file(info.filename, parts, src, info.file_size)


_OPENERS = {"gz": gzip.GzipFile, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}


def unpack(archive: str | os.PathLike, out: str | os.PathLike, wanted: Sequence[str] | None = None,
           budget: Budget | None = None) -> int:
    """Unpack the members of ``archive`` under the path prefixes ``wanted`` (all when None) into ``out``; returns the
    bytes written.

    Raises:
        UnsafeArchiveError: a member path leaves ``out``, or a wanted member is not a file or folder.
        ArchiveTooLargeError: the archive (declares it) unpacks to more than the budget allows.
        DownloadError: not an archive, or damaged (truncated, bad CRC).
    """
    archive, out = Path(archive), Path(out)
    budget = budget or DEFAULT_BUDGET
    kind = archive_kind(archive)
    w = _Writer(out, archive, wanted, budget.limit(archive.stat().st_size), budget)
    try:
        if kind == "zip":
            _unpack_zip(archive, w)
            return w.written
        with open(archive, "rb") as raw:
            decomp = raw if kind == "tar" else _OPENERS[kind](fileobj=raw) if kind == "gz" else _OPENERS[kind](raw)
            stream = _Counted(decomp, w.limit, w.too_large)
            _unpack_tar(io.BufferedReader(stream, CHUNK), w)
            while stream.read(CHUNK):  # to the end: the gzip/bz2/xz trailer check runs on the last read
                pass
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        raise _damaged(archive, e) from None
    except OSError as e:
        if e.errno is None:  # raised by a decompressor (bad CRC, bad data), not by the filesystem
            raise _damaged(archive, e) from None
        raise
    return w.written


def _damaged(archive: Path, e: BaseException) -> DownloadError:
    msg = " ".join(str(e).split())[:200]
    return DownloadError(f"Archive {archive} is damaged ({type(e).__name__}: {msg}); delete it and rerun.")
