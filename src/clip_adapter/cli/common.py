"""Option groups and builders several commands share: backbone and data options, the feature cache, grids."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from ..backbones import Backbone, load_backbone
from ..features import FeatureCache

__all__ = ["add_backbone_args", "add_data_args", "backbone_from_args", "cache_from_args", "parse_grid"]


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


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    return load_backbone(args.backbone, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)


def cache_from_args(args: argparse.Namespace, backbone: Backbone) -> FeatureCache:
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
