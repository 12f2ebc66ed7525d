"""Scaling out on Ray, side by side in one run: feature extraction (images/s) with the plain single-process path vs
Ray Data with 1 and 2 encoder actors (or one per GPU), and the wall time of a small experiment grid, plain vs Ray.

extraction: the same images (generated JPEGs, or ../shared datasets), a fresh cache folder per cell, the same
            batch size; Ray cells include Ray Data's decode tasks and the actors' start (model load), not ray.init.
grid:       a small config (zero-shot, linear probe, CLIP-Adapter; 2 shot counts x 2 seeds) run plain and on Ray
            with fresh output and cache folders; the Ray time includes extraction and actor starts.

    python benchmarks/ray_scaling.py                                 # lite backbone, CPU, 2 actors at most
    python benchmarks/ray_scaling.py --backbone RN50 --pretrained none --device cuda --actors 1 2 4 8
    python benchmarks/ray_scaling.py --quick                         # tiny-vit, seconds (numbers not meaningful)
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import _util
from clip_adapter import FeatureCache, load_dataset, run_experiment

log = _util.log


def _images(args, work: Path):
    if args.shared and _util.SHARED_DATASETS.is_dir():
        return load_dataset(_util.SHARED_DATASETS / "dtd10")
    root = work / "gen"
    _util.make_images(root, 10, max(3, args.images // 10), size=args.size)
    return load_dataset(root)


def extraction(args, work: Path, items: list, recipe, ray) -> list[dict]:
    from clip_adapter.distributed import ExtractRequest, extract_features
    backbone = recipe.build()
    rows = []
    cache = FeatureCache(backbone, root=work / "plain", batch_size=args.batch_size, num_workers=args.workers,
                         progress=False)
    t0 = time.perf_counter()
    cache.features(items)
    _util.sync(args.device)
    plain_s = time.perf_counter() - t0
    rows.append({"path": "plain", "actors": None, "images": len(items), "seconds": round(plain_s, 2),
                 "images_per_s": round(len(items) / plain_s, 1)})
    log.info("extraction plain: %.1f img/s", len(items) / plain_s)
    for n in args.actors:
        cache = FeatureCache(backbone, root=work / f"ray{n}", batch_size=args.batch_size, progress=False)
        stats = extract_features(recipe, cache, [ExtractRequest(items, "test")], encoder_actors=n)
        rows.append({"path": "ray", "actors": n, "images": stats["encoded"], "seconds": round(stats["seconds"], 2),
                     "images_per_s": round(stats["encoded"] / stats["seconds"], 1)})
        log.info("extraction ray x%d: %.1f img/s", n, stats["encoded"] / stats["seconds"])
    for r in rows:
        r["speedup_vs_plain"] = round(r["images_per_s"] / rows[0]["images_per_s"], 2)
    return rows


def grid(args, work: Path, data: str) -> list[dict]:
    name = args.backbone
    cfg = {"name": "bench", "datasets": [data], "shots": [1, 4] if not args.quick else [1], "seeds": [1, 2],
           "n_views": 2, "workers": args.workers, "batch_size": args.batch_size,
           "backbone": {"name": name, "pretrained": args.pretrained, "device": args.device},
           "methods": {"zero_shot": {}, "linear_probe": {},
                       "clip_adapter": {"grid": {"alpha": [0.2, 0.6]}, "overrides": {"epochs": args.epochs}}},
           "report": False}
    rows = []
    for mode in ("plain", "ray"):
        run = {**cfg, "output": str(work / f"grid_{mode}"), "cache_dir": str(work / f"grid_cache_{mode}")}
        if mode == "ray":
            run["executor"] = {"ray": {"address": "auto", "encoder_actors": max(args.actors)}}
        t0 = time.perf_counter()
        result = run_experiment(run, progress=False)
        rows.append({"mode": mode, "runs": result.ran, "seconds": round(time.perf_counter() - t0, 2),
                     "encoded_images": result.encoded_images})
        log.info("grid %s: %d runs in %.1f s", mode, result.ran, rows[-1]["seconds"])
    return rows


def main() -> None:
    p = _util.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="lite")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--images", type=int, default=400, help="generated images to extract")
    p.add_argument("--size", type=int, default=256, help="generated image side (px)")
    p.add_argument("--shared", action="store_true", help="extract ../shared/datasets/dtd10 instead")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="encoder actor counts to compare")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the plain path")
    p.add_argument("--epochs", type=int, default=20, help="CLIP-Adapter epochs in the grid")
    p.add_argument("--num-cpus", type=int, default=None, help="size of the local Ray cluster (default: all cores)")
    args = p.parse_args()
    if args.quick:
        args.backbone, args.images, args.size, args.epochs = "tiny-vit", 40, 64, 3
    _util.setup(args)
    from clip_adapter.backbones import BackboneSpec
    from clip_adapter.distributed import connect
    ray = connect(None, num_cpus=args.num_cpus)
    recipe = BackboneSpec.of(args.backbone, None if args.pretrained in ("none", "") else args.pretrained,
                             device=args.device)
    work = Path(tempfile.mkdtemp(prefix="ray_bench_"))
    try:
        ds = _images(args, work)
        items = [it for s in ("train", "val", "test") for it in ds.split(s)][: args.images]
        res = _util.Result("ray_scaling", args, {"backbone": args.backbone, "images": len(items),
                                                 "batch_size": args.batch_size, "actors": args.actors,
                                                 "ray_cpus": ray.cluster_resources().get("CPU"),
                                                 "ray_gpus": ray.cluster_resources().get("GPU", 0)})
        res.record["results"]["extraction"] = extraction(args, work, items, recipe, ray)
        res.record["results"]["grid"] = grid(args, work, ds.source)
        res.write()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
