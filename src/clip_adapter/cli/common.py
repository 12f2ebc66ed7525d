"""Option groups and builders several commands share: backbone and data options, the feature cache, grids."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:   # torch-heavy: imported when a command runs, so --help and parse errors answer at once
    from ..backbones import Backbone
    from ..features import FeatureCache

__all__ = ["Parser", "add_backbone_args", "add_encoder_args", "add_model_backbone_arg", "add_data_args",
           "backbone_from_args", "encoder_from_args", "cache_from_args", "parse_grid",
           "count", "seed", "int_list", "label", "parse_class_map"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``clip-adapter run: error: argument --shots: ...``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def count(low: int):
    """An argparse type: an int >= ``low``, with the one error shape."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}. Got {text!r} instead.") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}. Got {text!r} instead.")
        return value
    parse.__name__ = f"int>={low}"
    return parse


def seed(text: str) -> int:
    """An argparse type: a seed in 0..2**32-1 (what numpy and scikit-learn accept)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an int in [0, {2**32 - 1}]. Got {text!r} instead.")
    return value


def label(text: str) -> str:
    """An argparse type: a name used as one folder of the results (no path separators, not '.' or '..')."""
    if not text or text in (".", "..") or "/" in text or "\\" in text or text != text.strip():
        raise argparse.ArgumentTypeError(f"must be a name usable as a folder (no '/', not '.' or '..'). Got {text!r} "
                                         f"instead.")
    return text


def int_list(low: int):
    """An argparse type: ``"1,2,4"`` -> ``[1, 2, 4]``, each an int >= ``low``, none twice (one value: ``[n]``)."""
    one = count(low)

    def parse(text: str) -> list[int]:
        if "," not in text:
            return [one(text.strip())]  # the single-int error shape for a single value
        try:
            values = [one(x.strip()) for x in text.split(",") if x.strip()]
        except argparse.ArgumentTypeError:
            values = []
        if not values or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of distinct ints >= {low}. Got "
                                             f"{text!r} instead.")
        return values
    return parse


def parse_class_map(text: str | None) -> dict[str, str] | str | None:
    """``--class-map``: ``by-name``, ``shared``, a JSON file ``{dataset class: model class}``, or ``a=b,c=d``."""
    if text is None or text in ("by-name", "shared"):
        return text
    if text.endswith(".json"):
        try:
            mapping = json.loads(Path(text).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--class-map {text}: could not be read as JSON ({e}).") from None
    else:
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
            raise ValueError(f"--class-map {text!r} must be 'by-name', 'shared', FILE.json or dataset_class=model_class pairs "
                             f"separated by commas.")
        mapping = {a.strip(): b.strip() for a, b in pairs}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ValueError(f"--class-map {text}: expected an object of dataset class -> model class names.")
    return mapping


def add_backbone_args(p: argparse.ArgumentParser, default: str = "RN50") -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=default,
                   help=f"'lite' (offline EfficientNet-Lite0 + MiniLM), any open_clip model name (RN50, ViT-B-16, ...), "
                        f"an open_clip model-config JSON path, or hf:PATH / hf:HUB_ID for a Hugging Face CLIPModel or "
                        f"SiglipModel (default: {default}).")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, e.g. openai, laion2b_s34b_b79k; 'none' for random init "
                        "(default: openai).")
    g.add_argument("--checkpoint", default=None, help="local checkpoint file for the open_clip model (offline use).")
    g.add_argument("--device", default="cpu", help="torch device for encoders and training, e.g. cpu, cuda "
                                                   "(default: cpu).")
    add_encoder_args(g)


# Kept in step with clip_adapter.backbones.encoder (PRECISIONS, RUNTIMES; a test checks): importing it here would
# import torch on --help.
PRECISIONS, RUNTIMES = ("fp32", "bf16", "fp16"), ("torch", "onnx", "auto")
ENCODER_DEFAULTS = {"precision": "fp32", "compile": False, "runtime": "auto", "gpu_decode": False}


def add_encoder_args(g) -> None:
    """How the image encoder runs (every command that encodes images): ``--precision/--compile/--runtime/
    --gpu-decode``. Variants that change features get their own feature-cache folder; records say which ran."""
    g.add_argument("--precision", choices=PRECISIONS, default=ENCODER_DEFAULTS["precision"],
                   help="image-encoder precision: fp32 (exact), or bf16/fp16 autocast (faster where the hardware has "
                        "them; features move ~1e-2, cached separately) (default: fp32).")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the image encoder (6-85 s of compiling per process; 1.1-1.2x torch's "
                        "speed on this CPU) (default: off).")
    g.add_argument("--runtime", choices=RUNTIMES, default=ENCODER_DEFAULTS["runtime"],
                   help="image-encoder runtime: torch; onnx = ONNX Runtime (CPU, fp32; exported once into the cache "
                        "folder; lite ~3x faster, features equal to 2e-7 but cached apart); auto = onnx for lite on "
                        "the CPU (fp32, no --compile), else torch (default: auto).")
    g.add_argument("--gpu-decode", action="store_true",
                   help="decode JPEGs on the GPU (nvjpeg) with pinned loader memory when filling the feature cache; "
                        "CUDA only, off until measured (default: off).")


def encoder_from_args(args: argparse.Namespace) -> dict:
    """The encoder options of ``add_encoder_args`` as ``load_backbone`` / ``configure_encoder`` keywords."""
    return {k: getattr(args, k, v) for k, v in ENCODER_DEFAULTS.items()}


def add_model_backbone_arg(p: argparse.ArgumentParser) -> None:
    """``--backbone NAME`` of the commands that load a saved model (predict, evaluate, export)."""
    p.add_argument("--backbone", default=None, metavar="NAME",
                   help="load this backbone instead of the one the model folder describes, e.g. hf:PATH when the "
                        "Hugging Face folder it was trained on has moved (any name 'run --backbone' takes); its id "
                        "must be the model's (default: rebuilt from the model folder).")


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required,
                   help="a CoOp-layout folder (split_zhou_*.json), a class-folder tree, a CSV (path,label[,split]) "
                        "or a built-in dataset name (see 'clip-adapter datasets list').")
    g.add_argument("--root", default=None, help="where built-in datasets live (default: $CLIP_ADAPTER_DATA or ~/data).")
    g.add_argument("--cache-dir", default=None,
                   help="feature cache directory (default: $CLIP_ADAPTER_CACHE/features or "
                        "~/.cache/clip_adapter/features); private: created 0700, only your own files are read.")
    g.add_argument("--shared-cache", default=None, metavar="DIR",
                   help="use DIR as a feature cache shared with other users: their files are read too (your own "
                        "first), so every user who can write DIR decides your features. Also $CLIP_ADAPTER_SHARED_CACHE.")
    g.add_argument("--allow-outside-paths", action="store_true",
                   help="let split-file/CSV entries point outside the dataset folder (absolute paths, '..'); refused "
                        "by default.")
    g.add_argument("--batch-size", type=count(1), default=32, help="images per encoder call (default: 32).")
    g.add_argument("--workers", type=count(0), default=None,
                   help="image-decoding processes (default: half the cores).")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars.")


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    from ..backbones import load_backbone
    return load_backbone(args.backbone, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device,
                         **encoder_from_args(args))


def cache_from_args(args: argparse.Namespace, backbone: Backbone) -> FeatureCache:
    from ..features import FeatureCache
    shared = getattr(args, "shared_cache", None)
    if shared and args.cache_dir:
        raise ValueError(f"--cache-dir {args.cache_dir} and --shared-cache {shared} name two feature caches; give one.")
    return FeatureCache(backbone, root=shared or args.cache_dir, batch_size=args.batch_size, num_workers=args.workers,
                        progress=not args.no_progress, shared=True if shared else None)


def parse_grid(pairs: Sequence[str]) -> dict[str, list]:
    """``["alpha=0.2,0.4", "C=1,10"]`` -> ``{"alpha": [0.2, 0.4], "C": [1.0, 10.0]}``."""
    grid: dict[str, list] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--grid {pair!r} must look like key=v1,v2,...")
        k, v = pair.split("=", 1)
        values = [x.strip() for x in v.split(",") if x.strip()]
        if not k.strip() or not values:
            raise ValueError(f"--grid {pair!r} must look like key=v1,v2,... with at least one value.")
        grid[k.strip()] = [_grid_value(x, pair) for x in values]
    return grid


def _grid_value(x: str, pair: str):
    if x[:1].isdigit() or x[:1] in "-.":
        try:
            return json.loads(x)
        except json.JSONDecodeError:
            raise ValueError(f"--grid {pair!r}: {x!r} is not a number.") from None
    return {"true": True, "false": False, "null": None}.get(x.lower(), x)

