"""Untrusted input stays contained (#17, data side): each test builds a crafted input (archives served from a
127.0.0.1 server, planted cache files, symlinks, hard links, a stuck lock holder) and checks that nothing happens
outside where the user pointed. Offline and fast."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import stat
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_download import make_tar, make_tiny_files, make_zip, server, sha  # noqa: F401 - `server` is a fixture

from clip_adapter.cli import main as cli_main
from clip_adapter.datasets import DataError, DatasetInfo, Resource, catalog, load_dataset
from clip_adapter.datasets.archive import Budget, archive_kind
from clip_adapter.datasets.checks import check_unique_images
from clip_adapter.datasets.fetch import (ArchiveTooLargeError, DownloadError, UnsafeArchiveError, download_dataset,
                                         extract, fetch, resumed_marker)
from clip_adapter.datasets.types import Item
from clip_adapter.features import FeatureCache, image_key, write_shard
from clip_adapter.results import LockTimeout, claim_run, find_result_files, result_path

OTHER_UID = 54321  # "another local user"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("CLIP_ADAPTER_SHARED_CACHE", "CLIP_ADAPTER_LOCK_TIMEOUT", "CLIP_ADAPTER_DOWNLOAD_DEADLINE"):
        monkeypatch.delenv(var, raising=False)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def tar_with(members: list[tarfile.TarInfo | tuple[str, bytes]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
            else:
                t.addfile(m)
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def zip_symlink(name: str, target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, target)
        z.writestr("d/ok.txt", b"ok")
    return buf.getvalue()


# CVE-2025-4517's shape: a link inside the wanted folder pointing out, then a file written through it.
ESCAPE = [special("d/link", tarfile.SYMTYPE, "../../.."), ("d/link/outside.txt", b"pwned")]
CRAFTED = {
    "symlink-chain": (tar_with(ESCAPE), "d/link"),
    "hardlink": (tar_with([("d/ok.txt", b"ok"), special("d/hard", tarfile.LNKTYPE, "/etc/passwd")]), "d/hard"),
    "dotdot": (tar_with([("d/ok.txt", b"ok"), ("d/../../outside.txt", b"pwned")]), "d/../../outside.txt"),
    "absolute": (tar_with([("d/ok.txt", b"ok"), ("/tmp/outside.txt", b"pwned")]), "/tmp/outside.txt"),
    "device": (tar_with([special("d/null", tarfile.CHRTYPE)]), "d/null"),
    "fifo": (tar_with([special("d/pipe", tarfile.FIFOTYPE)]), "d/pipe"),
    "zip-symlink": (zip_symlink("d/link", "../../../outside.txt"), "d/link"),
    "zip-dotdot": (make_zip({"d/ok.txt": b"ok", "d/../../outside.txt": b"pwned"}), "d/../../outside.txt"),
}


# -- archives -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_archive_is_refused_writes_nothing_outside_and_is_not_trusted(kind, tmp_path, server, monkeypatch,
                                                                              capsys):
    """Through the command line, as the audit did: a catalog row without a published checksum (fgvc_aircraft's
    case), its archive served under a .zip name whatever its format (a tar renamed .zip takes the tar path)."""
    body, member = CRAFTED[kind]
    server.files["/evil.zip"] = body
    root = tmp_path / "data" / "root"
    root.mkdir(parents=True)
    sentinel = tmp_path / "data" / "outside.txt"
    sentinel.write_text("untouched")
    info = DatasetInfo("evil", "Evil", "Evil", "evil", "", "coop", 1, (1, 1, 1),
                       resources=(Resource("evil.zip", urls=(server.url("/evil.zip"),), members=(("d", "d"),)),),
                       licence="", homepage="", required=("d",))
    monkeypatch.setitem(catalog.REGISTRY, "evil", info)
    rc = cli_main(["datasets", "download", "evil", "--root", str(root), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and not any(line.startswith("evil: ready") for line in err)
    errors = [line for line in err if "error:" in line]
    assert errors == [f"evil: error: Archive evil.zip has unsafe member {member!r} ({errors[0].split('(', 1)[1]}"]
    assert sentinel.read_text() == "untouched" and files_under(tmp_path / "data") <= {
        "outside.txt", "root", "root/.downloads", "root/.downloads/evil", "root/evil"}
    assert not (root / ".downloads" / "recorded_sha256.json").exists()  # its sha256 is not trusted
    assert not (root / ".downloads" / "evil" / "evil.zip").exists()  # the refused download is deleted


def test_only_the_wanted_members_are_unpacked(tmp_path):
    """A link elsewhere in the archive is never created: only the row's members are written."""
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_with([("pkg/images/a.png", b"A"), ("pkg/README", b"r"),
                                  special("pkg/other/link", tarfile.SYMTYPE, "/etc/passwd")]))
    out = tmp_path / "ds"
    assert extract(archive, out, [("pkg/images", "images")]) == ["images"]
    assert files_under(out) == {"images", "images/a.png"}


def test_format_is_read_from_the_first_bytes_not_the_name(tmp_path):
    files = {"d/a.txt": b"a" * 100}
    cases = {"tar-as.zip": make_tar(files), "zip-as.tar.gz": make_zip(files), "plain-tar-as.tgz": make_tar(files, gz=False)}
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        assert extract(tmp_path / name, tmp_path / f"out-{name}", [("d", "d")]) == ["d"]
        assert (tmp_path / f"out-{name}" / "d" / "a.txt").read_bytes() == b"a" * 100
    assert [archive_kind(tmp_path / n) for n in cases] == ["gz", "zip", "tar"]
    (tmp_path / "not.zip").write_bytes(b"just text")
    with pytest.raises(DownloadError, match=r"not.zip is not a zip or tar.*first bytes"):
        extract(tmp_path / "not.zip", tmp_path / "o", [("d", "d")])


def test_a_symlink_already_in_the_way_is_not_written_through(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar({"d/a.txt": b"a"}))
    outside = tmp_path / "outside"
    outside.mkdir()
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "sub").symlink_to(outside)  # planted: the row places d at sub/d
    with pytest.raises(UnsafeArchiveError, match=r"ds/sub is a symlink; refusing to write through it"):
        extract(archive, ds, [("d", "sub/d")])
    assert not list(outside.iterdir()) and not list(ds.glob(".extract-*"))


def test_gzip_crc_is_checked_before_anything_is_placed(tmp_path):
    """A torn or altered download whose tar content still parses: only the gzip trailer (CRC) tells."""
    body = bytearray(make_tar({"d/a.txt": b"a" * 5000, "d/b.txt": b"b" * 5000}))
    body[-8] ^= 0xFF  # the CRC32 of the uncompressed data
    archive = tmp_path / "torn.tar.gz"
    archive.write_bytes(bytes(body))
    with pytest.raises(DownloadError, match=r"torn.tar.gz is damaged \(BadGzipFile: CRC check failed"):
        extract(archive, tmp_path / "ds", [("d", "d")])
    assert not (tmp_path / "ds" / "d").exists() and not list((tmp_path / "ds").glob(".extract-*"))


# -- decompression bombs ----------------------------------------------------------------------------------------
def test_tar_bomb_is_stopped_by_the_size_budget_while_reading(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(make_tar({"d/zeros.bin": b"\0" * (4 << 20)}))  # 4 MiB -> ~4 KB
    assert archive.stat().st_size < 20_000
    for budget, what in ((Budget(max_bytes=1 << 20), "1048576 bytes"), (Budget(max_ratio=50, slack=0), "50x")):
        with pytest.raises(ArchiveTooLargeError, match=rf"bomb.tar.gz (declares|unpacks to) more than .*{what}"):
            extract(archive, tmp_path / "ds", [("d", "d")], budget=budget)
        assert not (tmp_path / "ds" / "d").exists() and not list((tmp_path / "ds").glob(".extract-*"))
    assert extract(archive, tmp_path / "ds", [("d", "d")], budget=Budget(max_bytes=8 << 20)) == ["d"]


def test_zip_bomb_is_refused_from_its_headers_and_a_lying_header_from_its_bytes(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("d/zeros.bin", b"\0" * (2 << 20))
    honest = buf.getvalue()
    (tmp_path / "bomb.zip").write_bytes(honest)
    with pytest.raises(ArchiveTooLargeError, match=r"bomb.zip declares more than 1048576 bytes"):
        extract(tmp_path / "bomb.zip", tmp_path / "ds", [("d", "d")], budget=Budget(max_bytes=1 << 20))
    # The same zip claiming 100 bytes in both headers: what is read is checked, not what is declared.
    lying = bytearray(honest)
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = lying.index(sig)
        lying[at + off:at + off + 4] = (100).to_bytes(4, "little")
    (tmp_path / "liar.zip").write_bytes(bytes(lying))
    with pytest.raises(DownloadError, match=r"liar.zip"):
        extract(tmp_path / "liar.zip", tmp_path / "ds", [("d", "d")], budget=Budget(max_bytes=1 << 20))
    assert not (tmp_path / "ds" / "d").exists() and not list((tmp_path / "ds").glob(".extract-*"))


def test_catalog_row_budget_applies_to_its_archive(tmp_path, server):
    server.files["/z.tar.gz"] = make_tar({"d/zeros.bin": b"\0" * (3 << 20)})
    info = DatasetInfo("z", "Z", "Z", "z", "", "coop", 1, (1, 1, 1), licence="", homepage="", required=("d",),
                       resources=(Resource("z.tar.gz", urls=(server.url("/z.tar.gz"),), members=(("d", "d"),),
                                           max_bytes=1 << 20),))
    with pytest.raises(ArchiveTooLargeError, match="z.tar.gz"):
        download_dataset(info, tmp_path, progress=False)
    assert not (tmp_path / "z" / "d").exists() and not (tmp_path / ".downloads" / "recorded_sha256.json").exists()


# -- resumed downloads ------------------------------------------------------------------------------------------
def test_a_file_changed_between_attempts_is_downloaded_whole_not_torn(tmp_path, server):
    old, new = bytes(range(256)) * 100, bytes(reversed(range(256))) * 100
    server.files["/f.bin"], server.drop_after = old, 10_000
    with pytest.raises(DownloadError, match="rerun to resume"):
        fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False, retries=0)
    assert (tmp_path / "f.bin.part").stat().st_size == 10_000
    server.files["/f.bin"] = new  # the server now serves another file of the same size
    fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == new
    assert server.requests[-1]["range"] == "bytes=10000-" and server.sent[-1] == len(new)  # If-Range: all of it
    assert not resumed_marker(tmp_path / "f.bin").exists()


def test_a_part_without_a_validator_is_never_resumed(tmp_path, server):
    body = b"abcdef" * 2000
    server.files["/f.bin"], server.send_etag = body, False
    (tmp_path / "f.bin.part").write_bytes(b"PLANTED-PREFIX")
    fetch(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body and server.requests[-1]["range"] is None


def test_first_use_hash_is_recorded_only_from_a_download_that_did_not_resume(tmp_path, server):
    files = make_tiny_files()
    archive = make_tar({k: v for k, v in files.items() if k.startswith("images/")})
    server.files["/t.tar.gz"], server.drop_after = archive, len(archive) // 2
    info = DatasetInfo("t", "T", "T", "t", "images", "coop", 3, (6, 3, 3), licence="", homepage="",
                       required=("images",), resources=(Resource("t.tar.gz", urls=(server.url("/t.tar.gz"),),
                                                                 members=(("images", "images"),)),))
    assert download_dataset(info, tmp_path, progress=False).complete  # resumed after the drop
    record = tmp_path / ".downloads" / "recorded_sha256.json"
    assert [r["range"] for r in server.requests][-1].startswith("bytes=") and not record.exists()
    shutil.rmtree(tmp_path / "t" / "images")
    assert download_dataset(info, tmp_path, progress=False).complete  # whole, in one response
    assert json.loads(record.read_text()) == {"t/t.tar.gz": sha(archive)}


class _Drip(BaseHTTPRequestHandler):
    """Announces 100,000 bytes and sends one every 20 ms: each read succeeds, the download never ends."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # http.server's method name
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_download_deadline_bounds_a_server_that_drips(tmp_path, monkeypatch):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/slow.bin"
    try:
        monkeypatch.setenv("CLIP_ADAPTER_DOWNLOAD_DEADLINE", "0.5")
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"slow.bin passed its deadline of 0.5 s; \d+ bytes kept"):
            fetch(url, tmp_path / "slow.bin", progress=False, timeout=5)
        assert time.monotonic() - t0 < 3
        monkeypatch.setenv("CLIP_ADAPTER_DOWNLOAD_DEADLINE", "soon")
        with pytest.raises(DownloadError, match=r"CLIP_ADAPTER_DOWNLOAD_DEADLINE must be a number of seconds > 0"):
            fetch(url, tmp_path / "slow.bin", progress=False)
    finally:
        srv.shutdown()
        srv.server_close()


# -- feature cache ----------------------------------------------------------------------------------------------
@pytest.fixture
def items(color_dir):
    return load_dataset(color_dir).split("test")[:4]


def _cache(bb, root, **kw):
    return FeatureCache(bb, root=root, num_workers=0, progress=False, **kw)


def test_private_cache_is_created_0700_and_a_cache_others_control_is_refused(tiny_backbone, tmp_path):
    root = tmp_path / "fc"
    _cache(tiny_backbone, root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    open_root = tmp_path / "open"
    open_root.mkdir()
    open_root.chmod(0o777)
    with pytest.raises(ValueError, match=r"open is writable by every user \(mode 777\).*--shared-cache"):
        _cache(tiny_backbone, open_root)
    _cache(tiny_backbone, open_root, shared=True)  # knowingly shared: accepted
    from clip_adapter.io import default_cache_dir  # per user ($CLIP_ADAPTER_CACHE here), made 0700 when missing
    assert not (tmp_path / "cache").exists()
    assert default_cache_dir() == tmp_path / "cache" and stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_fifo_and_symlink_named_like_shards_are_refused_without_hanging(tiny_backbone, items, tmp_path, caplog):
    root = tmp_path / "fc"
    cache = _cache(tiny_backbone, root)
    folder = cache.folder("test")
    folder.mkdir(parents=True)
    os.mkfifo(folder / "shard-00000000000000-fifo.safetensors")
    secret = tmp_path / "secret.safetensors"
    write_shard(tmp_path, [image_key(it) for it in items], torch.full((len(items), 32), 7.0), {})
    next(tmp_path.glob("shard-*.safetensors")).rename(secret)
    (folder / "shard-00000000000001-link.safetensors").symlink_to(secret)
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the cache blocked on a FIFO"))
    signal.alarm(60)
    try:
        with caplog.at_level(logging.WARNING):
            got = cache.features(items)
    finally:
        signal.alarm(0)
    assert cache.encoded_images == len(items) and not torch.equal(got, torch.full_like(got, 7.0))
    assert "fifo.safetensors is not a regular file; ignored" in caplog.text
    assert "link.safetensors is a symlink or a special file; ignored" in caplog.text


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user (chown) needs root")


@needs_root
def test_planted_shard_of_another_user_is_ignored_unless_shared_and_own_shards_win(tiny_backbone, items, tmp_path):
    root = tmp_path / "fc"
    root.mkdir(mode=0o755)
    honest = _cache(tiny_backbone, tmp_path / "reference").features(items)
    folder = _cache(tiny_backbone, root, shared=True).folder("test")
    planted = write_shard(folder, [image_key(it) for it in items], torch.zeros(len(items), 32), {})
    os.chown(planted, OTHER_UID, OTHER_UID)
    private = _cache(tiny_backbone, root)
    assert torch.allclose(private.features(items), honest) and private.encoded_images == len(items)
    # In a shared cache another user's shard is read (the documented trust boundary)...
    only_theirs = tmp_path / "shared2"
    theirs = write_shard(_cache(tiny_backbone, only_theirs, shared=True).folder("test"),
                         [image_key(it) for it in items], torch.zeros(len(items), 32), {})
    os.chown(theirs, OTHER_UID, OTHER_UID)
    assert torch.equal(_cache(tiny_backbone, only_theirs, shared=True).features(items), torch.zeros(len(items), 32))
    # ...but where the caller has its own shard for the same images, its own wins.
    assert torch.allclose(_cache(tiny_backbone, root, shared=True).features(items), honest)
    assert planted.exists()  # never deleted: it is not ours


def test_shared_cache_is_an_explicit_option(tiny_backbone, tmp_path, monkeypatch):
    shared_dir = tmp_path / "team-cache"
    monkeypatch.setenv("CLIP_ADAPTER_SHARED_CACHE", str(shared_dir))
    c = _cache(tiny_backbone, None)
    assert c.root == shared_dir and c.shared
    assert not _cache(tiny_backbone, tmp_path / "mine").shared
    from clip_adapter.cli.common import cache_from_args
    from argparse import Namespace
    args = Namespace(cache_dir=None, shared_cache=str(tmp_path / "x"), batch_size=8, workers=0, no_progress=True)
    assert cache_from_args(args, tiny_backbone).shared
    with pytest.raises(ValueError, match="name two feature caches; give one"):
        cache_from_args(Namespace(**{**vars(args), "cache_dir": "y"}), tiny_backbone)


def test_an_image_edited_in_place_beyond_4kib_gets_new_features(tiny_backbone, tmp_path):
    folder = tmp_path / "ds" / "a"
    folder.mkdir(parents=True)
    from PIL import Image
    import numpy as np
    img = folder / "x.bmp"  # uncompressed: pixels after the first 4 KiB can change, size and head stay
    Image.fromarray(np.full((64, 64, 3), 20, "uint8")).save(img)
    (folder.parent / "b").mkdir()
    shutil.copy(img, folder.parent / "b" / "y.bmp")
    it = [i for i in load_dataset(tmp_path / "ds").split("train") + load_dataset(tmp_path / "ds").split("val") +
          load_dataset(tmp_path / "ds").split("test") if i.path.endswith("x.bmp")]
    cache = _cache(tiny_backbone, tmp_path / "fc")
    before, key = cache.features(it), image_key(it[0])
    data = bytearray(img.read_bytes())
    size, head = len(data), bytes(data[:4096])
    data[-3000:] = b"\xff" * 3000  # the bottom rows turn white
    img.write_bytes(bytes(data))
    os.utime(img, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert img.stat().st_size == size and img.read_bytes()[:4096] == head and image_key(it[0]) != key
    after = cache.features(it)
    assert cache.encoded_images == 2 and not torch.allclose(before, after)


# -- dataset paths ----------------------------------------------------------------------------------------------
def test_a_symlink_reaching_outside_the_dataset_folder_needs_the_opt_in(tmp_path, color_dir):
    ds = tmp_path / "ds"
    (ds / "red").mkdir(parents=True)
    outside = next((color_dir / "red").iterdir())
    (ds / "red" / "inside.png").write_bytes(outside.read_bytes())
    (ds / "red" / "leak.png").symlink_to(outside)
    (ds / "data.csv").write_text("path,label,split\nred/inside.png,red,train\nred/leak.png,red,test\n")
    with pytest.raises(DataError, match=r"row 3: the path 'red/leak.png' goes through a symlink to .*outside the "
                                        r"dataset folder .*--allow-outside-paths"):
        load_dataset(ds / "data.csv")
    assert len(load_dataset(ds / "data.csv", allow_outside_paths=True).split("test")) == 1
    (ds / "data.csv").unlink()  # the same folder read as class folders
    with pytest.raises(DataError, match=r"Dataset folder .*leak.png goes through a symlink to .*--allow-outside-paths"):
        load_dataset(ds)
    assert len(load_dataset(ds, allow_outside_paths=True).splits["train"]) >= 1


def test_leakage_check_sees_through_symlinked_folders_and_hard_links(tmp_path, color_dir):
    ds = tmp_path / "ds"
    shutil.copytree(color_dir / "red", ds / "red")
    a = sorted((ds / "red").iterdir())[0]
    os.link(a, ds / "red" / "copy.png")
    (ds / "alias").symlink_to(ds / "red", target_is_directory=True)
    for other in (ds / "red" / "copy.png", ds / "alias" / a.name):
        splits = {"train": [Item(str(a), 0)], "val": [], "test": [Item(str(other), 0)]}
        with pytest.raises(DataError, match=rf"image {other} \(the same file as {a}\) is listed in both 'train' and "
                                            r"'test' \(train/test leakage\)"):
            check_unique_images(splits, "x")


# -- output paths and locks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset,label", [("..", ".."), ("../../etc", "a/b"), (".hidden", "..\\..")])
def test_dataset_or_label_named_dotdot_stays_in_the_output_folder(tmp_path, dataset, label):
    out = tmp_path / "runs"
    path = result_path(out, dataset, label, 1, 0)
    assert path.resolve().is_relative_to(out.resolve()) and len(path.relative_to(out).parts) == 3
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    assert find_result_files(out) == [path]  # not hidden either
    assert result_path(out, "dtd10", "clip_adapter", 1, 0) == out / "dtd10" / "clip_adapter" / "shots1-seed0.json"


def test_a_stuck_lock_holder_is_named_and_the_wait_can_time_out(tmp_path, monkeypatch, caplog):
    """A live holder that never finishes (here a thread of this process: OS file locks conflict between open files)."""
    import clip_adapter.results as results
    out, run = tmp_path / "out", tmp_path / "out" / "d" / "m" / "shots1-seed0.json"
    held, release = threading.Event(), threading.Event()

    def stuck():
        with claim_run(out, run, wait=True):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=stuck, daemon=True)
    holder.start()
    try:
        assert held.wait(10)
        lock = out / ".locks" / "d__m__shots1-seed0.json.lock"
        assert json.loads(lock.with_name(lock.name + ".pid").read_text())["pid"] == os.getpid()
        monkeypatch.setattr(results, "LOCK_NOTICE", 0.2)
        with caplog.at_level(logging.WARNING):
            with pytest.raises(LockTimeout, match=rf"Gave up after \d+ s waiting for the lock {lock}, held by pid "
                                                  rf"{os.getpid()} on "):
                with claim_run(out, run, wait=True, timeout=0.7):
                    pass
        assert f"Waiting for the lock {lock}, held by pid {os.getpid()}" in caplog.text
        monkeypatch.setenv("CLIP_ADAPTER_LOCK_TIMEOUT", "0.3")  # what --lock-timeout sets
        with pytest.raises(LockTimeout):
            with claim_run(out, run, wait=True):
                pass
        with claim_run(out, run) as got:  # without wait: told at once
            assert got is False
    finally:
        release.set()
        holder.join()
    pid_file = lock.with_name(lock.name + ".pid")
    assert not pid_file.exists()  # the released holder took its pid file with it
    with claim_run(out, run, wait=True, timeout=5) as got:
        assert got and json.loads(pid_file.read_text())["pid"] == os.getpid()


# -- Ray --------------------------------------------------------------------------------------------------------
def test_a_local_ray_cluster_is_bound_to_loopback(monkeypatch):
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants

    from clip_adapter.distributed import cluster
    seen = {}

    def fake_init(**kw):
        seen.update(kw, multi_node=ray_constants.ENABLE_RAY_CLUSTER)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    before = ray_constants.ENABLE_RAY_CLUSTER
    cluster.connect(None, num_cpus=1)
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["multi_node"] is False and seen["address"] is None
    assert ray_constants.ENABLE_RAY_CLUSTER == before  # restored
    seen.clear()
    cluster.connect("auto")  # joining an existing cluster: its own addresses
    assert "_node_ip_address" not in seen and seen["multi_node"] == before
