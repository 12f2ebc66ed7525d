"""Batch-inference throughput of a saved-model-style classifier: images/s of the streaming path.

Measures what ``clip-adapter predict MODEL_DIR IMAGES... --out results.jsonl`` does (decode in DataLoader workers,
encode, classify, append JSON lines) over ~200 images, per backbone, batch size and worker count, plus the
encoder alone on already-decoded tensors (to show how much of the time is decoding).

    python benchmarks/inference.py                      # tiny-vit and lite, 200 images, writes the JSON below
    python benchmarks/inference.py --backbones tiny-vit --n-images 64

Images: the first ``--n-images`` of ``/work/shared/datasets/dtd10`` (real JPEGs, spread over classes) when present,
else generated 256x256 JPEGs. The classifier head is zero-shot over placeholder text features: its cost is a
(n, dim) x (dim, C) product, negligible next to the encoder, so throughput does not depend on it.
Writes ``benchmarks/results/inference.json`` (machine, versions, settings, results).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clip_adapter import ClassText, load_backbone
from clip_adapter.datasets import IMAGE_EXTENSIONS
from clip_adapter.features import default_num_workers
from clip_adapter.io import package_versions, write_json
from clip_adapter.methods import get_method
from clip_adapter.model import AdaptedClassifier, predict_to_jsonl

log = logging.getLogger("benchmarks.inference")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dtd10"
RESULT = Path(__file__).resolve().parent / "results" / "inference.json"


def pick_images(n: int, folder: Path | None, tmp: Path) -> tuple[list[str], str]:
    if folder is not None and folder.is_dir():
        files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if len(files) >= n:
            step = len(files) // n
            return files[::step][:n], f"{folder} (every {step}th of {len(files)} files)"
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp / f"gen_{i:04d}.jpg", quality=90)
    return sorted(str(p) for p in tmp.glob("gen_*.jpg")), "generated 256x256 random JPEGs"


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu or platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "load_average_at_start": list(os.getloadavg())}


def build_model(backbone) -> AdaptedClassifier:
    names = [f"class {i}" for i in range(10)]
    text = ClassText(names, ["a photo of a {}."], torch.randn(len(names), backbone.embed_dim,
                                                             generator=torch.Generator().manual_seed(0)),
                     float(backbone.logit_scale))
    return AdaptedClassifier(backbone, get_method("zero_shot").fit(text=text))


def bench_backbone(name: str, paths: list[str], batch_sizes: list[int], workers: list[int], tmp: Path,
                   device: str = "cpu") -> list[dict]:
    t0 = time.perf_counter()
    backbone = load_backbone(name, pretrained=None, device=device)  # random init for open_clip names; "lite" is real
    load_s = time.perf_counter() - t0
    model = build_model(backbone)
    rows = []
    # the encoder alone, on tensors decoded beforehand
    decoded = torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths[:64]])
    for bs in batch_sizes:
        model.backbone.encode_images(decoded[:bs])  # warm-up
        t = time.perf_counter()
        for i in range(0, len(decoded), bs):
            model.backbone.encode_images(decoded[i:i + bs])
        dt = time.perf_counter() - t
        rows.append({"backbone": backbone.id, "path": "encoder only (pre-decoded tensors)", "batch_size": bs,
                     "workers": None, "images": len(decoded), "seconds": round(dt, 3),
                     "images_per_s": round(len(decoded) / dt, 1), "backbone_load_s": round(load_s, 2)})
        log.info("%s encoder bs=%d: %.1f img/s", name, bs, len(decoded) / dt)
    for bs in batch_sizes:
        for w in workers:
            out = tmp / f"{name}-{bs}-{w}.jsonl"
            list(model.predict_stream(paths[:bs], batch_size=bs, num_workers=0))  # warm-up
            t = time.perf_counter()
            counts = predict_to_jsonl(model, paths, out, batch_size=bs, num_workers=w)
            dt = time.perf_counter() - t
            assert counts["written"] == len(paths) and counts["errors"] == 0, counts
            rows.append({"backbone": backbone.id, "path": "predict_to_jsonl (decode + encode + classify + write)",
                         "batch_size": bs, "workers": w, "images": len(paths), "seconds": round(dt, 3),
                         "images_per_s": round(len(paths) / dt, 1), "backbone_load_s": round(load_s, 2)})
            log.info("%s stream bs=%d workers=%d: %.1f img/s", name, bs, w, len(paths) / dt)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="tiny-vit,lite", help="comma-separated (default: tiny-vit,lite).")
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--images", default=str(SHARED), help="image folder (default: shared dtd10 if present).")
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--workers", default=f"0,{default_num_workers()}", help="DataLoader worker counts to compare.")
    ap.add_argument("--device", default="cpu", help="where the encoder runs (features come back to the CPU).")
    ap.add_argument("--out", default=str(RESULT))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    workers = sorted({int(x) for x in args.workers.split(",")})
    info = machine()
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths, source = pick_images(args.n_images, Path(args.images) if args.images else None, tmp)
        for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            try:
                rows += bench_backbone(name, paths, batch_sizes, workers, tmp, args.device)
            except Exception as e:  # noqa: BLE001 - an unavailable backbone is recorded, not fatal
                log.warning("backbone %s skipped: %s: %s", name, type(e).__name__, e)
                skipped[name] = f"{type(e).__name__}: {e}"
    info["load_average_at_end"] = list(os.getloadavg())
    result = {"benchmark": "inference", "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info,
              "versions": package_versions(), "images": {"source": source, "count": len(paths)},
              "settings": {"batch_sizes": batch_sizes, "workers": workers, "device": args.device},
              "results": rows, "skipped": skipped,
              "note": "the machine is shared: compare rows of one run, and read load_average_* before the numbers"}
    write_json(args.out, result)
    from clip_adapter.report import format_table
    print(format_table([{k: r[k] for k in ("backbone", "path", "batch_size", "workers", "images_per_s")} for r in rows],
                       ["backbone", "path", "batch_size", "workers", "images_per_s"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
