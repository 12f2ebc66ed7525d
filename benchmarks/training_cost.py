"""Training cost and accuracy: the paper's way (encoder on fresh augmentations every step) vs cached views.

(a) paper: every epoch, each training image is decoded and augmented afresh with the backbone's train
    transform, encoded (frozen encoder, ``no_grad``), and the adapter takes an SGD step on the batch; this
    is what the official CLIP-Adapter/Dassl trainer does.
(b) ours:  ``FeatureCache.views`` encodes V seeded augmented views per image once (timed separately, on a fresh
    cache folder), then ``ClipAdapter.fit`` / ``train_loop`` trains on them, drawing one view per image per epoch.

Both use the same adapter (``Adapter(d, reduction 4)``, the same seeded init), blend, logit scale, epochs,
batch size, optimiser (SGD momentum 0.9, weight decay 5e-4, cosine schedule after one warm-up epoch:
``lr_at_epoch``) and a fixed alpha (no selection on val: the comparison is about the training data path,
so nothing is tuned). The test split is encoded once with the test transform and scored once per model.

    python benchmarks/training_cost.py                                   # lite, dtd10 x 3 seeds, flowers89 x 1 seed
    python benchmarks/training_cost.py --quick                           # smoke test (minutes)
    python benchmarks/training_cost.py --synthetic --backbone RN50 --pretrained none --device cuda   # GPU timings
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import _util
from clip_adapter import FeatureCache, encode_class_texts, get_method, load_dataset, sample_k_shot
from clip_adapter.datasets import Dataset, Item
from clip_adapter.features import ImageListDataset, default_num_workers
from clip_adapter.methods.clip_adapter import ClipAdapterConfig
from clip_adapter.methods.common import Adapter, blend, cosine_logits
from clip_adapter.prompts import ClassText
from clip_adapter.training import lr_at_epoch

log = _util.log


class _Labelled(torch.utils.data.Dataset):
    """(freshly augmented image, label): what a Dassl data loader yields each epoch."""

    def __init__(self, paths: list[str], labels: list[int], transform):
        self.images, self.labels = ImageListDataset(paths, transform), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def train_paper_way(backbone, items: list[Item], text: ClassText, cfg: ClipAdapterConfig, num_workers: int) -> dict:
    """(a) Encoder forward on freshly augmented images at every step; only the adapter learns."""
    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[]):           # the same seeded init as ClipAdapter._build
        torch.manual_seed(cfg.seed)
        adapter = Adapter(backbone.embed_dim, cfg.reduction, cfg.bias, cfg.final_relu)
    adapter.to(device).train()
    text_feats = text.features.float().to(device)
    params = list(adapter.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n = len(items)
    loader = DataLoader(_Labelled([it.path for it in items], [it.label for it in items], backbone.train_transform),
                        batch_size=cfg.batch_size, shuffle=True, drop_last=n >= cfg.batch_size,
                        num_workers=num_workers, persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed)  # augmentation draws in the main process (num_workers=0)
    encode_s = steps = 0
    losses = []
    _util.sync(device)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at_epoch(cfg, epoch)
        total = seen = 0
        for images, labels in loader:
            t_enc = time.perf_counter()
            with torch.no_grad():
                feats = backbone.encode_images(images).to(device)   # frozen encoder, every step
            encode_s += time.perf_counter() - t_enc
            labels = labels.to(device)
            logits = cosine_logits(blend(feats, adapter, cfg.alpha), text_feats, text.logit_scale)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total += loss.item() * len(labels)
            seen += len(labels)
        losses.append(total / max(seen, 1))
    _util.sync(device)
    seconds = time.perf_counter() - t0
    adapter.cpu().eval().requires_grad_(False)
    return {"adapter": adapter, "seconds": seconds, "encode_seconds": encode_s, "steps": steps,
            "images_encoded": steps * cfg.batch_size if n >= cfg.batch_size else steps * n, "final_loss": losses[-1]}


def paper_logits(adapter, feats: torch.Tensor, text: ClassText, alpha: float) -> torch.Tensor:
    with torch.no_grad():
        return cosine_logits(blend(feats.float(), adapter, alpha), text.features.float(), text.logit_scale)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def _labels(items) -> torch.Tensor:
    return torch.tensor([it.label for it in items], dtype=torch.long)


def _view_steps(views: list[int]) -> list[list[int]]:
    """Views encoded in increments (1 -> 5 -> 10 -> 20): each count's cumulative time is measured, not estimated."""
    steps, prev = [], 0
    for v in sorted(set(views)):
        steps.append(list(range(prev, v)))
        prev = v
    return steps


def mean_std(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.fmean(xs), 4), "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def synthetic_dataset(root: Path, n_classes: int, shots: int, n_test: int) -> Dataset:
    pairs = _util.make_images(root, n_classes, shots + n_test)
    by_class: dict[int, list[str]] = {}
    for p, c in pairs:
        by_class.setdefault(c, []).append(p)
    train = [Item(p, c) for c, ps in by_class.items() for p in ps[:shots]]
    test = [Item(p, c) for c, ps in by_class.items() for p in ps[shots:]]
    return Dataset("synthetic", [f"class {c}" for c in range(n_classes)], {"train": train, "val": test[:1], "test": test},
                   ["a photo of a {}."], source=str(root))


def run_seed(backbone, ds: Dataset, seed: int, args, text: ClassText, test_feats, test_labels, work: Path,
             num_workers: int, score: bool) -> dict:
    # repeat=True: a class with fewer than K training images is filled with repeats (flowers89 has classes with 14);
    # classes with K or more are sampled exactly as without it (the same seeded prefix).
    items = ds.split("train") if args.synthetic else sample_k_shot(ds.split("train"), args.shots, seed, repeat=True,
                                                                     classnames=ds.classnames)
    labels = _labels(items)
    cfg = ClipAdapterConfig(alpha=args.alpha, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            seed=seed, device=args.device)
    out: dict = {"n_train": len(items), "config": cfg.to_dict(), "loadavg_start": _util.loadavg()}

    # -- (a) the paper's way ----------------------------------------------------------------------------------
    if not args.skip_paper:
        log.info("%s seed %d: (a) paper way, %d images x %d epochs", ds.name, seed, len(items), args.epochs)
        pa = train_paper_way(backbone, items, text, cfg, num_workers)
        out["paper"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in pa.items() if k != "adapter"}
        out["paper"]["seconds_per_epoch"] = round(pa["seconds"] / args.epochs, 3)
        if score:
            out["paper"]["test_accuracy"] = round(accuracy(paper_logits(pa["adapter"], test_feats, text, args.alpha),
                                                           test_labels), 4)
        log.info("  (a) %.1f s (encoder %.1f s)%s", pa["seconds"], pa["encode_seconds"],
                 f", test acc {out['paper']['test_accuracy']:.4f}" if score else "")

    # -- (b) cached views -------------------------------------------------------------------------------------
    cache_dir = Path(tempfile.mkdtemp(prefix=f"cache-{ds.name}-{seed}-", dir=work))  # fresh: nothing reused
    try:
        cache = FeatureCache(backbone, root=cache_dir, batch_size=args.encode_batch, num_workers=num_workers,
                             progress=False)
        _util.sync(args.device)
        t = time.perf_counter()
        feats = cache.features(items)        # test-transform features of the training images (fit's `features`)
        feats_s = time.perf_counter() - t
        cached: dict = {"extract_train_features_seconds": round(feats_s, 3), "views": {}}
        cum = 0.0
        for chunk in _view_steps(args.views):
            t = time.perf_counter()
            cache.views(items, chunk)
            cum += time.perf_counter() - t
            v = chunk[-1] + 1
            cached["views"][str(v)] = {"extract_views_seconds": round(cum, 3),
                                       "extract_seconds": round(cum + feats_s, 3)}
            log.info("  (b) extracted %d views in %.1f s (cumulative)", v, cum)
        all_views = cache.views(items, max(args.views))
        for v in sorted(set(args.views)):
            m = get_method("clip_adapter", cfg)
            _util.sync(args.device)
            t = time.perf_counter()
            m.fit(feats, labels, text=text, views=all_views[:v])
            _util.sync(args.device)
            row = cached["views"][str(v)]
            row["train_seconds"] = round(time.perf_counter() - t, 4)
            row["total_seconds"] = round(row["train_seconds"] + row["extract_seconds"], 3)
            row["steps"] = m.history_["steps"]
            row["final_loss"] = round(m.history_["loss"][-1], 4)
            if score:
                row["test_accuracy"] = round(accuracy(m.logits(test_feats), test_labels), 4)
            log.info("  (b) V=%d: train %.2f s%s", v, row["train_seconds"],
                     f", test acc {row['test_accuracy']:.4f}" if score else "")
        if args.long_epochs:
            # Context, not the comparison: the paper trains 200 epochs; here only (b) is run that long.
            m = get_method("clip_adapter", ClipAdapterConfig(**{**cfg.to_dict(), "epochs": args.long_epochs}))
            v = max(args.views)
            t = time.perf_counter()
            m.fit(feats, labels, text=text, views=all_views)
            long = {"epochs": args.long_epochs, "views": v, "train_seconds": round(time.perf_counter() - t, 3)}
            if score:
                long["test_accuracy"] = round(accuracy(m.logits(test_feats), test_labels), 4)
            cached["long_run"] = long
        out["cached"] = cached
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    out["loadavg_end"] = _util.loadavg()
    return out


def summarise(per_seed: dict, views: list[int], headline_views: int) -> dict:
    seeds = list(per_seed.values())
    s: dict = {"seeds": len(seeds)}
    if all("paper" in r for r in seeds):
        s["paper_seconds"] = mean_std([r["paper"]["seconds"] for r in seeds])
        s["paper_seconds_per_epoch"] = mean_std([r["paper"]["seconds_per_epoch"] for r in seeds])
        s["paper_accuracy"] = mean_std([r["paper"].get("test_accuracy") for r in seeds])
    s["cached"] = {}
    for v in sorted(set(views)):
        rows = [r["cached"]["views"][str(v)] for r in seeds]
        c = {"extract_seconds": mean_std([x["extract_seconds"] for x in rows]),
             "train_seconds": mean_std([x["train_seconds"] for x in rows]),
             "accuracy": mean_std([x.get("test_accuracy") for x in rows])}
        if "paper_seconds" in s:
            pa = s["paper_seconds"]["mean"]
            c["ratio_paper_over_train"] = round(pa / c["train_seconds"]["mean"], 1)
            c["ratio_paper_over_extract_plus_train"] = round(
                pa / (c["extract_seconds"]["mean"] + c["train_seconds"]["mean"]), 2)
            diffs = [x.get("test_accuracy") - r["paper"]["test_accuracy"] for x, r in zip(rows, seeds)
                     if x.get("test_accuracy") is not None and r["paper"].get("test_accuracy") is not None]
            c["accuracy_minus_paper"] = mean_std(diffs)
            # Per-seed ratios pair measurements minutes apart (the machine's load drifts over a long run).
            c["ratio_paper_over_extract_plus_train_per_seed"] = mean_std(
                [r["paper"]["seconds"] / (x["extract_seconds"] + x["train_seconds"]) for x, r in zip(rows, seeds)])
        s["cached"][str(v)] = c
    s["headline_views"] = headline_views
    return s


def main() -> None:
    p = _util.parser(__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="lite", help="lite, or an open_clip architecture (RN50)")
    p.add_argument("--pretrained", default="none", help="open_clip tag for non-lite backbones; none = random init")
    p.add_argument("--root", default=str(_util.SHARED_DATASETS), help="folder holding dtd10/ and flowers89/")
    p.add_argument("--datasets", nargs="+", default=["dtd10", "flowers89"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--dataset-seeds", nargs="*", default=["flowers89:1"],
                   help="per-dataset seed override, NAME:S1,S2 (flowers89 costs ~9x dtd10 per seed on 2 cores)")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20, help="the same for (a) and (b)")
    p.add_argument("--alpha", type=float, default=0.6, help="fixed residual ratio (no selection)")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="both paths; the library default 2e-3 is tuned for 200 epochs and underfits in 10-20")
    p.add_argument("--batch-size", type=int, default=ClipAdapterConfig.batch_size)
    p.add_argument("--views", nargs="+", type=int, default=[1, 5, 10, 20], help="cached views per image to compare")
    p.add_argument("--headline-views", type=int, default=10, help="V used for the headline ratio (RunSpec default)")
    p.add_argument("--long-epochs", type=int, default=200, help="also train (b) this long, for context (0 = skip)")
    p.add_argument("--encode-batch", type=int, default=32, help="images per encoder call, both paths")
    p.add_argument("--num-workers", type=int, default=None, help="loader processes, both paths (default: the cache's)")
    p.add_argument("--skip-paper", action="store_true", help="only (b) (for trying view counts)")
    p.add_argument("--synthetic", action="store_true",
                   help="generated images instead of the shared datasets: timings only (GPU machines have no data)")
    p.add_argument("--synthetic-classes", type=int, default=10)
    p.add_argument("--max-test", type=int, default=0, help="score on every k-th test image to keep this many (0 = all)")
    p.add_argument("--name", default=None, help="result name (default training_cost[_quick])")
    p.add_argument("--resummarise", metavar="JSON", help="recompute the summaries of an existing result file and exit")
    p.add_argument("--work", default=None, help="scratch folder for caches/images (default: a temp dir)")
    args = p.parse_args()
    if args.resummarise:
        from clip_adapter.io import write_json
        r = json.loads(Path(args.resummarise).read_text())
        for e in r["results"].values():
            st = r["settings"]
            e["summary"] = summarise(e["seeds"], st["views"], st["headline_views"])
        write_json(args.resummarise, r)
        return
    if args.quick:
        args.seeds, args.dataset_seeds, args.epochs = args.seeds[:1], [], min(args.epochs, 2)
        args.views, args.headline_views, args.long_epochs = [1, 2], 2, 0
        args.shots, args.max_test = min(args.shots, 2), args.max_test or 40
        args.synthetic_classes = min(args.synthetic_classes, 10)
        if not args.synthetic:
            args.datasets = args.datasets[:1]
    if args.headline_views not in args.views:
        args.views.append(args.headline_views)
    _util.setup(args)
    name = args.name or ("training_cost" + ("_quick" if args.quick else ""))
    num_workers = default_num_workers() if args.num_workers is None else args.num_workers
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-training-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    backbone = _util.load_backbone_arg(args.backbone, args.pretrained, args.device)
    seeds_for = {k: [int(s) for s in v.split(",")] for k, v in (x.split(":", 1) for x in args.dataset_seeds)}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "verbose", "quick", "device", "name", "work")}
    settings.update(backbone_id=backbone.id, embed_dim=backbone.embed_dim, num_workers_used=num_workers,
                    seeds_per_dataset={d: seeds_for.get(d, args.seeds) for d in args.datasets},
                    optimizer="sgd", momentum=ClipAdapterConfig.momentum, weight_decay=ClipAdapterConfig.weight_decay,
                    warmup_epochs=ClipAdapterConfig.warmup_epochs, schedule="cosine after constant warm-up",
                    selection="none: alpha fixed", repeat_shots=True, test_scoring="test split, test transform, scored once per model")
    rec = _util.Result(name, args, settings)
    try:
        datasets = ["synthetic"] if args.synthetic else args.datasets
        for dname in datasets:
            if args.synthetic:
                ds = synthetic_dataset(work / "images", args.synthetic_classes, args.shots, n_test=1)
            else:
                ds = load_dataset(Path(args.root) / dname)
            score = not args.synthetic
            text = encode_class_texts(backbone, ds.classnames, ds.templates)
            entry: dict = {"dataset": ds.name, "classes": ds.num_classes, "templates": ds.templates, "seeds": {}}
            test_feats = test_labels = None
            if score:
                test_items = ds.split("test")
                if args.max_test and len(test_items) > args.max_test:
                    test_items = test_items[:: -(-len(test_items) // args.max_test)]
                t = time.perf_counter()
                test_cache = FeatureCache(backbone, root=work / "test-cache", batch_size=args.encode_batch,
                                          num_workers=num_workers, progress=False)
                test_feats = test_cache.features(test_items)
                test_labels = _labels(test_items)
                entry["n_test"] = len(test_items)
                entry["test_extract_seconds"] = round(time.perf_counter() - t, 2)
                zs = get_method("zero_shot").fit(text=text)
                entry["zero_shot_accuracy"] = round(accuracy(zs.logits(test_feats), test_labels), 4)
                log.info("%s: %d test images encoded in %.1f s; zero-shot %.4f", ds.name, len(test_items),
                         entry["test_extract_seconds"], entry["zero_shot_accuracy"])
            rec.record["results"][dname] = entry
            for seed in seeds_for.get(dname, args.seeds):
                entry["seeds"][str(seed)] = run_seed(backbone, ds, seed, args, text, test_feats, test_labels, work,
                                                     num_workers, score)
                entry["summary"] = summarise(entry["seeds"], args.views, args.headline_views)
                rec.write()   # after every seed: an interrupted run keeps what it measured
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    rec.write()


if __name__ == "__main__":
    main()
