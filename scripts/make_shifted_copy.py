"""A domain-shifted, test-only copy of a dataset: each test image as a grayscale edge map (a "sketch" stand-in for
ImageNet-Sketch/-R when those are not on the machine). The copy keeps the class folders' names (wnids for
Imagenette), so ``clip-adapter evaluate`` and an experiment's ``transfer`` map its classes by wnid.

    python scripts/make_shifted_copy.py ../shared/datasets/imagenette results/shifted/imagenette_edges --per-class 50
    python scripts/make_shifted_copy.py ../shared/datasets/imagenette results/shifted/imagenette_edges5 \
        --per-class 50 --classes 5      # a 5-class subset, as ImageNet-A/-R are 200 of ImageNet's 1000

Writes ``OUT/images/<class folder>/<name>.png`` and ``OUT/split_zhou_<Name>.json`` (every image in ``test``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps


def shifted(path: str) -> Image.Image:
    """Grayscale, edge map (PIL FIND_EDGES), inverted: dark strokes on white, like a sketch."""
    with Image.open(path) as img:
        gray = ImageOps.grayscale(img.convert("RGB"))
    return ImageOps.invert(gray.filter(ImageFilter.FIND_EDGES)).convert("RGB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a dataset folder (CoOp layout or class folders)")
    p.add_argument("out", help="the new dataset folder (must not exist)")
    p.add_argument("--per-class", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--classes", type=int, default=None, help="keep the first N classes (default: all)")
    args = p.parse_args(argv)
    from clip_adapter import load_dataset
    ds = load_dataset(args.source)
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose a new folder.", file=sys.stderr)
        return 1
    keep = range(ds.num_classes if args.classes is None else min(args.classes, ds.num_classes))
    entries, count = [], {y: 0 for y in keep}
    for it in ds.split("test"):
        if it.label not in count or (args.per_class is not None and count[it.label] >= args.per_class):
            continue
        count[it.label] += 1
        rel = f"{Path(it.path).parent.name}/{Path(it.path).stem}.png"
        (out / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        shifted(it.path).save(out / "images" / rel)
        entries.append([rel, it.label, ds.classnames[it.label]])
    name = "".join(w.capitalize() for w in out.name.replace("-", "_").split("_"))
    (out / f"split_zhou_{name}.json").write_text(json.dumps({"train": [], "val": [], "test": entries}, indent=4))
    print(f"{len(entries)} images of {len(count)} classes -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
