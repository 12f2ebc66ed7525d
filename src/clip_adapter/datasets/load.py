""":func:`load_dataset`: which reader reads what a user points at (a CSV, a CoOp folder, class folders, a name)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .builtin import read_builtin
from .hf import HF_PREFIX, read_hf
from .readers import read_coop, read_csv, read_image_folder
from .types import Dataset

__all__ = ["load_dataset", "PACKAGED", "packaged_dataset"]

# Datasets shipped inside the package, by name (and alias): they run anywhere, with no download and no ../shared.
PACKAGED = {"fashion_mnist_demo": ("demo_data", "fashion_mnist", "data.csv")}
PACKAGED_ALIASES = {"demo": "fashion_mnist_demo"}


def packaged_dataset(name: str) -> Dataset | None:
    """The dataset shipped in the package under ``name`` (``demo`` = ``fashion_mnist_demo``), else None."""
    key = PACKAGED_ALIASES.get(name, name)
    if key not in PACKAGED:
        return None
    ds = read_csv(Path(str(files("clip_adapter").joinpath(*PACKAGED[key]))))
    ds.name = key
    return ds


def load_dataset(spec: str | Path, root: str | Path | None = None, split_seed: int = 0,
                 allow_outside_paths: bool = False) -> Dataset:
    """Load a dataset from a folder, a CSV file, or a built-in name (``dtd``, ``eurosat``... under ``root``).

    Args:
        spec: path of a CoOp-layout folder, a class-folder tree, a CSV file, a built-in dataset name, or
            ``hf:PATH`` / ``hf:NAME`` for a Hugging Face dataset (:mod:`clip_adapter.datasets.hf`).
        root: where built-in datasets live (``--root``); only used for names.
        split_seed: seed of the train/val/test split made when the data has none.
        allow_outside_paths: let split-file and CSV entries point outside the dataset folder (absolute paths,
            ``..``); refused by default, since a dataset file should not open files elsewhere on the machine.
    """
    if str(spec).startswith(HF_PREFIX):  # a Hugging Face dataset: save_to_disk folder or hub name
        return read_hf(str(spec)[len(HF_PREFIX):], split_seed=split_seed)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path, split_seed=split_seed, allow_outside_paths=allow_outside_paths)
    if path.is_dir():
        if sorted(path.glob("split_zhou_*.json")):
            return read_coop(path, allow_outside_paths=allow_outside_paths)
        return read_image_folder(path, split_seed=split_seed, allow_outside_paths=allow_outside_paths)
    if path.exists():
        raise ValueError(f"Dataset {path} is neither a folder nor a .csv file.")
    if "/" not in str(spec):
        shipped = packaged_dataset(str(spec))
        if shipped is not None:
            return shipped
        return read_builtin(str(spec), root, allow_outside_paths=allow_outside_paths)
    raise FileNotFoundError(f"Dataset {spec} not found; expected a folder, a .csv file or a built-in dataset name "
                            f"(clip-adapter datasets list).")
