"""Image-encoder speed, side by side in one run: today's path vs channels_last, bf16 autocast, torch.compile and
ONNX Runtime, for the lite encoder and a small open_clip one; each variant's features compared with today's.

Images are decoded and transformed once (real dtd10 photos when ../shared is present, else generated), so this
times the encoder alone (img/s). A variant is "equal" when its largest cosine distance to today's features
(1 - cos, over the images) is at most 1e-3. Variants run interleaved, ``--rounds`` times, and the median is kept:
on a shared machine the load moves between minutes.

    python benchmarks/encoder_variants.py --threads-list 2 1 --images 96 --open-clip-images 24 --rounds 3
    python benchmarks/encoder_variants.py --quick                       # smoke test: lite + tiny-vit, 8 images

``--threads-list`` measures every encoder once per torch thread count, in one run (results keyed ``"<n> threads"``).
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

    # The library's own options (load_backbone(..., precision=, compile=, runtime=); CLI --precision/--compile/
    # --runtime): the same ImageRunner the backbone builds, in its own cache folder so that ONNX is exported here and
    # its export time is the setup time. fp16 on the CPU: autocast accepts it, but this CPU has no native fp16 math
    # (a first run stalled): CUDA only.
    options = [("bf16 autocast", {"precision": "bf16"})]
    if device.type == "cuda":
        options.append(("fp16 autocast", {"precision": "fp16"}))
    if "compile" not in skip:
        options.append(("torch.compile", {"compile": True}))
    if "onnx" not in skip and device.type == "cpu":
        options.append(("onnxruntime", {"runtime": "onnx"}))
    fmt = torch.channels_last if feats.lite else torch.contiguous_format
    onnx_dir = Path(tempfile.mkdtemp(prefix="onnx_graphs"))
    for name, kw in options:
        t0 = time.perf_counter()
        try:
            runner = _runner(backbone, onnx_dir, size, **kw)
            run = torch.no_grad()(chunked(runner, fmt))
            run(torch.zeros(micro, 3, *size))   # compile / ONNX export happen on the first call
            out[name] = (time.perf_counter() - t0, run)
        except Exception as e:  # noqa: BLE001 - report, don't fail the other variants
            log.warning("%s failed: %s", name, str(e).splitlines()[0])
    return out


def _runner(backbone, onnx_dir: Path, size: tuple[int, int], **kw):
    from clip_adapter.backbones.encoder import EncoderOptions, ImageRunner, OnnxGraphCache, resolve
    device = torch.device(backbone.device)
    module = backbone.image_module()
    resolved = resolve(EncoderOptions(**kw), device, module is not None, backbone.onnx_by_default, backbone.id)
    return ImageRunner(module, resolved, device, backbone.id, (1, 3, *size), OnnxGraphCache(onnx_dir))


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
    p.add_argument("--images", type=int, default=32, help="images per lite measurement")
    p.add_argument("--open-clip-images", type=int, default=None,
                   help="images per open_clip measurement (default: --images; RN50 on one CPU thread is ~10x slower)")
    p.add_argument("--threads-list", type=int, nargs="*", default=None,
                   help="measure once per torch thread count (default: --threads or torch's choice)")
    p.add_argument("--name", default="encoder_variants", help="result file name (without .json)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=8, help="images per encoder call (lite's CPU default: 8)")
    p.add_argument("--open-clip", default="RN50", help="open_clip architecture (random init; speed only)")
    p.add_argument("--skip", nargs="*", default=[], choices=["compile", "onnx", "lite", "open_clip"])
    args = p.parse_args()
    _util.setup(args)
    if args.quick:
        args.images, args.rounds, args.open_clip = 8, 1, "tiny-vit"
    skip = set(args.skip)
    n_open_clip = args.open_clip_images or args.images
    threads = args.threads_list or [None]
    res = _util.Result(args.name, args, {"images": args.images, "open_clip_images": n_open_clip,
                                         "rounds": args.rounds, "micro_batch": args.micro_batch,
                                         "open_clip": args.open_clip, "skip": sorted(skip),
                                         "threads_list": args.threads_list})
    encoders = [] if "lite" in skip else [("lite", "lite", None, args.images)]
    if "open_clip" not in skip:
        encoders.append((args.open_clip, args.open_clip, None, n_open_clip))
    for n_threads in threads:
        if n_threads:
            torch.set_num_threads(n_threads)
        out = res.record["results"]
        if args.threads_list:
            out = out.setdefault(f"{n_threads} threads", {})
        for label, name, pretrained, n in encoders:
            try:
                bb = _util.load_backbone_arg(name, pretrained, args.device)
            except Exception as e:  # noqa: BLE001 - e.g. lite's weight packages missing on a bare GPU machine
                log.warning("%s skipped: %s", label, str(e).splitlines()[0])
                out[label] = {"skipped": str(e).splitlines()[0]}
                continue
            images = _images(bb, n)
            with contextlib.suppress(KeyboardInterrupt):
                out[label] = {"loadavg_before": _util.loadavg(), "images": n, "torch_threads": torch.get_num_threads(),
                              **measure(label, bb, images, args.rounds, args.micro_batch, skip)}
            out[label]["loadavg_after"] = _util.loadavg()
    res.write()


if __name__ == "__main__":
    main()
