"""Golden records: a refactor must not change a single number.

Each case runs zero-shot, linear probe, CLIP-Adapter and Tip-Adapter through the public API (``run_one``) on a tiny
real dataset, saves the CLIP-Adapter model, loads it back and predicts a few images; the records and predictions
are compared with ``tests/golden/<case>.json``: the same keys exactly, every number to 1e-6. Values that change on
every run (timings, timestamps, package versions, temporary paths) are compared by key only.

Cases: ``demo_lite`` (the Fashion-MNIST subset shipped in the package, lite backbone: runs everywhere),
``colors_tiny_vit`` (generated images, a seeded random-init open_clip ViT: runs everywhere) and ``dtd10_lite``
(DTD-10 from ../shared, lite backbone: skipped without ../shared).

Regenerate (only when a change is *meant* to change numbers, and say so in the commit):
``python -m pytest tests/test_golden.py --update-golden``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from clip_adapter import AdaptedClassifier, FeatureCache, RunSpec, load_dataset, run_one

from conftest import SHARED, few_test_images, make_color_images, needs_shared, seeded_backbone

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-6
# Keys whose values differ between runs of the same code; their presence is still checked.
VOLATILE = {"train_seconds", "predict_seconds", "total_seconds", "time", "versions", "result_file", "model_dir",
            "alignment_recipe"}
# The 4 methods of the issue, each with a small fixed schedule so that the case runs in seconds.
METHODS: list[tuple[str, dict, dict | None]] = [
    ("zero_shot", {}, None),
    ("linear_probe", {}, None),                                  # C searched on val (method default grid)
    ("clip_adapter", {"epochs": 20}, {"alpha": [0.2, 0.6]}),    # alpha searched on val
    ("tip_adapter", {}, None),                                   # alpha x beta searched on val (default grid)
]


def _normalise(value: Any, key: str | None = None) -> Any:
    if key in VOLATILE:
        return "<volatile>"
    if key == "dataset_source":  # an absolute path on this machine: keep what identifies the file
        return Path(str(value)).name
    if isinstance(value, dict):
        return {k: _normalise(v, k) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _produce(dataset, backbone, tmp: Path) -> dict:
    cache = FeatureCache(backbone, root=tmp / "features", progress=False, num_workers=0)
    records = {}
    for method, overrides, grid in METHODS:
        spec = RunSpec(method, shots=4, seed=1, overrides=overrides, grid=grid, n_views=2, repeat_shots=True)
        save = tmp / "model" if method == "clip_adapter" else None
        records[method] = run_one(dataset, backbone, spec, cache=cache, output=tmp / "runs", save_model=save)
    model = AdaptedClassifier.from_pretrained(tmp / "model", backbone=backbone)
    paths = [it.path for it in dataset.split("test")[::7][:6]]
    probs = model.predict_proba(paths)
    predictions = {"images": [Path(p).name for p in paths], "classes": model.classes_,
                   "predict": model.predict(paths), "proba": [[round(float(x), 9) for x in row] for row in probs]}
    return _normalise({"records": records, "predictions": predictions})


def _compare(got: Any, want: Any, where: str) -> list[str]:
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{where}: expected a mapping, got {got!r}"]
        if set(got) != set(want):
            return [f"{where}: keys differ: missing {sorted(set(want) - set(got))}, "
                    f"extra {sorted(set(got) - set(want))}"]
        return [d for k in want for d in _compare(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: expected a list of {len(want)}, got {got!r}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _compare(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        if math.isnan(want) and math.isnan(got):
            return []
        return [] if abs(got - want) <= TOL else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{where}: {got!r} != {want!r}"]


def _check(case: str, produced: dict, update: bool) -> None:
    path = GOLDEN / f"{case}.json"
    if update:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(produced, indent=1, sort_keys=True, allow_nan=False) + "\n")
        pytest.skip(f"wrote {path}")
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing; create it with --update-golden")
    diffs = _compare(json.loads(json.dumps(produced)), json.loads(path.read_text()), case)
    assert not diffs, f"{len(diffs)} differences from {path}:\n" + "\n".join(diffs[:30])


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))


def test_golden_demo_lite(lite_backbone, tmp_path, update_golden, one_thread):
    from clip_adapter.demo import demo_dataset
    ds = few_test_images(demo_dataset(), per_class_test=4)
    _check("demo_lite", _produce(ds, lite_backbone, tmp_path), update_golden)


def test_golden_colors_tiny_vit(tmp_path, update_golden, one_thread):
    ds = load_dataset(make_color_images(tmp_path / "colors", per_class=12, seed=3))
    _check("colors_tiny_vit", _produce(few_test_images(ds, 3), seeded_backbone("tiny-vit"), tmp_path), update_golden)


def test_golden_experiment_grid(tmp_path, update_golden, one_thread):
    """The YAML grid path (plan, runner, result store, report) on the same kind of data: its records carry the
    experiment's own fields (variant, run_settings, ablation) and the summary table is built from them."""
    import csv

    from clip_adapter import run_experiment
    data = make_color_images(tmp_path / "colors", per_class=8, seed=5)
    config = {"name": "golden", "datasets": [str(data)], "shots": [2], "seeds": [1, 2], "n_views": 1,
              "backbone": {"name": "tiny-vit", "pretrained": None},
              "methods": {"zero_shot": {}, "linear_probe": {}, "tip_adapter": {},
                          "clip_adapter": {"grid": {"alpha": [0.2, 0.6]}, "overrides": {"epochs": 5}}},
              "ablation": {"method": "clip_adapter", "param": "alpha", "values": [0.0, 0.5], "shots": [2],
                           "seeds": [1], "overrides": {"epochs": 5}},
              "cache_dir": str(tmp_path / "cache"), "output": str(tmp_path / "out"), "workers": 0}
    result = run_experiment(config, progress=False)
    records = {Path(r["result_file"]).relative_to(tmp_path / "out").as_posix(): r for r in result.records}
    for r in records.values():
        r["run_settings"] = {k: v for k, v in r["run_settings"].items() if k != "backbone"}  # holds tmp paths
        r["run_settings"]["dataset"]["source"] = Path(r["run_settings"]["dataset"]["source"]).name
    with open(result.report["csv"]) as f:
        summary = [{k: v for k, v in row.items() if k != "train_seconds_mean"} for row in csv.DictReader(f)]
    _check("experiment_grid", _normalise({"records": records, "summary": summary}), update_golden)


@needs_shared
def test_golden_dtd10_lite(lite_backbone, tmp_path, update_golden, one_thread):
    ds = few_test_images(load_dataset(SHARED / "dtd10"), per_class_test=4)
    _check("dtd10_lite", _produce(ds, lite_backbone, tmp_path), update_golden)
