"""Command line: a thin layer over the Python API.

    clip-adapter demo                                   # offline demo on the shipped dataset
    clip-adapter run --data DIR --method clip_adapter --shots 16 --seed 1
    clip-adapter datasets list | download NAME | verify NAME
    clip-adapter methods | backbones
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

log = logging.getLogger("clip_adapter")


# -- shared option groups -------------------------------------------------------------------------------------
def add_backbone_args(p: argparse.ArgumentParser, default: str = "RN50") -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=default,
                   help=f"'lite' (offline EfficientNet-Lite0 + MiniLM), any open_clip model name (RN50, ViT-B-16, ...) "
                        f"or an open_clip model-config JSON path (default: {default}).")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, e.g. openai, laion2b_s34b_b79k; 'none' for random init "
                        "(default: openai).")
    g.add_argument("--checkpoint", default=None, help="local checkpoint file for the open_clip model (offline use).")
    g.add_argument("--device", default="cpu", help="torch device for encoders and training, e.g. cpu, cuda "
                                                   "(default: cpu).")


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required,
                   help="a CoOp-layout folder (split_zhou_*.json), a class-folder tree, a CSV (path,label[,split]) "
                        "or a built-in dataset name (see 'clip-adapter datasets list').")
    g.add_argument("--root", default=None, help="where built-in datasets live (default: $CLIP_ADAPTER_DATA or ~/data).")
    g.add_argument("--cache-dir", default=None,
                   help="feature cache directory (default: $CLIP_ADAPTER_CACHE/features or "
                        "~/.cache/clip_adapter/features).")
    g.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default: 32).")
    g.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: half the cores).")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars.")


def load_backbone_from_args(args):
    from .backbone import load_backbone
    pretrained = None if str(args.pretrained).lower() in ("none", "") else args.pretrained
    return load_backbone(args.backbone, pretrained=pretrained, checkpoint=args.checkpoint, device=args.device)


def feature_cache_from_args(args, backbone):
    from .features import FeatureCache
    return FeatureCache(backbone, root=args.cache_dir, batch_size=args.batch_size, num_workers=args.workers,
                        progress=not args.no_progress)


def parse_grid(pairs: Sequence[str]) -> dict[str, list]:
    """``["alpha=0.2,0.4", "C=1,10"]`` -> ``{"alpha": [0.2, 0.4], "C": [1.0, 10.0]}``."""
    grid: dict[str, list] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--grid {pair!r} must look like key=v1,v2,...")
        k, v = pair.split("=", 1)
        grid[k.strip()] = [json.loads(x) if x.strip()[:1].isdigit() or x.strip()[:1] in "-." else x.strip()
                           for x in v.split(",") if x.strip()]
    return grid


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain Markdown table (no dependency needed for this)."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


# -- commands -------------------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from .data import load_dataset
    from .experiments import RunSpec, run_one
    from .fewshot import read_index_file
    from .methods import get_method_class

    cls = get_method_class(args.method)
    overrides = cls.config_cls.parse_overrides(args.set or [])
    fields = set(cls.config_cls.__dataclass_fields__)
    for flag, key, value in (("--alpha", "alpha", args.alpha), ("--alpha-text", "alpha_text", args.alpha_text),
                             ("--adapter", "target", args.adapter), ("--epochs", "epochs", args.epochs)):
        if value is None:
            continue
        if key not in fields:
            raise ValueError(f"{flag} does not apply to method {cls.name!r} (its config has no {key!r}).")
        overrides[key] = value
    if "device" in fields:
        overrides.setdefault("device", args.device)
    grid = parse_grid(args.grid) if args.grid else None
    dataset = load_dataset(args.data, root=args.root)
    templates = args.template or None
    backbone = load_backbone_from_args(args)
    train_items = val_items = None
    if args.fewshot_index:
        all_items = {s: dataset.split(s) for s in ("train", "val", "test")}
        idx = read_index_file(args.fewshot_index, all_items)
        train_items, val_items = idx["train"], idx.get("val")
    spec = RunSpec(method=cls.name, shots=args.shots, seed=args.seed, overrides=overrides, grid=grid,
                   n_views=args.views, repeat_shots=args.repeat_shots, templates=templates,
                   train_items=train_items, val_items=val_items)
    record = run_one(dataset, backbone, spec, cache=feature_cache_from_args(args, backbone), output=args.output,
                     save_model=args.save_model)
    rows = [{"dataset": record["dataset"], "method": record["method"], "shots": record["shots"],
             "seed": record["seed"], "chosen": json.dumps(record["chosen"]) if record["chosen"] else "-",
             "val acc": record["val_accuracy"], "test acc": record["accuracy"], "macro-F1": record["macro_f1"],
             "train s": round(record["train_seconds"], 2)}]
    print(format_table(rows, list(rows[0])))
    print(f"results: {record['result_file']}")
    if args.save_model:
        print(f"model: {record['model_dir']}")
    return 0


def cmd_methods(args) -> int:
    from .methods import get_method_class, list_methods
    rows = []
    for name in list_methods():
        cls = get_method_class(name)
        rows.append({"method": name, "trains": cls.trains, "searched on val": json.dumps(cls.default_grid) or "-",
                     "summary": (cls.__doc__ or "").strip().splitlines()[0]})
    print(format_table(rows, list(rows[0])))
    return 0


def cmd_backbones(args) -> int:
    from .backbone import list_backbones
    print("\n".join(list_backbones()))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-adapter", description="Few-shot adaptation of frozen CLIP models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="one few-shot run: sample K shots, fit, select on val, score on test.",
                       description="Fit one method on K shots per class, choose its hyper-parameters on the "
                                   "validation split, and report test accuracy. Features are cached.")
    add_data_args(p)
    add_backbone_args(p)
    g = p.add_argument_group("method")
    g.add_argument("--method", default="clip_adapter",
                   help="zero_shot, linear_probe, clip_adapter, ... ('clip-adapter methods' lists them; '-' or '_').")
    g.add_argument("--shots", type=int, default=16, help="training images per class (default: 16).")
    g.add_argument("--seed", type=int, default=1, help="few-shot sampling and training seed (default: 1).")
    g.add_argument("--alpha", type=float, default=None,
                   help="CLIP-Adapter residual ratio of the image adapter; fixes it (default: searched on val).")
    g.add_argument("--alpha-text", type=float, default=None, help="residual ratio of the text adapter.")
    g.add_argument("--adapter", choices=["image", "text", "both"], default=None,
                   help="where CLIP-Adapter's adapter sits (default: image).")
    g.add_argument("--epochs", type=int, default=None, help="training epochs (CLIP-Adapter default: 200).")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any method config field, e.g. --set lr=1e-3 --set optimizer=adamw.")
    g.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="values searched on val, e.g. --grid alpha=0.2,0.5,0.8 (default: the method's grid).")
    g.add_argument("--views", type=int, default=10, help="cached augmented views per training image (default: 10).")
    g.add_argument("--template", action="append", metavar="TEMPLATE",
                   help="prompt template with {} (repeat for an ensemble; default: the dataset's).")
    g.add_argument("--fewshot-index", default=None, help="a CoOp few-shot index file shot_K-seed_S.json.")
    g.add_argument("--repeat-shots", action="store_true",
                   help="sample with repetition when a class has fewer than --shots images.")
    g.add_argument("--output", default="runs", help="results directory (default: runs).")
    g.add_argument("--save-model", default=None, metavar="DIR", help="also save the fitted model to DIR.")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="offline demo: lite backbone on the shipped Fashion-MNIST subset.",
                       description="Zero-shot vs linear probe vs CLIP-Adapter on a small real dataset shipped with "
                                   "the package, with the offline 'lite' backbone (no network).")
    add_backbone_args(p, default="lite")
    p.add_argument("--output", default="runs/demo", help="output directory (default: runs/demo).")
    p.add_argument("--cache-dir", default=None, help="feature cache directory.")
    p.add_argument("--shots", default="1,2,4,8,16", help="shots to run (default: 1,2,4,8,16).")
    p.add_argument("--seed", type=int, default=1, help="seed (default: 1).")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("methods", help="list the few-shot methods.")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("backbones", help="list backbone names.")
    p.set_defaults(func=cmd_backbones)

    for mod in _optional_command_modules():
        mod.add_subcommands(sub)
    return parser


def _optional_command_modules():
    import importlib
    mods = []
    for name in ("catalog", "predict", "grid", "report"):
        try:
            mod = importlib.import_module(f"clip_adapter.{name}")
        except ImportError as e:
            if f"clip_adapter.{name}" not in str(e):
                raise
            continue
        if hasattr(mod, "add_subcommands"):
            mods.append(mod)
    return mods


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "timm", "root", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        if args.verbose >= 2:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
