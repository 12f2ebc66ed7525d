"""The errors of fetching and unpacking dataset files; each carries a one-line message naming the file."""
from __future__ import annotations

__all__ = ["DownloadError", "ChecksumError", "UnsafeArchiveError", "ArchiveTooLargeError"]


class DownloadError(RuntimeError):
    """A file could not be fetched, checked or unpacked (one-line message)."""


class ChecksumError(DownloadError):
    """A downloaded file does not have its published (or first-recorded) checksum; the file has been deleted."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction folder, or is not a plain file or folder (a link,
    a device, a FIFO): the archive is refused as a whole."""


class ArchiveTooLargeError(DownloadError):
    """An archive unpacks (or declares it unpacks) to more than its size budget: a decompression bomb or a wrong
    file."""
