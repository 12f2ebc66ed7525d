"""Small helpers shared by every module: atomic writes, JSON, file digests, safe names, version stamps, the cache
root and the torch thread count. The bottom layer: it imports nothing from the package."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

__all__ = ["atomic_path", "atomic_dir", "recover_dir", "write_error", "WriteError", "DISK_ERRNOS", "write_json", "write_text", "read_json", "file_digest", "safe_name",
           "package_versions", "default_cache_dir", "torch_threads", "progress_bar", "worker_error"]


DISK_ERRNOS = {errno.ENOSPC: "the disk is full; free some space or choose another place",
               errno.EDQUOT: "the disk quota is exceeded; free some space or choose another place",
               errno.EROFS: "the file system is read-only; choose a writable place",
               errno.EACCES: "permission denied; choose a place you can write to",
               errno.EPERM: "permission denied; choose a place you can write to"}


class WriteError(OSError):
    """A write failed for a reason the user can act on (full disk, read-only, no permission); the message names the
    user's path, never an internal temporary file."""


def write_error(e: OSError, path: str | os.PathLike, what: str = "file") -> OSError:
    """``e`` as one line naming ``path`` (the user's, not the temporary file) and what to do, for the errnos of
    :data:`DISK_ERRNOS`; other errors unchanged."""
    if isinstance(e, WriteError) or e.errno not in DISK_ERRNOS:
        return e
    err = WriteError(f"Cannot write the {what} {path}: {DISK_ERRNOS[e.errno]} ({os.strerror(e.errno)}).")
    err.errno = e.errno
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    Readers never see a half-written file: either the old file, no file, or the complete new one. A full disk or a
    read-only folder is a one-line :class:`WriteError` naming ``path`` (``what`` says what it is).
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    except OSError as e:
        raise write_error(e, path, what) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: str | os.PathLike) -> None:
    """Finish what an interrupted :func:`atomic_dir` left: the previous folder set aside but no new one in place
    (a kill between its two renames) is put back; an aside copy next to a complete folder is removed."""
    path = Path(path)
    old = _aside(path)
    if not old.is_dir() or old.is_symlink():
        return
    if not path.exists() and not path.is_symlink():
        os.replace(old, path)
        log.warning("%s was restored from %s (a save was interrupted).", path, old.name)
    else:
        shutil.rmtree(old, ignore_errors=True)


def _clean_stale_tmp(path: Path) -> None:
    """Remove ``.NAME.<pid>-*.tmp`` folders of earlier, interrupted saves whose process is gone."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        m = re.fullmatch(rf"\.{re.escape(path.name)}\.(\d+)-[^/]*\.tmp", tmp.name)
        if tmp.is_dir() and not tmp.is_symlink() and not (m and _alive(int(m.group(1)))):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` as a whole when the block succeeds.

    The old folder stays until the new one is in place: it is renamed aside, the new one renamed in, then the old
    one deleted; :func:`recover_dir` puts it back if a kill came between the two renames. Temporary folders of
    earlier interrupted saves are removed first. Every file gets the usual permissions (``0666 & ~umask``, as
    :func:`atomic_path`), whatever the library that wrote it chose. Disk errors: a one-line :class:`WriteError`
    naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        _clean_stale_tmp(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
        yield tmp
        mask = _umask()
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if path.exists():
            old = _aside(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise write_error(e, path, what) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as sorted, indented, strict JSON (NaN is refused, not written), atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (readers see the old file or the whole new one)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB blocks (checkpoints and archives are large)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``"1 run"``, ``"2 runs"``, ``"0 runs"``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else (many or noun + 's')}"


def safe_name(name: str, default: str = "_") -> str:
    """``name`` as one path component: runs of characters other than ``A-Za-z0-9._+-`` become ``_`` (80 at most),
    and leading dots too, so that the result is never ``.``, ``..`` or a hidden name."""
    out = re.sub(r"[^A-Za-z0-9._+-]+", "_", name)[:80]
    return re.sub(r"^\.+", lambda m: "_" * len(m.group()), out) or default


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with a one-line error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}).") from None


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change a result, for every result record."""
    out = {"python": platform.python_version()}
    for name in ("clip-adapter", "torch", "torchvision", "open_clip_torch", "timm", "scikit-learn",
                 "numpy", "safetensors", "sentence-transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_cache_dir() -> Path:
    """Root of every cache (features, alignment maps): ``$CLIP_ADAPTER_CACHE`` or ``~/.cache/clip_adapter``; per
    user, and created readable by its owner only (0700) when missing: cached features reveal the images."""
    env = os.environ.get("CLIP_ADAPTER_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "clip_adapter"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.mkdir(path, 0o700)
    return path


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count (``None``/0: unchanged).

    Small matrix products and LAPACK calls run faster single-threaded: on a busy machine each parallel region waits
    for every OpenMP thread to get a time slice."""
    if not n:
        yield
        return
    import torch
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


HEARTBEAT_SECONDS = 30.0  # off a terminal, a running stage prints a line at least this often


class _StageLine:
    """A progress "bar" for logs: one line when the stage ends (``desc: n unit in t s``), and a line every
    :data:`HEARTBEAT_SECONDS` while a long stage runs, so that a log is never silent for minutes."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, min_seconds: float = 0.0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._t0, self._postfix = time.perf_counter(), ""
        self._last, self._min_seconds = self._t0, min_seconds

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.desc is not None and now - self._last >= HEARTBEAT_SECONDS:
            self._last = now
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.desc}: {self.n}{of} {self.unit} after {now - self._t0:.0f} s ...", file=sys.stderr,
                  flush=True)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self._postfix = s

    def close(self) -> None:
        if self.desc is None:
            return
        if time.perf_counter() - self._t0 < self._min_seconds:  # a quick stage: not worth a log line
            self.desc = None
            return
        of = f"/{self.total}" if self.total is not None and self.total != self.n else ""
        more = f" ({self._postfix})" if self._postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} in {time.perf_counter() - self._t0:.1f} s{more}",
              file=sys.stderr, flush=True)
        self.desc = None

    def __enter__(self) -> "_StageLine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, min_seconds: float = 0.0,
                 **kw: Any):
    """A tqdm bar on a terminal; one line per finished stage when stderr is not one (CI logs, ``> log 2>&1``), so
    logs do not fill with carriage-return frames; nothing when ``enabled`` is false. Use as a context manager with
    ``update(n)``. Off a terminal, a stage shorter than ``min_seconds`` prints nothing."""
    if not enabled:
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, unit=unit, disable=True, **kw)
    if not getattr(sys.stderr, "isatty", lambda: False)():
        return _StageLine(total, desc, unit, kw.get("initial", 0), min_seconds)
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, **kw)


def worker_error(e: BaseException) -> BaseException:
    """A DataLoader worker's exception as one line: torch re-raises it as "Caught X in DataLoader worker process 0."
    plus the worker's whole traceback; keep the original last line (our one-line message), with its type."""
    text = str(e)
    if "Original Traceback" not in text:
        return e
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1].strip()
    name, sep, msg = last.partition(": ")
    return type(e)(msg if sep and name.isidentifier() else last)

