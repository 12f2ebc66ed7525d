"""Feature cache: every image is encoded once per (backbone, transform, view); features live in safetensors.

Layout: ``<root>/<backbone id>/<transform hash>/<view>/shard-*.safetensors``. Each shard is immutable and
self-describing: a ``features`` tensor ``(n, dim)`` plus, in its header, the keys of its n images and a checksum of
the key list. An image's key (:func:`image_key`) is its path relative to the folder above its dataset's folder
(``dtd10/images/banded/banded_0001.jpg``), its size and a hash of its whole content: the same on every machine and
mount point, so that workers on other nodes share one cache, and an image edited in place (same size, same first
bytes) gets a new key. Hashing reads the file once per process (memoised on path, size, mtime and inode); it is far
cheaper than decoding the image. Everything
that changes a feature is in its address: the backbone id (architecture + weights identity), the transform (hash of
its full description), the view (``test`` or ``train-<v>``, augmented view v) and the image key. A lookup encodes only the images no shard
holds, and writes them as one new shard, so overlapping requests (other seeds, other shot counts, the
whole split) reuse each other's work.

Training augmentation is served from ``n_views`` cached views per image: view v of an image is the same
random crop/flip on every machine (seeded by the image name and v), so adapter training never runs the encoder.

Shards are written to a temporary name and renamed (readers never see half a file), so several writers (processes,
Ray encoder actors) can fill one folder; a truncated, corrupt or inconsistent shard is detected on open, logged,
deleted, and its images are re-encoded.

Trust: the cache is private by default (its folder is created 0700; a folder owned by another user or writable by
everyone is refused) and only shards owned by the current user are read. A cache shared between users is an explicit
choice (``shared=True``, CLI ``--shared-cache DIR``, ``$CLIP_ADAPTER_SHARED_CACHE``): every user who can write it can
then decide the features of everyone's runs; the caller's own shards are still preferred when both hold an image.
Whatever the mode, only regular files are opened (without following symlinks and without blocking on a FIFO), and
a shard is never unpickled (safetensors).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from .config import invalid_value
from .datasets.images import open_rgb
from .datasets.types import Item
from .io import atomic_path, default_cache_dir, progress_bar, safe_name, worker_error

__all__ = ["FeatureCache", "ImageListDataset", "default_num_workers", "iter_batches", "image_key", "load_image_views",
           "write_shard", "SHARED_CACHE_ENV", "CACHE_VERSION"]

log = logging.getLogger(__name__)

CACHE_VERSION = "4"  # 3: image keys relative to the dataset, not absolute paths; 4: keys hash the whole file
SHARED_CACHE_ENV = "CLIP_ADAPTER_SHARED_CACHE"  # a feature cache folder the user knowingly shares with others


def default_num_workers() -> int:
    """Loader processes that overlap JPEG decoding with encoding without starving the encoder of cores."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _view_seed(path: str, view: int) -> int:
    p = Path(path)
    digest = hashlib.sha256(f"{p.parent.name}/{p.name}|{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def load_image_views(path: str, transform: Callable, views: Sequence[int] | None = None) -> torch.Tensor:
    """An image through ``transform``: ``(3, H, W)``, or with ``views`` a stack ``(V, 3, H, W)`` of seeded augmented
    views (view v of an image is the same crop/flip on every machine); one-line error for an unreadable file."""
    img = open_rgb(path)
    if views is None:
        return transform(img)
    out = []
    for v in views:
        # Seed per (image, view) so view v is reproducible; fork_rng keeps the caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_view_seed(path, v))
            out.append(transform(img))
    return torch.stack(out)


class ImageListDataset(torch.utils.data.Dataset):
    """Images at ``paths`` through ``transform``; with ``views``, a stack of seeded augmented views per image."""

    def __init__(self, paths: Sequence[str], transform: Callable, views: Sequence[int] | None = None):
        self.paths, self.transform, self.views = list(paths), transform, list(views) if views else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image_views(self.paths[i], self.transform, self.views)


_HASHES: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> hash: each file read once


def image_key(item: Item | str) -> str:
    """The cache key of an image: ``<rel>\\t<size>\\t<hash of the whole file>``, ``rel`` being its dataset-relative
    path (``-`` for a bare path). A missing file gets a key no shard holds, so encoding it fails with a message
    naming it."""
    path, rel = (item.path, item.rel) if isinstance(item, Item) else (str(item), "")
    try:
        st = os.stat(path)
    except OSError:
        return f"missing:{os.path.abspath(path)}"
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _HASHES.get(memo)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        digest = _HASHES[memo] = h.hexdigest()[:32]
    return f"{rel or '-'}\t{st.st_size}\t{digest}"


def write_shard(folder: Path, keys: list[str], feats: torch.Tensor, meta: dict[str, str]) -> Path:
    """One immutable shard (features + the keys of its rows), written to a temporary name and renamed."""
    digest = _digest(keys)
    shard = folder / f"shard-{time.strftime('%Y%m%d%H%M%S')}-{digest[:16]}.safetensors"
    with atomic_path(shard) as tmp:
        save_file({"features": feats.contiguous()}, str(tmp), metadata={**meta, "keys": json.dumps(keys),
                                                                         "digest": digest})
    return shard


def _digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]


class _NotRegular(OSError):
    """A file named like a shard that is not a regular file (a FIFO, a device, a symlink)."""


_MAX_HEADER = 256 << 20  # a shard header lists its keys: far below this even for a million images


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An fd on ``path`` and its stat, refusing anything but a regular file: no symlink is followed (O_NOFOLLOW) and
    a FIFO does not block (O_NONBLOCK; fstat then refuses it)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):
            raise _NotRegular(f"{path} is a symlink or a special file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _NotRegular(f"{path} is not a regular file")
    return fd, st


def _read_header(f, size: int) -> tuple[dict[str, str], list[int]]:
    """(metadata, features shape) from a safetensors header, read from an open file of ``size`` bytes."""
    n = int.from_bytes(f.read(8), "little")
    if not 2 <= n <= min(size - 8, _MAX_HEADER):
        raise ValueError(f"header length {n} does not fit a {size}-byte file")
    header = json.loads(f.read(n))
    return header.get("__metadata__") or {}, list(header["features"]["shape"])


class _Store:
    """The shards of one (backbone, transform, view) folder: image key -> (shard file, row, owned by the caller).

    Only regular files are opened. In a private cache only the caller's own shards are read; in a shared one others'
    are read too, but an image in both gets the caller's own features."""

    def __init__(self, folder: Path, dim: int, uid: int | None = None, shared: bool = False):
        self.folder, self.dim, self.uid, self.shared = folder, dim, uid, shared
        self.index: dict[str, tuple[Path, int, bool]] = {}
        self._loaded: dict[Path, torch.Tensor] = {}
        self._seen: set[Path] = set()
        self._ids: dict[Path, tuple[int, int]] = {}  # (st_dev, st_ino) when the header was read
        self._shape: dict[Path, tuple[int, bool]] = {}  # rows, owned by the caller
        self._warned = False
        self.refresh()

    def refresh(self) -> None:
        """Read the headers of shards not seen yet (another process may have added some)."""
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if shard in self._seen:
                continue
            self._seen.add(shard)
            got = self._header(shard)
            if got is None:
                continue
            keys, own = got
            for row, key in enumerate(keys):
                cur = self.index.get(key)
                if cur is None or (own and not cur[2]):
                    self.index[key] = (shard, row, own)

    def _owned(self, st: os.stat_result) -> bool:
        return self.uid is None or st.st_uid == self.uid

    def _header(self, shard: Path) -> tuple[list[str], bool] | None:
        try:
            fd, st = _open_regular(shard)
        except _NotRegular as e:
            log.warning("Feature cache: %s; ignored.", e)
            return None
        except OSError as e:
            log.warning("Feature cache file %s cannot be opened (%s); ignored.", shard, e.strerror or e)
            return None
        own = self._owned(st)
        if not own and not self.shared:
            if not self._warned:
                log.warning("Feature cache folder %s holds files of another user (uid %d); a private cache reads "
                            "only yours (use a shared cache to read theirs).", self.folder, st.st_uid)
                self._warned = True
            os.close(fd)
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                meta, shape = _read_header(f, st.st_size)
            keys = json.loads(meta["keys"])
            if meta.get("digest") != _digest(keys) or shape != [len(keys), self.dim]:
                raise ValueError(f"header says {len(keys)} images, tensor is {shape}")
        except Exception as e:  # noqa: BLE001 - any unreadable shard is rebuilt
            self._drop(shard, e, own)
            return None
        self._ids[shard], self._shape[shard] = (st.st_dev, st.st_ino), (len(keys), own)
        return keys, own

    def _drop(self, shard: Path, err: Exception, own: bool = True) -> None:
        log.warning("Feature cache file %s is corrupt or mismatched (%s); its images will be re-encoded.", shard, err)
        if own:  # never delete another user's file, even a broken one
            with contextlib.suppress(OSError):
                shard.unlink()
        self.index = {k: v for k, v in self.index.items() if v[0] != shard}
        self._loaded.pop(shard, None)

    def absent(self, keys: Sequence[str]) -> list[int]:
        """Indices of the keys no shard holds (the index only; no tensor is read)."""
        return [i for i, k in enumerate(keys) if k not in self.index]

    def get(self, keys: Sequence[str]) -> tuple[torch.Tensor | None, list[int]]:
        """(features of the keys found, filled row by row; indices of the missing keys)."""
        out = torch.empty(len(keys), self.dim)
        missing: list[int] = []
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            hit = self.index.get(k)
            if hit is None:
                missing.append(i)
            else:
                by_shard.setdefault(hit[0], []).append((i, hit[1]))
        for shard, pairs in by_shard.items():
            t = self._tensor(shard)
            if t is None or not torch.isfinite(t).all():
                if t is not None:
                    self._drop(shard, ValueError("non-finite values"), self._is_own(shard))
                missing.extend(i for i, _ in pairs)
                continue
            dst, src = zip(*pairs)
            out[list(dst)] = t[list(src)]
        return out, sorted(missing)

    def _is_own(self, shard: Path) -> bool:
        return self._shape.get(shard, (0, True))[1]

    def _tensor(self, shard: Path) -> torch.Tensor | None:
        if shard not in self._loaded:
            own = self._is_own(shard)
            try:
                fd, st = _open_regular(shard)
                with os.fdopen(fd, "rb") as f:
                    if (st.st_dev, st.st_ino) != self._ids.get(shard, (st.st_dev, st.st_ino)):
                        raise ValueError("the file was replaced since its header was read")
                    t = load_bytes(f.read())["features"]
                if list(t.shape) != [self._shape.get(shard, (-1,))[0], self.dim]:
                    raise ValueError(f"tensor is {list(t.shape)}, its header said otherwise")
                self._loaded[shard] = t
            except Exception as e:  # noqa: BLE001
                self._drop(shard, e, own)
                return None
        return self._loaded[shard]

    def release(self) -> None:
        self._loaded.clear()

    def put(self, keys: list[str], feats: torch.Tensor, meta: dict[str, str]) -> None:
        shard = write_shard(self.folder, keys, feats, meta)
        self._seen.add(shard)
        self._loaded[shard] = feats
        self._shape[shard] = (len(keys), True)
        for row, k in enumerate(keys):
            self.index[k] = (shard, row, True)


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None  # no owners to compare on Windows


def _same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def _private_root(root: Path, uid: int | None) -> None:
    """Create ``root`` 0700 if missing; refuse an existing one another user owns or everyone may write."""
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, 0o700)
    st = root.stat()
    if uid is None:
        return
    why = (f"owned by another user (uid {st.st_uid})" if st.st_uid != uid else
           f"writable by every user (mode {stat.S_IMODE(st.st_mode):o})" if st.st_mode & stat.S_IWOTH else "")
    if why:
        raise ValueError(f"The feature cache folder {root} is {why}; a private cache must be yours alone: use a "
                         f"folder of your own, or pass --shared-cache {root} (or set {SHARED_CACHE_ENV}) to share it "
                         f"knowingly with every user who can write it.")


class FeatureCache:
    """Encode-once store of image features for one backbone.

    Args:
        backbone: a :class:`~clip_adapter.backbone.Backbone`.
        root: cache directory (default ``$CLIP_ADAPTER_SHARED_CACHE`` as a shared cache, else
            ``$CLIP_ADAPTER_CACHE/features`` or ``~/.cache/clip_adapter/features``).
        shared: read shards other users wrote (a trust boundary: they decide your features). Default: True only for
            the ``$CLIP_ADAPTER_SHARED_CACHE`` folder. A private cache (the default) is created 0700, refused when
            another user owns it or everyone may write it, and reads only the caller's own shards.
        batch_size: images per encoder call.
        num_workers: DataLoader processes decoding images (0 = in the main process).
        progress: show progress while encoding (a bar on a terminal, one line per stage in a log).
    """

    def __init__(self, backbone, root: str | os.PathLike | None = None, batch_size: int = 32,
                 num_workers: int | None = None, progress: bool = True, shared: bool | None = None):
        for name, value, ok, expected in (("batch_size", batch_size, _is_int(batch_size) and batch_size >= 1,
                                           "an int >= 1"),
                                          ("num_workers", num_workers, num_workers is None or
                                           (_is_int(num_workers) and num_workers >= 0), "an int >= 0 or None")):
            if not ok:
                raise invalid_value(name, value, expected, owner="FeatureCache")
        self.backbone = backbone
        env_shared = os.environ.get(SHARED_CACHE_ENV, "").strip()
        if root is None and env_shared:
            root = env_shared
        if shared is None:
            shared = bool(env_shared) and root is not None and _same_folder(root, env_shared)
        self.root = Path(root).expanduser() if root is not None else default_cache_dir() / "features"
        self.shared, self.uid = bool(shared), _uid()
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"The feature cache folder {self.root} is an existing file; expected a folder.")
        if not self.shared:
            _private_root(self.root, self.uid)
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.progress = progress
        self.encoded_images = 0  # images this object sent through the encoder (tests, logs)
        self._stores: dict[tuple[str, str, str], _Store] = {}

    def folder(self, kind: str, view: int = 0) -> Path:
        """Where features of the ``kind`` ("test" or "train") transform and ``view`` live. An encoder variant that
        changes features at all (bf16, ONNX Runtime, GPU decoding: :attr:`Backbone.encoder`) gets its own folder
        (``test-<hash>-onnx``), so features of one variant are never served for another; today's path keeps its
        folder."""
        tf = hashlib.sha256(f"{CACHE_VERSION}|{self.backbone.transform_id(kind)}".encode()).hexdigest()[:16]
        tag = "test" if kind == "test" else f"train-{view}"
        variant = _variant(self.backbone)
        return self.root / safe_name(self.backbone.id) / (f"{kind}-{tf}" + (f"-{variant}" if variant else "")) / tag

    def _store(self, kind: str, view: int) -> _Store:
        key = (kind, str(view), str(self.folder(kind, view)))   # the folder too: the encoder may be reconfigured
        if key not in self._stores:
            self._stores[key] = _Store(self.folder(kind, view), self.backbone.embed_dim, self.uid, self.shared)
        else:
            self._stores[key].refresh()
        return self._stores[key]

    def features(self, items: Sequence[Item] | Sequence[str], kind: str = "test", view: int = 0) -> torch.Tensor:
        """Features ``(n, dim)`` of ``items`` with the test transform (or the train transform's ``view``)."""
        if kind == "train":
            return self.views(items, [view])[0]
        if kind != "test":
            raise ValueError(f"Unknown transform kind {kind!r}; expected 'test' or 'train'.")
        keys = [image_key(it) for it in items]
        store = self._store("test", 0)
        out, missing = store.get(keys)
        if missing:
            todo = _unique_by_key([items[i] for i in missing], [keys[i] for i in missing])
            feats = self._encode(_paths(todo), self.backbone.test_transform, None,
                                 desc=f"encode {len(todo)} images")[0]
            store.put([image_key(it) for it in todo], feats, self.meta("test", 0))
            out, missing = store.get(keys)
            assert not missing
        return out

    def views(self, items: Sequence[Item] | Sequence[str], views: int | Sequence[int] = 10) -> torch.Tensor:
        """Augmented-view features ``(V, n, dim)``; ``views`` is a count (views 0..V-1) or explicit indices."""
        keys = [image_key(it) for it in items]
        idx = list(range(views)) if isinstance(views, int) else list(views)
        stores = {v: self._store("train", v) for v in idx}
        missing_any: set[int] = set()
        for v in idx:
            missing_any.update(stores[v].get(keys)[1])
        if missing_any:
            rows = sorted(missing_any)
            todo = _unique_by_key([items[i] for i in rows], [keys[i] for i in rows])
            enc = self._encode(_paths(todo), self.backbone.train_transform, idx,
                               desc=f"encode {len(todo)} images x {len(idx)} augmented views")
            todo_keys = [image_key(it) for it in todo]
            for v, t in zip(idx, enc):
                stores[v].put(todo_keys, t, self.meta("train", v))
        return torch.stack([stores[v].get(keys)[0] for v in idx])

    def missing(self, items: Sequence[Item] | Sequence[str], kind: str = "test",
                views: Sequence[int] = (0,)) -> list[Item | str]:
        """The items (each once) that some requested view of ``kind`` does not hold yet: what an extraction job
        must encode."""
        keys = [image_key(it) for it in items]
        rows: set[int] = set()
        for v in (views if kind == "train" else (0,)):
            rows.update(self._store(kind, v).absent(keys))
        return _unique_by_key([items[i] for i in sorted(rows)], [keys[i] for i in sorted(rows)])

    def release(self) -> None:
        """Drop the shard tensors held in memory (they are read again on the next lookup)."""
        for store in self._stores.values():
            store.release()

    def meta(self, kind: str, view: int) -> dict[str, str]:
        """The header fields every shard of ``(kind, view)`` carries."""
        return {"backbone": self.backbone.id, "kind": kind, "view": str(view),
                "transform": self.backbone.transform_id(kind)[:4000], "cache_version": CACHE_VERSION,
                "encoder": json.dumps(_encoder_record(self.backbone), sort_keys=True)}

    def _encode(self, paths: list[str], transform: Callable, views: list[int] | None, desc: str) -> list[torch.Tensor]:
        gpu = _gpu_decode(self.backbone)
        ds = EncodedFileDataset(paths) if gpu else ImageListDataset(paths, transform, views)
        per_item = len(views) if views else 1
        bs = max(1, self.batch_size // per_item)
        workers = self.num_workers if len(paths) > bs else 0  # a worker costs more than it saves on a batch
        # An own generator: DataLoader otherwise draws its worker seed from (and so shifts) the global RNG.
        loader = DataLoader(ds, batch_size=bs, num_workers=workers, shuffle=False,
                            generator=torch.Generator().manual_seed(0),
                            **({"collate_fn": _as_list, "pin_memory": True} if gpu else {}))
        chunks: list[torch.Tensor] = []
        with progress_bar(len(paths) * per_item, desc, "img", enabled=self.progress) as bar:
            done = 0
            for batch in iter_batches(loader):
                if gpu:
                    batch = decode_on_device(batch, paths[done:done + len(batch)], transform, views,
                                             self.backbone.device)
                done += len(batch)
                flat = batch.reshape(-1, *batch.shape[-3:])
                f = self.backbone.encode_images(flat).float().cpu()
                chunks.append(f.reshape(batch.shape[0], per_item, -1))
                self.encoded_images += flat.shape[0]
                bar.update(flat.shape[0])
        feats = torch.cat(chunks)  # (n, V, d)
        return [feats[:, j].contiguous() for j in range(per_item)]


def _variant(backbone) -> str:
    enc = getattr(backbone, "encoder", None)   # any object with id/embed_dim/transforms may serve as a backbone
    return getattr(enc, "variant", "") or ""


def _encoder_record(backbone) -> dict:
    enc = getattr(backbone, "encoder", None)
    return enc.record() if hasattr(enc, "record") else {}


def _gpu_decode(backbone) -> bool:
    return bool(getattr(getattr(backbone, "encoder", None), "gpu_decode", False))


# -- GPU decoding (encoder option gpu_decode): files are read by the loader, decoded and transformed on the device ---
class EncodedFileDataset(torch.utils.data.Dataset):
    """The raw bytes of each image file as a uint8 tensor (decoded later, on the GPU)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchvision.io import read_file
        try:
            return read_file(self.paths[i])
        except (OSError, RuntimeError) as e:
            raise ValueError(f"Cannot read image {self.paths[i]}: {str(e).splitlines()[0]}") from None


def _as_list(batch: list) -> list:
    return batch


def _tensor_steps(transform: Callable) -> tuple[list[Callable], list[Callable]]:
    """A PIL pipeline (``build_transforms``: [Lambda(to RGB)], resize/crop/flip..., ToTensor, Normalize) as the steps
    before ToTensor (run on uint8 image tensors) and after it (on floats in [0, 1])."""
    from torchvision import transforms as T
    steps = list(getattr(transform, "transforms", [transform]))
    if not any(isinstance(t, T.ToTensor) for t in steps):
        raise ValueError(f"GPU decoding needs a torchvision Compose with ToTensor; got {transform!r}.")
    cut = next(i for i, t in enumerate(steps) if isinstance(t, T.ToTensor))
    return [t for t in steps[:cut] if not isinstance(t, T.Lambda)], steps[cut + 1:]


def decode_on_device(datas: list[torch.Tensor], paths: Sequence[str], transform: Callable,
                     views: Sequence[int] | None, device: str | torch.device) -> torch.Tensor:
    """Encoded files -> ``(n, 3, H, W)`` (or ``(n, V, 3, H, W)`` with ``views``) on ``device``: JPEGs decoded by
    ``torchvision.io.decode_jpeg(device=...)`` (nvjpeg on CUDA), other formats on the CPU; the resize/crop/flip steps
    of ``transform`` run on uint8 tensors with the same seeded random draws as :func:`load_image_views`."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    device = torch.device(device)
    before, after = _tensor_steps(transform)
    jpeg = [i for i, d in enumerate(datas) if d[:2].tolist() == [0xFF, 0xD8]]
    images: list[torch.Tensor | None] = [None] * len(datas)
    if jpeg:
        decoded = decode_jpeg([datas[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpeg, decoded):
            images[i] = img
    for i, d in enumerate(datas):
        if images[i] is None:
            images[i] = decode_image(d, mode=ImageReadMode.RGB).to(device, non_blocking=True)

    def run(img: torch.Tensor) -> torch.Tensor:
        for t in before:
            img = t(img)
        x = img.float().div_(255)
        for t in after:
            x = t(x)
        return x
    out = []
    for img, path in zip(images, paths):
        if views is None:
            out.append(run(img))
            continue
        per_view = []
        for v in views:
            with torch.random.fork_rng(devices=[]):   # the crop/flip draws of load_image_views (CPU generator)
                torch.manual_seed(_view_seed(path, v))
                per_view.append(run(img))
        out.append(torch.stack(per_view))
    return torch.stack(out)


def iter_batches(loader: DataLoader):
    """The loader's batches; a worker's error (an unreadable image) comes out as its own one-line message."""
    try:
        yield from loader
    except Exception as e:  # noqa: BLE001 - re-raised, shortened
        raise worker_error(e) from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unique_by_key(items: list, keys: list[str]) -> list:
    """``items`` with one entry per key (the first), in order."""
    seen: dict[str, object] = {}
    for it, k in zip(items, keys):
        seen.setdefault(k, it)
    return list(seen.values())


def _paths(items: Sequence[Item] | Sequence[str]) -> list[str]:
    return [it.path if isinstance(it, Item) else str(it) for it in items]
