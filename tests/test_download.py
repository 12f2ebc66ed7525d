"""download.py against a real HTTP server on 127.0.0.1 (with Range support) serving generated archives. Offline."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from clip_adapter import datasets as data
from clip_adapter.datasets import builtin, catalog
from clip_adapter.datasets import DatasetInfo
from clip_adapter.datasets.fetch import (ChecksumError, DownloadError, Resource, UnsafeArchiveError, check_digest,
                                   download_dataset, extract, fetch)

CLASSES = ("banded", "dotted", "striped")


# -- a tiny CoOp-layout dataset, as archives --------------------------------------------------------------------
def make_tiny_files() -> dict[str, bytes]:
    """``images/<class>/<class>_<i>.png`` (4 per class) and ``split_zhou_Tiny.json`` (2/1/1 per class)."""
    files: dict[str, bytes] = {}
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(CLASSES):
        for i in range(4):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (label * 80, i * 60, 90)).save(buf, format="PNG")
            rel = f"{cname}/{cname}_{i}.png"
            files[f"images/{rel}"] = buf.getvalue()
            split[("train", "train", "val", "test")[i]].append([rel, label, cname])
    files["split_zhou_Tiny.json"] = json.dumps(split, indent=4).encode()
    return files


def make_tar(entries: dict[str, bytes], prefix: str = "", gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for name, content in sorted(entries.items()):
            info = tarfile.TarInfo(prefix + name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in sorted(entries.items()):
            z.writestr(prefix + name, content)
    return buf.getvalue()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# -- HTTP server with Range ----------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # http.server's method name
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
        body = srv.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        if_range = self.headers.get("If-Range")
        if rng and if_range is not None and if_range != etag:
            rng = None  # RFC 9110: the file changed since the client's copy, send all of it
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        if srv.send_etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if srv.drop_after is not None:  # simulate a connection that dies mid-body, once
            cut, srv.drop_after = srv.drop_after, None
            srv.sent.append(cut)  # recorded before writing: the client may finish reading before this thread runs on
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        srv.sent.append(len(chunk))
        self.wfile.write(chunk)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.sent = {}, [], []
    srv.ignore_range, srv.drop_after, srv.send_etag = False, None, True
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def tiny(server):
    """A catalog entry for the tiny dataset served by ``server``: split JSON (plain file) + images tar.gz."""
    files = make_tiny_files()
    archive = make_tar({k: v for k, v in files.items() if k.startswith("images/")}, prefix="tiny-1.0/")
    split = files["split_zhou_Tiny.json"]
    server.files.update({"/tiny.tar.gz": archive, "/split_zhou_Tiny.json": split})
    info = tiny_info(server, archive_sha=sha(archive), split_sha=sha(split))
    return info, archive, split


def tiny_info(server, archive_sha: str | None, split_sha: str | None, **res_kw) -> DatasetInfo:
    return DatasetInfo(
        "tiny", "Tiny test set", "Tiny", "tiny", "images", "coop", 3, (6, 3, 3),
        resources=(Resource("split_zhou_Tiny.json", urls=(server.url("/split_zhou_Tiny.json"),), sha256=split_sha),
                   Resource("tiny.tar.gz", urls=(server.url("/tiny.tar.gz"),), sha256=archive_sha,
                            members=(("tiny-1.0/images", "images"),), **res_kw)),
        licence="test data", homepage="", required=("split_zhou_Tiny.json", "images"))


# -- tests -----------------------------------------------------------------------------------------------------
def test_full_download_checksum_extract_gives_a_loadable_dataset(tiny, tmp_path, server, monkeypatch):
    info = tiny[0]
    result = download_dataset(info, tmp_path, progress=False)
    assert result.complete and sorted(result.placed) == ["images", "split_zhou_Tiny.json"]
    ds = data.load_dataset(tmp_path / "tiny")
    assert ds.summary() == {"name": "Tiny", "classes": 3, "train": 6, "val": 3, "test": 3}
    assert all(Path(it.path).is_file() for s in data.SPLITS for it in ds.split(s))
    # the downloaded archive is removed after extraction; no temporary folder is left behind
    assert not (tmp_path / ".downloads" / "tiny" / "tiny.tar.gz").exists()
    assert not list((tmp_path / "tiny").glob(".extract-*"))
    # registered under a name, load_dataset finds it through the catalog
    monkeypatch.setitem(catalog.REGISTRY, "tiny", info)
    assert data.load_dataset("tiny", root=tmp_path).summary()["train"] == 6
    # a second run fetches nothing
    n = len(server.requests)
    again = download_dataset(info, tmp_path, progress=False)
    assert again.complete and not again.placed and len(server.requests) == n


def etag_of(body: bytes) -> str:
    return f'"{sha(body)[:16]}"'


def save_validator(part: Path, url: str, validator: str) -> None:
    """What fetch writes next to a .part when the first response came (``<part>.validator``)."""
    part.with_name(part.name + ".validator").write_text(json.dumps({"url": url, "validator": validator}))


def test_resume_requests_only_the_remaining_bytes(server, tmp_path):
    body = bytes(range(256)) * 400  # 102,400 bytes
    server.files["/big.bin"] = body
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(body[:30_000])
    save_validator(tmp_path / "big.bin.part", server.url("/big.bin"), etag_of(body))
    fetch(server.url("/big.bin"), dest, progress=False)
    assert dest.read_bytes() == body and not (tmp_path / "big.bin.part").exists()
    assert not (tmp_path / "big.bin.part.validator").exists()
    assert server.requests == [{"path": "/big.bin", "range": "bytes=30000-"}]
    assert server.sent == [len(body) - 30_000]


def test_a_part_as_long_as_the_file_is_downloaded_again_not_accepted_unread(server, tmp_path):
    """HTTP 416 (nothing left to send) says nothing about the bytes of the .part: restart from zero."""
    server.files["/f.bin"] = b"x" * 1000
    (tmp_path / "f.bin.part").write_bytes(b"y" * 1000)
    save_validator(tmp_path / "f.bin.part", server.url("/f.bin"), etag_of(b"x" * 1000))
    fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == b"x" * 1000 and server.sent == [1000]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = b"abcdef" * 1000
    server.files["/f.bin"], server.ignore_range = body, True
    (tmp_path / "f.bin.part").write_bytes(b"WRONG-PREFIX")
    fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body


def test_dropped_connection_is_resumed(server, tmp_path):
    body = bytes(range(256)) * 100
    server.files["/f.bin"], server.drop_after = body, 10_000
    fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False, backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert [r["range"] for r in server.requests] == [None, "bytes=10000-"]


def test_http_error_is_one_line(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404") as e:
        fetch(server.url("/missing.bin"), tmp_path / "m.bin", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "m.bin").exists()


def test_dead_url_becomes_a_manual_step(tiny, tmp_path, server):
    info, _, _ = tiny
    del server.files["/tiny.tar.gz"]
    result = download_dataset(info, tmp_path, progress=False)
    assert not result.complete
    assert any("tiny.tar.gz" in s and "HTTP 404" in s and ".downloads" in s for s in result.manual)
    # a file put at the printed place by hand is then used
    Path(tmp_path / ".downloads" / "tiny").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".downloads" / "tiny" / "tiny.tar.gz").write_bytes(tiny[1])
    assert download_dataset(info, tmp_path, progress=False).complete


def test_checksum_mismatch_deletes_the_file_and_says_expected_vs_got(tiny, tmp_path, server):
    _, archive, split = tiny
    bad = "0" * 64
    info = tiny_info(server, archive_sha=bad, split_sha=sha(split))
    with pytest.raises(ChecksumError) as e:
        download_dataset(info, tmp_path, progress=False)
    msg = str(e.value)
    assert f"expected sha256 {bad}, got {sha(archive)}" in msg and "tiny.tar.gz" in msg and "\n" not in msg
    dl = tmp_path / ".downloads" / "tiny"
    assert not (dl / "tiny.tar.gz").exists() and not (dl / "tiny.tar.gz.part").exists()
    assert not (tmp_path / "tiny" / "images").exists()


def test_md5_check(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    check_digest(f, md5=hashlib.md5(b"hello").hexdigest())
    with pytest.raises(ChecksumError, match="expected md5 0+, got 5d41402abc4b2a76b9719d911017c592"):
        check_digest(f, md5="0" * 32)
    assert not f.exists()


def test_unknown_checksum_is_recorded_then_enforced(tiny, tmp_path, server):
    _, archive, split = tiny
    info = tiny_info(server, archive_sha=None, split_sha=sha(split))
    assert download_dataset(info, tmp_path, progress=False).complete
    record = json.loads((tmp_path / ".downloads" / "recorded_sha256.json").read_text())
    assert record == {"tiny/tiny.tar.gz": sha(archive)}
    # the server now serves other bytes: the recorded checksum catches it
    import shutil
    shutil.rmtree(tmp_path / "tiny" / "images")
    server.files["/tiny.tar.gz"] = make_tar({"images/x/y.png": b"not the same"}, prefix="tiny-1.0/")
    with pytest.raises(ChecksumError, match=f"expected sha256 {sha(archive)}"):
        download_dataset(info, tmp_path, progress=False)


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tiny, tmp_path, monkeypatch):
    info, _, _ = tiny
    import clip_adapter.datasets.fetch as dl

    real_unpack = dl.unpack

    def unpack_then_die(*args, **kw):
        real_unpack(*args, **kw)  # everything is on disk in the temporary folder...
        raise KeyboardInterrupt  # ...and the process is interrupted before the move

    monkeypatch.setattr(dl, "unpack", unpack_then_die)
    with pytest.raises(KeyboardInterrupt):
        download_dataset(info, tmp_path, progress=False, keep_archives=True)
    ds_dir = tmp_path / "tiny"
    assert not (ds_dir / "images").exists() and not list(ds_dir.glob(".extract-*"))
    monkeypatch.setitem(catalog.REGISTRY, "tiny", info)
    with pytest.raises(FileNotFoundError, match=r"tiny.*images is missing.*datasets download tiny --root"):
        builtin.read_builtin("tiny", tmp_path)
    # a stale temporary folder of a killed run is removed; the kept archive is reused without a new request
    (ds_dir / ".extract-tiny.tar.gz-stale").mkdir()
    monkeypatch.setattr(dl, "unpack", real_unpack)
    assert download_dataset(info, tmp_path, progress=False).complete
    assert not list(ds_dir.glob(".extract-*"))


def test_truncated_archive_is_reported_and_leaves_nothing(tmp_path):
    good = make_tar({"d/a.txt": b"a" * 5000, "d/b.txt": b"b" * 5000})
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(good[: len(good) // 2])
    out = tmp_path / "ds"
    with pytest.raises(DownloadError, match="cut.tar.gz is damaged"):
        extract(archive, out, [("d", "d")])
    assert not (out / "d").exists() and not list(out.glob(".extract-*"))


@pytest.mark.parametrize("kind", ["tar-dotdot", "tar-symlink", "zip-dotdot"])
def test_path_traversal_archive_is_rejected(tmp_path, kind):
    archive = tmp_path / ("evil.zip" if kind.startswith("zip") else "evil.tar.gz")
    if kind == "tar-dotdot":
        archive.write_bytes(make_tar({"d/ok.txt": b"ok", "../evil.txt": b"pwned"}))
    elif kind == "zip-dotdot":
        archive.write_bytes(make_zip({"d/ok.txt": b"ok", "../evil.txt": b"pwned"}))
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            link = tarfile.TarInfo("d/link")
            link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
            t.addfile(link)
        archive.write_bytes(buf.getvalue())
    out = tmp_path / "sub" / "ds"
    with pytest.raises(UnsafeArchiveError, match="unsafe member"):
        extract(archive, out, [("d", "d")])
    assert not (tmp_path / "sub" / "evil.txt").exists() and not (out / "evil.txt").exists()
    assert not (out / "d").exists() and not list(out.glob(".extract-*"))


def test_nested_archive_and_plain_file_and_local_sources(tmp_path, server):
    """Caltech-101's shape: a zip holding a .tar.gz; plus a plain file; files taken from --from are kept."""
    files = make_tiny_files()
    inner = make_tar({k: v for k, v in files.items() if k.startswith("images/")})
    outer = make_zip({"pkg/inner.tar.gz": inner, "pkg/readme.txt": b"hi"})
    src = tmp_path / "mine"
    src.mkdir()
    (src / "outer.zip").write_bytes(outer)
    server.files["/split_zhou_Tiny.json"] = files["split_zhou_Tiny.json"]
    info = DatasetInfo(
        "tiny", "Tiny", "Tiny", "tiny", "images", "coop", 3, (6, 3, 3),
        resources=(Resource("split_zhou_Tiny.json", urls=(server.url("/split_zhou_Tiny.json"),)),
                   Resource("outer.zip", urls=(server.url("/never-asked"),), sha256=sha(outer),
                            inner="pkg/inner.tar.gz", members=(("images", "images"),))),
        licence="", homepage="", required=("split_zhou_Tiny.json", "images"))
    root = tmp_path / "root"
    assert download_dataset(info, root, sources_dir=src, progress=False).complete
    assert (src / "outer.zip").exists()  # the user's own file is not deleted
    assert [r["path"] for r in server.requests] == ["/split_zhou_Tiny.json"]
    assert data.load_dataset(root / "tiny").summary()["test"] == 3
