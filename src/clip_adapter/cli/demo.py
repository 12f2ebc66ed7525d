"""``clip-adapter demo``: the offline demo (lite backbone, shipped Fashion-MNIST subset) and its table."""
from __future__ import annotations

import argparse
import time

from .common import add_backbone_args, backbone_from_args, count, int_list, seed


def register(sub) -> None:
    p = sub.add_parser("demo", help="offline demo: lite backbone on the shipped Fashion-MNIST subset.",
                       description="Zero-shot vs linear probe vs CLIP-Adapter on a small real dataset shipped with "
                                   "the package, with the offline 'lite' backbone (no network).")
    add_backbone_args(p, default="lite")
    p.add_argument("--output", default="runs/demo", help="output directory (default: runs/demo).")
    p.add_argument("--cache-dir", default=None, help="feature cache directory.")
    p.add_argument("--shots", type=int_list(1), default=[1, 2, 4, 8, 16],
                   help="shots to run, comma-separated (default: 1,2,4,8,16).")
    p.add_argument("--seed", type=seed, default=1, help="seed (default: 1).")
    # default None -> demo.DEMO_VIEWS, read when the command runs (importing ..demo here would load torch for --help)
    p.add_argument("--views", type=count(0), default=None,
                   help="cached augmented views per training image (default: the demo's, 2; the paper's is 10).")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    p.set_defaults(func=cmd_demo)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _fmt(chosen: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in chosen.items()) or "-"


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import DEMO_VIEWS, demo_dataset, demo_workload, run_demo   # torch-heavy: only when it runs
    from ..report import format_table
    if args.views is None:
        args.views = DEMO_VIEWS
    t0 = time.perf_counter()
    work = demo_workload(args.shots, args.views)
    n_enc = work["images"] + work["view_encodings"]
    # Measured on an idle 2-core CPU (benchmarks/results/demo_time.json, load ~1): 78 s for 960 images with an empty
    # cache (encoding ~20 s, the lite alignment map ~17 s, the fits the rest), 57 s warm; about twice that at load 6.
    fits_s = 55
    print(f"demo: {work['fits']} fits; encodes {n_enc} images on the first run (expected ~{_minutes(n_enc / 40 + fits_s)} "
          f"on an idle 2-core CPU, ~{_minutes(fits_s)} once the features are cached; longer under load)", flush=True)
    backbone = backbone_from_args(args)
    ds = demo_dataset()
    print(f"backbone {backbone.id}; dataset {ds.name}: {ds.num_classes} classes, "
          f"{len(ds.split('train'))}/{len(ds.split('val'))}/{len(ds.split('test'))} train/val/test images")
    result = run_demo(backbone, args.shots, seed=args.seed, output=args.output, cache_dir=args.cache_dir,
                      progress=not args.no_progress, device=args.device, n_views=args.views)
    zs = result.records[0]["accuracy"]
    rows = [{"method": r["method"], "shots": r["shots"], "chosen on val": _fmt(r["chosen"]),
             "test acc": r["accuracy"], "gain vs zero-shot": f"{r['accuracy'] - zs:+.4f}",
             "train s": f"{r['train_seconds']:.1f}"} for r in result.records]
    print(format_table(rows, list(rows[0])))
    if result.figure:
        print(f"figure: {result.figure}")
    print(f"results: {args.output}  (total {time.perf_counter() - t0:.0f} s)")
    return 0
