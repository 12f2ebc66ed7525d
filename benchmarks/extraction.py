"""Feature-extraction throughput: the full cache path vs the encoder alone, at the same batch size and device.

full path:     ``FeatureCache(backbone, root=<fresh dir>, batch_size=B, num_workers=W).features(images)``
               = JPEG decode + test transform (DataLoader, W worker processes) + encode + safetensors write.
encoder alone: ``backbone.encode_images`` on pre-made tensors ``(B, 3, H, W)`` already in memory.

Target: full path >= 0.9 x encoder alone. Each (batch size, workers) cell measures the encoder alone right
before the full path, so both see the same machine load; files are read once beforehand so the OS page cache
holds them (we measure decoding, not the disk).

    python benchmarks/extraction.py                                    # lite on real dtd10/flowers89 images
    python benchmarks/extraction.py --backbone RN50 --pretrained none  # random-init RN50 (speed only)
    python benchmarks/extraction.py --device cuda --synthetic          # on a GPU machine without the datasets
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import _util
from clip_adapter import FeatureCache, load_dataset

log = _util.log


def image_paths(args, work: Path) -> list[str]:
    if args.synthetic:
        return [p for p, _ in _util.make_images(work / "images", 10, -(-args.images // 10))][: args.images]
    paths: list[str] = []
    for name in args.datasets:
        ds = load_dataset(Path(args.root) / name)
        paths += [it.path for s in ("train", "val", "test") for it in ds.split(s)]
    # A fixed, dataset-mixed sample (every k-th file) so runs are comparable.
    step = max(1, len(paths) // args.images)
    return paths[::step][: args.images]


def encoder_alone(backbone, batch: torch.Tensor, n_images: int, device: str) -> float:
    """Images/s of ``encode_images`` on a pre-made batch, repeated to cover ``n_images``."""
    backbone.encode_images(batch)              # warm-up (allocator, cuDNN autotune, thread pool)
    _util.sync(device)
    reps = max(1, round(n_images / batch.shape[0]))
    t = time.perf_counter()
    for _ in range(reps):
        backbone.encode_images(batch)
    _util.sync(device)
    return reps * batch.shape[0] / (time.perf_counter() - t)


def full_path(backbone, paths: list[str], batch_size: int, workers: int, work: Path, device: str) -> dict:
    root = Path(tempfile.mkdtemp(prefix="fc-", dir=work))   # fresh: every image is decoded, encoded, written
    try:
        cache = FeatureCache(backbone, root=root, batch_size=batch_size, num_workers=workers, progress=False)
        _util.sync(device)
        t = time.perf_counter()
        feats = cache.features(paths)
        _util.sync(device)
        seconds = time.perf_counter() - t
        assert feats.shape == (len(paths), backbone.embed_dim) and cache.encoded_images == len(paths)
        written = sum(f.stat().st_size for f in root.rglob("*.safetensors"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"seconds": round(seconds, 3), "images_per_s": round(len(paths) / seconds, 2), "bytes_written": written}


def main() -> None:
    p = _util.parser(__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="lite", help="lite, or an open_clip architecture (RN50)")
    p.add_argument("--pretrained", default="none", help="open_clip tag for non-lite backbones; none = random init")
    p.add_argument("--root", default=str(_util.SHARED_DATASETS))
    p.add_argument("--datasets", nargs="+", default=["dtd10", "flowers89"])
    p.add_argument("--images", type=int, default=384, help="images per full-path measurement")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 64])
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=1, help="measure each cell this many times (median reported)")
    p.add_argument("--synthetic", action="store_true", help="generated JPEGs instead of the shared datasets")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--name", default=None, help="result name (default extraction[_<backbone>])")
    # The encoder options of the CLI (--precision/--compile/--runtime/--gpu-decode), applied to the backbone.
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx", "auto"])
    p.add_argument("--gpu-decode", action="store_true", help="decode JPEGs on the GPU in the full path (CUDA)")
    args = p.parse_args()
    if args.quick:
        args.images, args.batch_sizes, args.workers, args.repeats = 32, [8], [0, 1], 1
    _util.setup(args)
    name = args.name or ("extraction" + ("" if args.backbone == "lite" else f"_{args.backbone.lower()}")
                         + ("_quick" if args.quick else ""))
    work = Path(tempfile.mkdtemp(prefix="bench-extraction-"))
    try:
        backbone = _util.load_backbone_arg(args.backbone, args.pretrained, args.device)
        backbone.configure_encoder(precision=args.precision, compile=args.compile, runtime=args.runtime,
                                   gpu_decode=args.gpu_decode)
        paths = image_paths(args, work)
        for pth in paths:                       # warm the page cache: measure decoding, not the disk
            Path(pth).read_bytes()
        # Pre-made tensors: real images through the test transform, stacked once, outside any timing.
        pool = torch.stack([backbone.test_transform(_open(pth)) for pth in paths[: max(args.batch_sizes)]])
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "verbose", "quick", "device")}
        settings.update(encoder=backbone.encoder.record(), backbone_id=backbone.id, embed_dim=backbone.embed_dim, n_images=len(paths),
                        input_shape=list(pool.shape[1:]), what_full_path_includes=
                        "decode + test transform (DataLoader) + encode + safetensors write, fresh cache dir")
        rec = _util.Result(name, args, settings)
        cells = []
        for bs in args.batch_sizes:
            batch = pool[:bs] if pool.shape[0] >= bs else pool.repeat(-(-bs // pool.shape[0]), 1, 1, 1)[:bs]
            for w in args.workers:
                enc, full = [], []
                for _ in range(args.repeats):
                    enc.append(encoder_alone(backbone, batch, len(paths), args.device))
                    full.append(full_path(backbone, paths, bs, w, work, args.device))
                e = statistics.median(enc)
                f = statistics.median(x["images_per_s"] for x in full)
                cell = {"batch_size": bs, "num_workers": w, "encoder_alone_images_per_s": round(e, 2),
                        "full_path_images_per_s": round(f, 2), "ratio": round(f / e, 3),
                        "meets_target": f / e >= args.target, "loadavg": _util.loadavg(),
                        "runs": {"encoder_alone": [round(x, 2) for x in enc], "full_path": full}}
                cells.append(cell)
                log.info("batch %3d workers %d: encoder alone %.1f img/s, full path %.1f img/s, ratio %.3f", bs, w,
                         e, f, f / e)
                rec.record["results"] = {"cells": cells}
                rec.write()
        best = max(cells, key=lambda c: c["full_path_images_per_s"])
        rec.record["results"].update(
            best_full_path=best, best_ratio=max(cells, key=lambda c: c["ratio"]),
            meeting_target=[{k: c[k] for k in ("batch_size", "num_workers", "ratio", "full_path_images_per_s")}
                            for c in cells if c["meets_target"]])
        rec.write()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _open(path: str):
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


if __name__ == "__main__":
    main()
