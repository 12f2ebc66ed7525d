"""Image-encoder speed, side by side in one run: today's path vs channels_last, bf16 autocast, torch.compile and
ONNX Runtime, for the lite encoder and a small open_clip one; each variant's features compared with today's.

Images are decoded and transformed once (real dtd10 photos when ../shared is present, else generated), so this
times the encoder alone (img/s). A variant is "equal" when its largest cosine distance to today's features
(1 - cos, over the images) is at most 1e-3. Variants run interleaved, ``--rounds`` times, and the median is kept:
on a shared machine the load moves between minutes.

    python benchmarks/encoder_variants.py --threads 1                  # lite + RN50 (random init), 32 images
    python benchmarks/encoder_variants.py --quick                       # smoke test: lite + tiny-vit, 8 images
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import _util

log = _util.log


def _images(backbone, n: int) -> torch.Tensor:
    from PIL import Image
    root = _util.SHARED_DATASETS / "dtd10"
    paths = sorted(root.rglob("*.jpg"))[:n] if root.is_dir() else []
    if len(paths) < n:
        paths = [p for p, _ in _util.make_images(Path(tempfile.gettempdir()) / "enc_variants", 4, -(-n // 4))][:n]
    return torch.stack([backbone.test_transform(Image.open(p).convert("RGB")) for p in paths])


class _Features(torch.nn.Module):
    """The image tower as one module from preprocessed images to features (what is compiled and exported)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        lite = hasattr(backbone, "image_model")
        self.net = backbone.image_model if lite else backbone.model.visual
        self.lite = lite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lite:
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        return self.net(x)


def _variants(backbone, micro: int, skip: set[str], size: tuple[int, int]) -> dict:
    """name -> (setup seconds, encode(images) -> features)."""
    feats = _Features(backbone).eval()
    out = {"today": (0.0, backbone.encode_images)}

    device = backbone.device

    def chunked(fn, fmt=torch.contiguous_format):
        return lambda imgs: torch.cat([fn(c.to(device).contiguous(memory_format=fmt)).float().cpu()
                                       for c in imgs.split(micro)])

    with torch.no_grad():
        if feats.lite:
            feats.net.to(memory_format=torch.contiguous_format)   # lite's today is channels_last: time the other
            out["contiguous (NCHW)"] = (0.0, torch.no_grad()(chunked(feats)))
        else:
            out["channels_last"] = (0.0, torch.no_grad()(chunked(feats, torch.channels_last)))

    for dtype in (torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.bfloat16,):
        def low(imgs, dtype=dtype):
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                return backbone.encode_images(imgs).float()
        out[f"{str(dtype).split('.')[-1]} autocast"] = (0.0, low)
    if "compile" not in skip:
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(feats)
            fmt = torch.channels_last if feats.lite else torch.contiguous_format
            run = torch.no_grad()(chunked(compiled, fmt))
            with torch.no_grad():
                run(torch.zeros(micro, 3, *size))   # compile happens on the first call
            out["torch.compile"] = (time.perf_counter() - t0, run)
        except Exception as e:  # noqa: BLE001 - report, don't fail the other variants
            log.warning("torch.compile failed: %s", str(e).splitlines()[0])
    if "onnx" not in skip and device.type == "cpu":
        t0 = time.perf_counter()
        try:
            out["onnxruntime"] = (0.0, _onnx(feats, micro, size))
            out["onnxruntime"] = (time.perf_counter() - t0, out["onnxruntime"][1])
        except Exception as e:  # noqa: BLE001
            log.warning("ONNX export/runtime failed: %s", str(e).splitlines()[0])
    return out


def _onnx(feats, micro: int, size: tuple[int, int]):
    import onnxruntime as ort
    path = Path(tempfile.mkdtemp()) / "image_encoder.onnx"
    if feats.lite:
        feats.net.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        torch.onnx.export(feats, (torch.zeros(micro, 3, *size),), str(path), dynamo=False,
                          input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "n"}, "features": {0: "n"}}, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if feats.lite:
        feats.net.to(memory_format=torch.channels_last)
    return lambda imgs: torch.cat([torch.from_numpy(sess.run(None, {"images": c.numpy()})[0])
                                   for c in imgs.split(micro)])


def measure(name: str, backbone, images: torch.Tensor, rounds: int, micro: int, skip: set[str]) -> dict:
    variants = _variants(backbone, micro, skip, tuple(images.shape[2:]))
    if hasattr(backbone, "image_model"):
        backbone.image_model.to(memory_format=torch.channels_last)   # today's lite path again
    with torch.no_grad():
        ref = backbone.encode_images(images).float()
    times: dict[str, list[float]] = {k: [] for k in variants}
    dist: dict[str, float] = {}
    for r in range(rounds):
        for k, (_, fn) in variants.items():
            if hasattr(backbone, "image_model"):
                fmt = torch.contiguous_format if k in ("contiguous (NCHW)",) else torch.channels_last
                backbone.image_model.to(memory_format=fmt)
            _util.sync(backbone.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                f = fn(images).float()
            _util.sync(backbone.device)
            times[k].append(time.perf_counter() - t0)
            dist[k] = float((1 - F.cosine_similarity(f, ref, dim=-1)).max())
    res = {}
    for k, ts in times.items():
        med = statistics.median(ts)
        res[k] = {"images_per_s": round(len(images) / med, 2), "seconds_median": round(med, 3),
                  "seconds": [round(t, 3) for t in ts], "setup_seconds": round(variants[k][0], 1),
                  "max_cosine_distance_to_today": dist[k], "equal_within_1e-3": dist[k] <= 1e-3}
        log.info("%-10s %-18s %7.2f img/s  max cos dist %.2e", name, k, res[k]["images_per_s"], dist[k])
    return res


def main() -> None:
    p = _util.parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=8, help="images per encoder call (lite's CPU default: 8)")
    p.add_argument("--open-clip", default="RN50", help="open_clip architecture (random init; speed only)")
    p.add_argument("--skip", nargs="*", default=[], choices=["compile", "onnx", "lite", "open_clip"])
    args = p.parse_args()
    _util.setup(args)
    if args.quick:
        args.images, args.rounds, args.open_clip = 8, 1, "tiny-vit"
    skip = set(args.skip)
    res = _util.Result("encoder_variants", args, {"images": args.images, "rounds": args.rounds,
                                                  "micro_batch": args.micro_batch, "open_clip": args.open_clip,
                                                  "skip": sorted(skip)})
    encoders = [] if "lite" in skip else [("lite", "lite", None)]
    if "open_clip" not in skip:
        encoders.append((args.open_clip, args.open_clip, None))
    for label, name, pretrained in encoders:
        try:
            bb = _util.load_backbone_arg(name, pretrained, args.device)
        except Exception as e:  # noqa: BLE001 - e.g. lite's weight packages missing on a bare GPU machine
            log.warning("%s skipped: %s", label, str(e).splitlines()[0])
            res.record["results"][label] = {"skipped": str(e).splitlines()[0]}
            continue
        images = _images(bb, args.images)
        with contextlib.suppress(KeyboardInterrupt):
            res.record["results"][label] = measure(label, bb, images, args.rounds, args.micro_batch, skip)
    res.write()


if __name__ == "__main__":
    main()
