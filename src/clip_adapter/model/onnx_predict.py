"""Classify images with an exported ONNX classifier, using onnxruntime, numpy and Pillow only (no torch, no
clip-adapter). ``clip-adapter export`` copies this file next to the graph:

    python onnx_predict.py model.onnx a.jpg b.jpg --top-k 3

It reads ``model.onnx.json`` (class names and preprocessing) and prints one JSON line per image. Images are decoded by
``clip_adapter_images.py`` (copied beside it: clip-adapter's own decoder, numpy and Pillow only), so a 16-bit or
transparent image reads as it does in training.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

try:  # next to an exported graph: the decoder copied beside this file (16-bit, transparency, EXIF, CMYK...)
    from clip_adapter_images import open_rgb
except ImportError:  # inside the package
    from clip_adapter.datasets.images import open_rgb

__all__ = ["preprocess", "OnnxClassifier"]


def preprocess(image: Image.Image, spec: dict) -> np.ndarray:
    """A PIL image -> float32 ``(3, H, W)`` as the sidecar's ``preprocessing`` says (torchvision's test transform:
    resize the shorter side, centre crop, scale to [0, 1], normalise)."""
    image = image.convert("RGB")
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(spec["interpolation"], Image.BICUBIC)
    size = spec["resize_shorter_side"]
    if size:
        w, h = image.size
        if w <= h:
            new = (size, int(size * h / w))
        else:
            new = (int(size * w / h), size)
        if new != (w, h):
            image = image.resize(new, resample)
    ch, cw = spec["center_crop"]
    w, h = image.size
    left, top = int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
    image = image.crop((left, top, left + cw, top + ch))
    x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


class OnnxClassifier:
    """An exported classifier: ``OnnxClassifier("model.onnx").predict_proba(["a.jpg"])`` -> ``(n, C)`` numpy."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort
        self.path = Path(path)
        self.meta = json.loads(Path(f"{self.path}.json").read_text())
        self.classes = list(self.meta["classes"])
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])

    def predict_proba(self, paths) -> np.ndarray:
        batch = np.stack([preprocess(open_rgb(p), self.meta["preprocessing"]) for p in paths])
        return self.session.run(["probs"], {"images": batch})[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Classify images with an exported clip-adapter ONNX model.")
    ap.add_argument("model", help="the .onnx file (its .onnx.json must be next to it).")
    ap.add_argument("images", nargs="+", help="image files.")
    ap.add_argument("--top-k", type=int, default=1, help="classes per image (default: 1).")
    args = ap.parse_args(argv)
    clf = OnnxClassifier(args.model)
    probs = clf.predict_proba(args.images)
    for path, p in zip(args.images, probs):
        top = np.argsort(-p)[:args.top_k]
        print(json.dumps({"path": path, "top": [[clf.classes[i], round(float(p[i]), 6)] for i in top]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
