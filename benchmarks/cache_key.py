"""What keying the feature cache on an image's whole content costs, against decoding the image (#17, #19).

For each image of a folder: (a) sha256 of its first 4 KiB (the old key), (b) sha256 of the whole file (the key now),
(c) PIL decode to RGB (what encoding an image costs before the encoder even runs). Files are read once before
timing, so all three run from the page cache (the key is computed once per process and file in any case).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from PIL import Image

from _util import SHARED_DATASETS, Result, parser, setup


def _time(fn, paths: list[Path], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t0)
    return best / len(paths)


def _head(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.sha256(f.read(4096)).hexdigest()


def _full(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _decode(p: Path) -> None:
    with Image.open(p) as im:
        im.convert("RGB")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--folder", default=str(SHARED_DATASETS / "dtd10" / "images"), help="images to key")
    p.add_argument("--images", type=int, default=300, help="how many images (sorted, first N)")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (best kept)")
    args = p.parse_args()
    setup(args)
    rec = Result("cache_key" + ("_quick" if args.quick else ""), args,
                 {"folder": args.folder, "images": args.images, "repeat": args.repeat})
    paths = sorted(q for q in Path(args.folder).rglob("*") if q.suffix.lower() in {".jpg", ".jpeg", ".png"})
    paths = paths[:20 if args.quick else args.images]
    for q in paths:
        q.read_bytes()  # into the page cache
    sizes = [q.stat().st_size for q in paths]
    res = {name: _time(fn, paths, args.repeat) * 1e3 for name, fn in
           (("head_4kib_ms", _head), ("full_sha256_ms", _full), ("pil_decode_ms", _decode))}
    res.update(images=len(paths), mean_file_kib=sum(sizes) / len(sizes) / 1024,
               decode_over_full_hash=res["pil_decode_ms"] / res["full_sha256_ms"])
    rec.record["results"] = res
    rec.write()
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})


if __name__ == "__main__":
    main()
