"""CLIP-LoRA training cost: seconds per iteration of the paper's step (a batch of freshly augmented images through
the adapted image tower, every class prompt through the adapted text tower, backward into the LoRA tensors), and
what the paper's schedule (500 x K iterations for K shots) costs at that rate.

Speed does not depend on weight values, so the backbone is a random-init open_clip architecture by default and the
images are generated JPEGs; nothing here measures accuracy.

    python benchmarks/clip_lora_cost.py --quick                                   # tiny-vit smoke test (seconds)
    python benchmarks/clip_lora_cost.py --backbone ViT-B-16 --classes 10 --iters 2 --threads 2   # CPU
    python benchmarks/clip_lora_cost.py --backbone ViT-B-16 --device cuda --classes 100 --iters 50
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import _util
from clip_adapter.imageset import ImageSet
from clip_adapter.methods.clip_lora import ClipLora, ClipLoraConfig
from clip_adapter.prompts import encode_class_texts

log = _util.log


def main() -> None:
    p = _util.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip architecture (random init unless --pretrained)")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--classes", type=int, default=10, help="classes (prompts through the text tower every step)")
    p.add_argument("--shots", type=int, default=4, help="training images per class")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (after one warm-up fit of 1 iteration)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="image-loading processes (default: the method's)")
    args = p.parse_args()
    if args.quick:
        args.backbone, args.classes, args.shots, args.iters = "tiny-vit", 4, 2, 3
    _util.setup(args)
    bb = _util.load_backbone_arg(args.backbone, args.pretrained, args.device)
    size = 256 if not args.quick else 48
    with tempfile.TemporaryDirectory() as tmp:
        items = _util.make_images(Path(tmp) / "imgs", args.classes, args.shots, size=size)
        images = ImageSet.of([path for path, _ in items], bb)
        labels = torch.tensor([c for _, c in items])
        names = [f"class {c}" for c in range(args.classes)]
        text = encode_class_texts(bb, names, ["a photo of a {}."])
        cfg = ClipLoraConfig(batch_size=args.batch_size, device=args.device, num_workers=args.workers)
        ClipLora(ClipLoraConfig(**{**cfg.to_dict(), "iters": 1}), backbone=bb).fit(images, labels, text=text)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _util.sync(args.device)
        t0 = time.perf_counter()
        m = ClipLora(ClipLoraConfig(**{**cfg.to_dict(), "iters": args.iters}), backbone=bb)
        m.fit(images, labels, text=text)
        _util.sync(args.device)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        m.predict(images)
        _util.sync(args.device)
        predict_s = time.perf_counter() - t0
    per_iter = m.history_["seconds"] / args.iters
    res = _util.Result("clip_lora_cost", args, {
        "backbone": bb.id, "classes": args.classes, "shots": args.shots, "iters": args.iters,
        "batch_size": args.batch_size, "image_size": size, "config": cfg.to_dict()})
    res.record["results"] = {
        "seconds_per_iteration": round(per_iter, 4), "fit_seconds": round(fit_s, 2),
        "trainable_parameters": m.num_trainable_parameters(), "lora_modules": len(m.targets_),
        "predict_images_per_second": round(len(images) / predict_s, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        if args.device.startswith("cuda") else None,
        # The paper's schedule at this rate (the text-tower share grows with the number of classes).
        "paper_schedule_hours": {f"{k} shots": round(500 * k * per_iter / 3600, 2) for k in (1, 2, 4, 8, 16)},
    }
    log.info("%s: %.3f s/iteration, %d trainable parameters", bb.id, per_iter, m.num_trainable_parameters())
    res.write()


if __name__ == "__main__":
    main()
