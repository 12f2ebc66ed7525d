"""Hugging Face datasets as a source (``--data hf:PATH``): a DatasetDict with an Image and a ClassLabel column, built
and saved with ``save_to_disk`` in the test (offline), read into train/val/test."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf extra: pip install -e '.[hf]'")

from clip_adapter.datasets import DataError, load_dataset  # noqa: E402

COLORS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)}


def _images(n: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, rgb in enumerate(COLORS.values()):
        for _ in range(n):
            arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype("uint8")
            images.append(Image.fromarray(arr))
            labels.append(label)
    return images, labels


def save_hf(folder, splits: dict[str, int], seed: int = 0, label_col: str = "label"):
    features = datasets.Features({"img": datasets.Image(), label_col: datasets.ClassLabel(names=list(COLORS))})
    parts = {}
    for i, (name, n) in enumerate(splits.items()):
        images, labels = _images(n, seed + i)
        parts[name] = datasets.Dataset.from_dict({"img": images, label_col: labels}, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


def test_splits_map_and_images_round_trip(tmp_path):
    folder = save_hf(tmp_path / "colors_hf", {"train": 4, "validation": 2, "test": 3})
    ds = load_dataset(f"hf:{folder}")
    assert ds.name == "colors_hf" and ds.classnames == ["red", "green", "blue"]
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [12, 6, 9]
    want = datasets.load_from_disk(str(folder))
    for split, hf_name in (("train", "train"), ("val", "validation"), ("test", "test")):
        for it, row in zip(ds.split(split), want[hf_name]):
            assert it.label == row["label"]
            with Image.open(it.path) as im:
                assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(row["img"].convert("RGB")))
    assert ds.split("train")[0].rel.startswith("colors_hf-") and ds.source == str(folder.resolve())
    again = load_dataset(f"hf:{folder}")            # the export is reused, and the same
    assert again.splits == ds.splits


def test_without_validation_a_seeded_val_is_carved_from_train(tmp_path):
    folder = save_hf(tmp_path / "noval", {"train": 10, "test": 2})
    ds = load_dataset(f"hf:{folder}")
    train, val = ds.split("train"), ds.split("val")
    assert len(val) == 3 * 2 and len(train) == 3 * 8 and len(ds.split("test")) == 6
    assert not {it.path for it in train} & {it.path for it in val}
    assert sorted(it.label for it in val) == [0, 0, 1, 1, 2, 2]
    assert load_dataset(f"hf:{folder}").split("val") == val           # seeded: the same every time
    assert load_dataset(f"hf:{folder}", split_seed=1).split("val") != val


def test_other_data_is_another_export(tmp_path):
    a = load_dataset(f"hf:{save_hf(tmp_path / 'a' / 'colors', {'train': 3, 'test': 2}, seed=0)}")
    b = load_dataset(f"hf:{save_hf(tmp_path / 'b' / 'colors', {'train': 3, 'test': 2}, seed=5)}")
    assert a.split("test")[0].path != b.split("test")[0].path


def test_bad_hf_datasets_are_one_line_errors(tmp_path):
    plain = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1, 2]})})
    plain.save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(DataError, match=r"needs an Image column and a ClassLabel column; it has x: Value") as e:
        load_dataset(f"hf:{tmp_path / 'plain'}")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"Hugging Face dataset .*empty.* could not be read"):
        load_dataset(f"hf:{tmp_path / 'empty'}")


def test_run_on_an_hf_dataset_from_the_command_line(tmp_path, capsys):
    import json

    from clip_adapter.cli import main
    folder = save_hf(tmp_path / "colors_hf", {"train": 4, "test": 2})
    rc = main(["run", "--data", f"hf:{folder}", "--method", "linear_probe", "--shots", "2", "--backbone", "tiny-vit",
               "--pretrained", "none", "--output", str(tmp_path / "runs"), "--workers", "0", "--no-progress"])
    assert rc == 0
    rec = json.loads((tmp_path / "runs" / "colors_hf" / "linear_probe" / "shots2-seed1.json").read_text())
    assert rec["n_train"] == 6 and rec["n_test"] == 6 and rec["dataset_source"] == str(folder.resolve())


def test_experiment_configs_resolve_hf_folders_and_keep_hub_names(tmp_path):
    from clip_adapter.experiment import parse_config
    save_hf(tmp_path / "colors_hf", {"train": 2, "test": 1})
    cfg = parse_config({"datasets": ["hf:./colors_hf", "hf:someone/some-dataset"], "methods": ["zero_shot"]},
                       base_dir=tmp_path)
    assert [d.data for d in cfg.datasets] == [f"hf:{tmp_path / 'colors_hf'}", "hf:someone/some-dataset"]
