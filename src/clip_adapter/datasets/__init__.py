"""Datasets as data: readers for what is on disk (a CoOp folder, class folders, a CSV), the catalog of the 11
benchmark datasets (``catalog.json``), their download and verification. A new dataset is a folder or a CSV.

    types.py      Item, Dataset
    catalog.py    the catalog rows (catalog.json, validated; add_catalog for your own), name lookup, CoOp prompt
                  templates, the registry of split-format readers
    checks.py     what every reader checks: paths inside the folder, labels, no image twice (no leakage)
    readers.py    one reader per on-disk form (CoOp split file, class folders, CSV)
    builtin.py    the catalog's datasets under a data root (CoOp layout, FGVC lists, ImageNet folders)
    hf.py         Hugging Face datasets (hf:PATH / hf:NAME): Image + ClassLabel columns, images exported once
    load.py       load_dataset: which reader for what the user points at
    fetch.py      fetch, check and unpack a row's resources into its folder
    archive.py    unpack a zip/tar without trusting it: wanted members only, no links, nothing outside, a budget
    errors.py     the one-line errors of fetching and unpacking
    verify.py     every image present and readable, counts as expected
"""
from .catalog import FORMATS, REGISTRY, DatasetInfo, Resource, add_catalog, catalog_markdown, dataset_names, \
    get_info, list_datasets, read_catalog, register_format, resolve_root, templates_for
from .fetch import DownloadError, download
from .builtin import read_builtin
from .checks import DataError
from .load import load_dataset
from .readers import read_coop, read_csv, read_image_folder
from .types import DEFAULT_TEMPLATE, IMAGE_EXTENSIONS, SPLITS, Dataset, Item
from .verify import VerifyReport, verify

__all__ = ["Dataset", "Item", "DatasetInfo", "Resource", "REGISTRY", "SPLITS", "IMAGE_EXTENSIONS",
           "DEFAULT_TEMPLATE", "load_dataset", "read_builtin", "read_coop", "read_csv", "read_image_folder",
           "dataset_names", "get_info", "list_datasets", "resolve_root", "templates_for", "download",
           "DownloadError", "DataError", "verify", "VerifyReport", "add_catalog", "read_catalog", "register_format",
           "FORMATS", "catalog_markdown"]
