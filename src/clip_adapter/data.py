"""Deprecated path: see :mod:`clip_adapter.datasets`."""
from ._compat import moved
from .datasets import IMAGE_EXTENSIONS, SPLITS, Dataset, Item, load_dataset, read_coop, read_csv, read_image_folder

moved("clip_adapter.data", "clip_adapter.datasets")
__all__ = ["Dataset", "Item", "load_dataset", "read_coop", "read_csv", "read_image_folder", "SPLITS",
           "IMAGE_EXTENSIONS"]
