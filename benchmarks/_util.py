"""Shared helpers of the benchmark scripts: common arguments, machine info, result files.

Every script writes ``<out>/<name>.json`` holding ``machine`` (CPU/GPU, threads, load average before and after),
``versions`` (``clip_adapter.io.package_versions()``), ``settings`` (every value that changes a number) and
``results``. Not part of the package: benchmarks are scripts, run one at a time.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "results"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

log = logging.getLogger("benchmarks")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="where encoders and adapters run: cpu, cuda, cuda:0")
    p.add_argument("--quick", action="store_true", help="a small smoke-test version (seconds, numbers not meaningful)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder the JSON result is written to")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def setup(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} asked but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}).")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git() -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info(device: str) -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "cpus_usable": affinity, "cpu_model": _cpu_model(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(), "device": str(device), "loadavg_start": loadavg(),
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def versions() -> dict[str, str]:
    from clip_adapter.io import package_versions
    return package_versions()


class Result:
    """Collects one benchmark's record; :meth:`write` stamps the end-of-run load and writes the JSON."""

    def __init__(self, name: str, args: argparse.Namespace, settings: dict[str, Any]):
        self.name, self.args = name, args
        self.t0 = time.perf_counter()
        self.record: dict[str, Any] = {
            "benchmark": name, "command": " ".join([Path(sys.executable).name] + sys.argv),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(args.device), "versions": versions(), "git": _git(),
            "settings": {"device": args.device, "quick": bool(args.quick), **settings}, "results": {},
        }

    def write(self) -> Path:
        from clip_adapter.io import write_json
        self.record["machine"]["loadavg_end"] = loadavg()
        self.record["wall_seconds"] = round(time.perf_counter() - self.t0, 2)
        self.record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = Path(self.args.out) / f"{self.name}.json"
        write_json(path, self.record)
        log.info("wrote %s", path)
        return path


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are honest."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def load_backbone_arg(name: str, pretrained: str | None, device: str):
    """``--backbone lite`` or an open_clip name (``RN50``) with ``--pretrained none`` for random init."""
    from clip_adapter import load_backbone
    if name == "lite":
        return load_backbone("lite", device=device)
    tag = None if pretrained in (None, "", "none", "None") else pretrained
    return load_backbone(name, pretrained=tag, device=device)


def make_images(root: Path, n_classes: int, per_class: int, size: int = 256, seed: int = 0) -> list[tuple[str, int]]:
    """Generated JPEGs (smooth colour fields + noise, a class colour each): for machines without the datasets.

    Speed does not depend on pixel values; JPEG decoding cost does depend on size, so they are photo-sized.
    """
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(n_classes):
        base = rng.uniform(30, 225, 3)
        for i in range(per_class):
            path = root / f"class{c:03d}" / f"img_{i:04d}.jpg"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                phase = rng.uniform(0, 6.28, 3)
                arr = base + 40 * np.sin(6 * xx[..., None] + 4 * yy[..., None] + phase) + rng.normal(0, 25, (size, size, 3))
                Image.fromarray(np.clip(arr, 0, 255).astype("uint8")).save(path, quality=85)
            out.append((str(path), c))
    return out
