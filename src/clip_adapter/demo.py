"""The offline demo: the whole pipeline on a small real dataset shipped with the package (``clip-adapter demo``).

Fashion-MNIST subset (MIT licence, see demo_data/fashion_mnist/LICENSE), the ``lite`` backbone by default:
zero-shot, then linear probe and CLIP-Adapter at each shot count (seed 1, hyper-parameters chosen on val), and the
accuracy-vs-shots figure. Every record comes from :func:`~clip_adapter.protocol.run_one`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Sequence

from .datasets import Dataset, load_dataset
from .features import FeatureCache
from .prompts import encode_class_texts
from .protocol import RunSpec, run_one
from .report import plot_dataset, summarize

__all__ = ["demo_dataset", "run_demo", "DemoResult", "DEMO_METHODS"]

log = logging.getLogger(__name__)

DEMO_METHODS = ("linear_probe", "clip_adapter")


def demo_dataset() -> Dataset:
    """The shipped Fashion-MNIST subset: 10 classes, 24 train / 8 val / 40 test images per class."""
    ds = load_dataset(Path(str(files("clip_adapter") / "demo_data" / "fashion_mnist" / "data.csv")))
    ds.name = "fashion_mnist_demo"
    return ds


@dataclass
class DemoResult:
    """The demo's records (zero-shot first), the figure it drew and the dataset it ran on."""

    records: list[dict]
    figure: Path | None
    dataset: Dataset


def run_demo(backbone, shots: Sequence[int] = (1, 2, 4, 8, 16), seed: int = 1, output: str | Path = "runs/demo",
             cache_dir: str | Path | None = None, progress: bool = True, device: str | None = None) -> DemoResult:
    """Zero-shot, then :data:`DEMO_METHODS` at each shot count on :func:`demo_dataset`; records go to ``output``."""
    ds = demo_dataset()
    cache = FeatureCache(backbone, root=cache_dir, progress=progress)
    text = encode_class_texts(backbone, ds.classnames, ds.templates)
    out = Path(output)
    records = [run_one(ds, backbone, RunSpec("zero_shot", seed=seed), cache, output=out, text=text)]
    for k in shots:
        for method in DEMO_METHODS:
            records.append(run_one(ds, backbone, RunSpec(method, shots=k, seed=seed, device=device), cache,
                                   output=out, text=text))
    figure = plot_dataset(summarize(records), f"{ds.name} ({backbone.id})", out / "accuracy_vs_shots.png")
    return DemoResult(records, figure, ds)
