"""The 11 benchmark datasets of CLIP-Adapter / CoOp as data: where they come from, their layout, splits and sizes.

One :class:`DatasetInfo` row per dataset in :data:`REGISTRY` (no class per dataset). The on-disk layout is
CoOp's (``KaiyangZhou/CoOp/DATASETS.md``), so a ``$DATA`` folder prepared for CoOp/CLIP-Adapter works as is::

    <root>/dtd/images/...              + split_zhou_DescribableTextures.json
    <root>/oxford_flowers/jpg/...      + split_zhou_OxfordFlowers.json
    <root>/fgvc_aircraft/images/...    + variants.txt, images_variant_{train,val,test}.txt
    <root>/imagenet/images/{train,val}/<wnid>/...  + classnames.txt

``root`` is the argument, else ``$CLIP_ADAPTER_DATA``, else ``~/data``.

Public API: :func:`load_builtin` (used by :func:`clip_adapter.data.load_dataset` for names), :func:`get_info`,
:func:`list_datasets`, :func:`download`, :func:`verify` and :func:`add_subcommands` (the ``datasets`` CLI).
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import os
import random
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .download import DownloadError, DownloadResult, Resource
from .io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .data import Dataset

# .data and .prompts import torch: imported where needed, so that this module alone stays light.
SPLITS = ("train", "val", "test")

__all__ = ["DatasetInfo", "Resource", "REGISTRY", "DATA_ENV", "resolve_root", "get_info", "dataset_names",
           "load_builtin", "list_datasets", "download", "verify", "VerifyReport", "add_subcommands",
           "IMAGENET_VAL_PER_CLASS"]

log = logging.getLogger(__name__)

DATA_ENV = "CLIP_ADAPTER_DATA"

# CoOp's split files as kept in linzhiqiu/cross_modal_adaptation (MIT; 7 of the 9), pinned to a commit so the
# sha256 below (of those exact bytes) stays valid. CoOp's own copies are Google Drive links (not fetchable by
# plain HTTP); they are the manual fallback, and the only source for Food101 and SUN397.
SPLITS_BASE = ("https://raw.githubusercontent.com/linzhiqiu/cross_modal_adaptation/"
               "ac9077ee4e422f768c9b9109551468605e33ec9a/splits/")

# ImageNet has no validation split in CoOp (val = test there). Tuning on test is not allowed here, so val is
# a seeded per-class hold-out of the *train* images: IMAGENET_VAL_PER_CLASS images of each class, the rest train.
IMAGENET_VAL_PER_CLASS = 10
IMAGENET_VAL_SEED = 0
IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train; val (our test) has 50,000
IMAGENET_SPLIT_CACHE = "split_clip_adapter_ImageNet.json"


def _drive(file_id: str) -> str:
    return (f"not fetchable by plain HTTP; download it from Google Drive https://drive.google.com/file/d/{file_id}"
            f"/view with a browser or `gdown 'https://drive.google.com/uc?id={file_id}'`.")


def _split_resource(coop_name: str, sha256: str | None, drive_id: str, mirrored: bool = True) -> Resource:
    filename = f"split_zhou_{coop_name}.json"
    return Resource(filename, urls=(SPLITS_BASE + filename,) if mirrored else (), sha256=sha256,
                    manual=f"CoOp's split file {filename} is {_drive(drive_id)}")


@dataclass(frozen=True)
class DatasetInfo:
    """One benchmark dataset: CoOp layout, split source, sizes, prompt and download sources.

    Attributes:
        name: short lowercase key (``dtd``); ``aliases`` are other accepted keys.
        title: display name.
        coop_name: CoOp's dataset name (``DescribableTextures``): split file ``split_zhou_<coop_name>.json`` and
            prompt template key.
        directory: folder under the data root (CoOp's: ``dtd``, ``caltech-101``, ``food-101``...).
        image_dir: folder (relative to ``directory``) the split relpaths are relative to; ``""`` = ``directory``.
        split_format: ``coop`` (split_zhou JSON), ``fgvc`` (FGVC-Aircraft txt files) or ``imagenet`` (folders).
        num_classes, split_sizes: expected class count and (train, val, test) sizes (CoOp's Table; checked by
            :func:`verify`).
        resources: files to fetch/unpack (see :class:`clip_adapter.download.Resource`).
        manual_steps: steps no resource covers (``{root}`` is replaced by the data root).
        required: paths under ``directory`` that must exist for the dataset to load.
        licence: terms of use of the images (not of this code).
        homepage: where the dataset is described.
        notes: anything that differs from the paper's protocol.
    """

    name: str
    title: str
    coop_name: str
    directory: str
    image_dir: str
    split_format: str
    num_classes: int
    split_sizes: tuple[int, int, int]
    resources: tuple[Resource, ...]
    licence: str
    homepage: str
    required: tuple[str, ...] = ()
    manual_steps: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    notes: str = ""

    @property
    def templates(self) -> list[str]:
        """CoOp's hand-crafted prompt template(s) for this dataset."""
        from .prompts import templates_for

        return templates_for(self.coop_name)

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.coop_name}.json"

    @property
    def download_mode(self) -> str:
        """``auto`` (one command), ``partial`` (some files by hand) or ``manual``."""
        fetchable = [bool(r.urls) for r in self.resources]
        if fetchable and all(fetchable) and not self.manual_steps:
            return "auto"
        return "partial" if any(fetchable) else "manual"

    def path(self, root: str | os.PathLike | None = None) -> Path:
        """The dataset folder under ``root`` (resolved as in :func:`resolve_root`)."""
        return resolve_root(root) / self.directory

    def missing(self, root: str | os.PathLike | None = None) -> list[Path]:
        """Required paths that do not exist under ``root``."""
        d = self.path(root)
        return [d / r for r in self.required if not (d / r).exists()]

    def present(self, root: str | os.PathLike | None = None) -> bool:
        return not self.missing(root)

    def summary(self) -> dict[str, Any]:
        tr, va, te = self.split_sizes
        return {"name": self.name, "title": self.title, "directory": self.directory, "classes": self.num_classes,
                "train": tr, "val": va, "test": te, "download": self.download_mode}


def _coop(name: str, title: str, coop_name: str, directory: str, image_dir: str, num_classes: int,
          sizes: tuple[int, int, int], resources: tuple[Resource, ...], required_images: tuple[str, ...] = (),
          **kw: Any) -> DatasetInfo:
    """A row for a dataset read from ``split_zhou_<coop_name>.json``."""
    required = (f"split_zhou_{coop_name}.json",) + (required_images or (image_dir,))
    return DatasetInfo(name, title, coop_name, directory, image_dir, "coop", num_classes, sizes, resources,
                       required=required, **kw)


_RESEARCH_ONLY = ("no open licence; images collected from the web, provided for research purposes: treat as research "
                  "use only")

_ROWS: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        "imagenet", "ImageNet (ILSVRC-2012)", "ImageNet", "imagenet", "images", "imagenet", 1000,
        (IMAGENET_TRAIN_IMAGES - 1000 * IMAGENET_VAL_PER_CLASS, 1000 * IMAGENET_VAL_PER_CLASS, 50_000),
        resources=(),
        required=("classnames.txt", "images/train", "images/val"),
        manual_steps=(
            ("ImageNet needs an account: register at https://image-net.org, accept its terms of access and download "
             "ILSVRC2012_img_train.tar (~138 GB), ILSVRC2012_img_val.tar (~6.3 GB) and ILSVRC2012_devkit_t12.tar.gz "
             "into {root}/imagenet/images/."),
            ("Unpack them into class folders with torchvision (it checks their md5; needs scipy): "
             "python -c \"from torchvision.datasets import ImageNet; [ImageNet('{root}/imagenet/images', split=s) "
             "for s in ('train', 'val')]\"  -> {root}/imagenet/images/train/n01440764/*.JPEG and "
             "{root}/imagenet/images/val/n01440764/*.JPEG; the .tar files can then be deleted."),
            ("Rerun `clip-adapter datasets download imagenet --root {root}`: it writes {root}/imagenet/classnames.txt "
             "('<wnid> <name>' per line) from CLIP's ImageNet class names (via open_clip), the same names as CoOp's "
             "classnames.txt (https://drive.google.com/file/d/1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF/view), which you "
             "may put there instead."),
        ),
        licence="ImageNet terms of access: non-commercial research and educational use only; account required",
        homepage="https://image-net.org",
        aliases=("in1k", "ilsvrc2012"),
        notes=(f"CoOp: train = images/train, test = images/val (50,000), and CoOp's val is the test set. Here val "
               f"is {IMAGENET_VAL_PER_CLASS} images per class held out of images/train (seeded, fixed), so "
               f"nothing is tuned on test; train is the remaining {IMAGENET_TRAIN_IMAGES - 10_000:,}. CoOp "
               f"Table: 1.28M / N/A / 50,000."),
    ),
    _coop(
        "caltech101", "Caltech-101", "Caltech101", "caltech-101", "101_ObjectCategories", 100, (4128, 1649, 2465),
        resources=(
            _split_resource("Caltech101", "52ce83205ff8ff8a1a18119aad6376120ae35c36e783a984bc560cbf10e73fa5",
                            "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
            Resource("caltech-101.zip", urls=("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",),
                     md5="3138e1922a9193bfa496528edbbc45d0", inner="caltech-101/101_ObjectCategories.tar.gz",
                     members=(("101_ObjectCategories", "101_ObjectCategories"),),
                     manual="Download caltech-101.zip from https://data.caltech.edu/records/mzrjq-6wc02."),
        ),
        licence="CaltechDATA record (CC BY 4.0 as listed there); images collected from the web",
        homepage="https://data.caltech.edu/records/mzrjq-6wc02",
        aliases=("caltech", "caltech-101"),
        notes="100 classes: CoOp's split drops BACKGROUND_Google and Faces_easy.",
    ),
    _coop(
        "oxford_pets", "Oxford-IIIT Pets", "OxfordPets", "oxford_pets", "images", 37, (2944, 736, 3669),
        resources=(
            _split_resource("OxfordPets", "d7f3ffe65b3919f95132e51422894ae18686b83c331fd8c0adcdc3dc2de6301e",
                            "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
            Resource("annotations.tar.gz", urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",),
                     md5="95a8c909bbe2e81eed6a22bccdf3f68f", members=(("annotations", "annotations"),)),
            Resource("images.tar.gz", urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",),
                     md5="5c4f3ee8e5d25df40f4fd59a7f44e54c", members=(("images", "images"),)),
        ),
        licence="CC BY-SA 4.0 (per the dataset page); image copyright stays with the owners",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
        aliases=("pets", "oxfordpets", "oxford-iiit-pet"),
    ),
    _coop(
        "stanford_cars", "Stanford Cars", "StanfordCars", "stanford_cars", "", 196, (6509, 1635, 8041),
        required_images=("cars_train", "cars_test"),
        resources=(
            _split_resource("StanfordCars", "40acee7aa65c8e4727a32d90e884b7c3f8960b523422317e163f7af65432959d",
                            "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
            Resource("cars_train.tgz", md5="065e5b463ae28d29e77c1b4b166cfe61", members=(("cars_train", "cars_train"),),
                     manual="The official URL (https://ai.stanford.edu/~jkrause/car196/cars_train.tgz) is dead; get "
                            "cars_train.tgz from a copy you trust."),
            Resource("cars_test.tgz", md5="4ce7ebf6a94d07f1952d94dd34c4d501", members=(("cars_test", "cars_test"),),
                     manual="The official URL (https://ai.stanford.edu/~jkrause/car196/cars_test.tgz) is dead; get "
                            "cars_test.tgz from a copy you trust."),
        ),
        manual_steps=(
            ("Stanford Cars images cannot be downloaded automatically (the ai.stanford.edu links are dead). Either "
             "put cars_train.tgz and cars_test.tgz (original archives, md5-checked) in "
             "{root}/.downloads/stanford_cars/ and rerun this command, or place the images yourself as "
             "{root}/stanford_cars/cars_train/00001.jpg ... and {root}/stanford_cars/cars_test/00001.jpg ... "
             "(e.g. from the Kaggle mirror "
             "'jessicali9530/stanford-cars-dataset'; if it nests cars_train/cars_train/, move the images up one "
             "level). The split file is fetched by this command."),
        ),
        licence="ImageNet-style terms: non-commercial research use only",
        homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        aliases=("cars", "stanfordcars"),
        notes="Split relpaths include the folder (cars_train/00001.jpg), so the image folder is stanford_cars/.",
    ),
    _coop(
        "oxford_flowers", "Oxford Flowers-102", "OxfordFlowers", "oxford_flowers", "jpg", 102, (4093, 1633, 2463),
        resources=(
            _split_resource("OxfordFlowers", "2f50c42fc1a17ca13c271cb4269b1347bdb43d2be672e34f74a4e4cbfbcca794",
                            "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
            Resource("cat_to_name.json", urls=(SPLITS_BASE + "cat_to_name.json",),
                     sha256="0469f1ad7fe0072d98155c49aa58649d998edbbe3326229003aa5f7228525236",
                     manual=f"cat_to_name.json is {_drive('1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0')}"),
            Resource("imagelabels.mat", urls=("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",),
                     md5="e0620be6f572b9609742df49c70aed4d"),
            Resource("102flowers.tgz", urls=("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",),
                     md5="52808999861908f626f3c1f4e79d11fa", members=(("jpg", "jpg"),)),
        ),
        licence=_RESEARCH_ONLY,
        homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
        aliases=("flowers102", "flowers", "oxfordflowers", "flowers-102"),
    ),
    _coop(
        "food101", "Food-101", "Food101", "food-101", "images", 101, (50_500, 20_200, 30_300),
        resources=(
            _split_resource("Food101", None, "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl", mirrored=False),
            Resource("food-101.tar.gz", urls=("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",),
                     md5="85eeb15f3717b99a5da872d97d918f87",
                     members=(("food-101/meta", "meta"), ("food-101/images", "images"))),
        ),
        licence="images from foodspotting.com, distributed under fair use for research (see license_agreement.txt)",
        homepage="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
        aliases=("food", "food-101"),
        notes="CoOp's split (50/20/30 of each class), not Food-101's official 750/250 train/test lists.",
    ),
    DatasetInfo(
        "fgvc_aircraft", "FGVC-Aircraft (2013b, variants)", "FGVCAircraft", "fgvc_aircraft", "images", "fgvc",
        100, (3334, 3333, 3333),
        resources=(
            Resource("fgvc-aircraft-2013b.tar.gz",
                     urls=("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",),
                     members=tuple((f"fgvc-aircraft-2013b/data/{f}", f) for f in (
                         "variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                         "images_variant_test.txt", "images"))),
        ),
        required=("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt",
                  "images"),
        licence="images for non-commercial research purposes only (photographers of airliners.net)",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        aliases=("aircraft", "fgvcaircraft", "fgvc-aircraft"),
        notes="The official train/val/test variant lists (as CoOp); no published checksum (recorded at first "
              "download).",
    ),
    _coop(
        "sun397", "SUN397", "SUN397", "sun397", "SUN397", 397, (15_880, 3_970, 19_850),
        resources=(
            _split_resource("SUN397", None, "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq", mirrored=False),
            Resource("SUN397.tar.gz", urls=("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",),
                     md5="8ca2778205c41d23104230ba66911c7a", members=(("SUN397", "SUN397"),)),
        ),
        licence=_RESEARCH_ONLY,
        homepage="https://vision.princeton.edu/projects/2010/SUN/",
        aliases=("sun",),
        notes="~37 GB archive. CoOp's split (40 train, 10 val, 50 test images per class), not SUN's 10 "
              "official partitions.",
    ),
    _coop(
        "dtd", "Describable Textures (DTD)", "DescribableTextures", "dtd", "images", 47, (2820, 1128, 1692),
        resources=(
            _split_resource("DescribableTextures", "f26ebeccd2b58e68d70f07a0dc39fe49bf7b69024bac34396b954dfd87969c38",
                            "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
            Resource("dtd-r1.0.1.tar.gz",
                     urls=("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
                     md5="fff73e5086ae6bdbea199a49dfb8a4c1",
                     members=(("dtd/labels", "labels"), ("dtd/imdb", "imdb"), ("dtd/images", "images"))),
        ),
        licence=_RESEARCH_ONLY,
        homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
        aliases=("describabletextures", "textures"),
    ),
    _coop(
        "eurosat", "EuroSAT (RGB)", "EuroSAT", "eurosat", "2750", 10, (13_500, 5_400, 8_100),
        resources=(
            _split_resource("EuroSAT", "541503a77d0b26b735d85ec7a3e672804fe0aa466c2e5f07da772cc6c0af8ad2",
                            "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
            Resource("EuroSAT.zip", urls=(
                ("https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/"
                 "EuroSAT.zip"),
                "https://madm.dfki.de/files/sentinel/EuroSAT.zip"),
                md5="c8fa014336c82ac7804f0398fcb19387", members=(("2750", "2750"),)),
        ),
        licence="MIT (EuroSAT, Helber et al.); contains Copernicus Sentinel-2 data",
        homepage="https://github.com/phelber/EuroSAT",
        aliases=("euro_sat",),
        notes="CoOp's class names ('Annual Crop Land', ...) come from the split file.",
    ),
    _coop(
        "ucf101", "UCF101 (middle frames)", "UCF101", "ucf101", "UCF-101-midframes", 101, (7639, 1898, 3783),
        resources=(
            _split_resource("UCF101", "d78cb834f7c5792ceaff2c5ee2d7c76a9e4086e48a3a6b01232989d29cbefdd8",
                            "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
            Resource("UCF-101-midframes.zip", members=(("UCF-101-midframes", "UCF-101-midframes"),),
                     manual="CoOp's middle-frame images UCF-101-midframes.zip are "
                            + _drive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O")),
        ),
        licence=_RESEARCH_ONLY + " (frames of YouTube videos)",
        homepage="https://www.crcv.ucf.edu/data/UCF101.php",
        aliases=("ucf", "ucf-101"),
        notes="One middle frame per video, extracted by CoOp's authors.",
    ),
)

REGISTRY: dict[str, DatasetInfo] = {row.name: row for row in _ROWS}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def dataset_names() -> list[str]:
    """Canonical names of the built-in datasets, in the paper's order."""
    return list(REGISTRY)


def get_info(name: str) -> DatasetInfo:
    """The registry row of ``name`` (canonical name, alias or CoOp name; case, ``-``/``_`` ignored).

    Raises:
        ValueError: unknown name, with the known names and the closest match.
    """
    key = _norm(name)
    for info in REGISTRY.values():
        if key in {_norm(info.name), _norm(info.coop_name), *(_norm(a) for a in info.aliases)}:
            return info
    candidates = {n: info.name for info in REGISTRY.values() for n in (info.name, *info.aliases)}
    close = difflib.get_close_matches(name.lower(), list(candidates), n=1, cutoff=0.6)
    hint = f"did you mean {candidates[close[0]]!r}? " if close else ""
    raise ValueError(f"Unknown dataset {name!r}; {hint}expected a folder, a .csv file or one of: "
                     f"{', '.join(REGISTRY)}.")


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Data root: ``root`` if given, else ``$CLIP_ADAPTER_DATA``, else ``~/data``."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ENV) or "~/data"
    return Path(root).expanduser()


# -- loading -------------------------------------------------------------------------------------------------
def load_builtin(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """Load a built-in dataset from its CoOp layout under ``root``.

    Raises:
        ValueError: unknown name (with a close match).
        FileNotFoundError: the data is not there; names the missing path and the download command.
    """
    from .data import read_coop

    info = get_info(name)
    root = resolve_root(root)
    missing = info.missing(root)
    if missing:
        raise FileNotFoundError(f"Dataset {info.name} not found: {missing[0]} is missing; run `clip-adapter "
                                f"datasets download {info.name} --root {root}` (it fetches what it can and prints "
                                f"the manual steps).")
    ds_dir = info.path(root)
    if info.split_format == "coop":
        ds = read_coop(ds_dir, split_file=ds_dir / info.split_file, image_dir=ds_dir / info.image_dir,
                       name=info.name)
    elif info.split_format == "fgvc":
        ds = _read_fgvc(info, ds_dir)
    elif info.split_format == "imagenet":
        ds = _read_imagenet(info, ds_dir)
    else:  # pragma: no cover - registry rows are fixed
        raise ValueError(f"Dataset {info.name}: unknown split format {info.split_format!r}.")
    return ds


def _read_fgvc(info: DatasetInfo, ds_dir: Path) -> Dataset:
    """FGVC-Aircraft as CoOp reads it: labels = line order of variants.txt, ``images_variant_<split>.txt`` lines
    are ``<image id> <variant name>`` and the image is ``images/<image id>.jpg``."""
    from .data import Dataset, Item

    classnames = [ln.strip() for ln in (ds_dir / "variants.txt").read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(classnames)}
    img_dir = ds_dir / info.image_dir
    splits: dict[str, list[Item]] = {}
    for s in SPLITS:
        f = ds_dir / f"images_variant_{s}.txt"
        items = []
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in index:
                raise ValueError(f"{f}:{n}: variant {variant!r} is not in variants.txt.")
            items.append(Item(str(img_dir / f"{image_id}.jpg"), index[variant]))
        splits[s] = items
    return Dataset(info.name, classnames, splits, info.templates, source=str(ds_dir))


def _read_classnames_txt(path: Path) -> dict[str, str]:
    """CoOp's ImageNet classnames.txt: ``<wnid> <class name>`` per line."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, cname = line.strip().partition(" ")
        if not cname:
            raise ValueError(f"{path}:{n}: expected '<wnid> <class name>', got {line.strip()!r}.")
        out[wnid] = cname.strip()
    return out


def _list_images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def _read_imagenet(info: DatasetInfo, ds_dir: Path) -> Dataset:
    """ImageNet as CoOp lays it out; the scanned split is cached in ``split_clip_adapter_ImageNet.json`` (delete
    it to rescan; it is rebuilt when classnames.txt or the val rule change)."""
    from .data import Dataset, Item

    img_dir = ds_dir / info.image_dir
    cn_file = ds_dir / "classnames.txt"
    meta = {"classnames_sha256": hashlib.sha256(cn_file.read_bytes()).hexdigest(),
            "val_per_class": IMAGENET_VAL_PER_CLASS, "val_seed": IMAGENET_VAL_SEED, "format": 1}
    cache = ds_dir / IMAGENET_SPLIT_CACHE
    raw = None
    if cache.is_file():
        try:
            raw = json.loads(cache.read_text())
            if raw.get("meta") != meta:
                raw = None
        except (OSError, ValueError):
            raw = None
    if raw is None:
        raw = _scan_imagenet(img_dir, _read_classnames_txt(cn_file))
        raw["meta"] = meta
        try:
            with atomic_path(cache) as tmp:
                tmp.write_text(json.dumps(raw))
        except OSError as e:  # read-only data folders still load, just slower next time
            log.warning("Could not write the ImageNet split cache %s (%s).", cache, e)
    names: dict[int, str] = {}
    for s in SPLITS:
        for _, y, c in raw[s]:
            names.setdefault(y, c)
    n = len(names)
    splits = {s: [Item(str(img_dir / rel), int(y)) for rel, y, _ in raw[s]] for s in SPLITS}
    return Dataset(info.name, [names[i] for i in range(n)], splits, info.templates, source=str(cache))


def _scan_imagenet(img_dir: Path, wnid_to_name: dict[str, str]) -> dict[str, list]:
    train_dir, test_dir = img_dir / "train", img_dir / "val"
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    test_wnids = sorted(e.name for e in os.scandir(test_dir) if e.is_dir())
    if wnids != test_wnids:
        raise ValueError(f"ImageNet: {test_dir} has {len(test_wnids)} class folders, {train_dir} has {len(wnids)}; "
                         f"expected the same wnid folders (sort val into <wnid>/ folders, see `clip-adapter datasets "
                         f"download imagenet`).")
    lacking = [w for w in wnids if w not in wnid_to_name]
    if lacking:
        raise ValueError(f"ImageNet: classnames.txt has no name for {lacking[0]}; expected '<wnid> <name>' lines "
                         f"for all {len(wnids)} folders.")
    raw: dict[str, list] = {s: [] for s in SPLITS}
    for label, wnid in enumerate(wnids):
        cname = wnid_to_name[wnid]
        files = _list_images(train_dir / wnid)
        held = set(random.Random(f"{IMAGENET_VAL_SEED}-{wnid}").sample(files, min(IMAGENET_VAL_PER_CLASS,
                                                                                   len(files) // 2)))
        for f in files:
            raw["val" if f in held else "train"].append([f"train/{wnid}/{f}", label, cname])
        raw["test"].extend([f"val/{wnid}/{f}", label, cname] for f in _list_images(test_dir / wnid))
    return raw


def _write_imagenet_classnames(root: Path) -> bool:
    """Write ``imagenet/classnames.txt`` from open_clip's CLIP class names (the list CoOp's file copies), paired
    with the sorted wnid folders of ``images/train``. Returns False when that is not possible yet."""
    ds_dir = root / "imagenet"
    target, train_dir = ds_dir / "classnames.txt", ds_dir / "images" / "train"
    if target.exists() or not train_dir.is_dir():
        return False
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError:
        log.warning("open_clip is not installed; get classnames.txt from CoOp (see the manual steps).")
        return False
    if len(wnids) != len(IMAGENET_CLASSNAMES):
        log.warning("%s has %d class folders; expected %d, classnames.txt not written.", train_dir, len(wnids),
                    len(IMAGENET_CLASSNAMES))
        return False
    with atomic_path(target) as tmp:
        tmp.write_text("".join(f"{w} {c}\n" for w, c in zip(wnids, IMAGENET_CLASSNAMES)))
    log.info("Wrote %s (CLIP's ImageNet class names).", target)
    return True


# -- listing, downloading ------------------------------------------------------------------------------------
def list_datasets(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per built-in dataset: name, title, directory, classes, train/val/test sizes, download mode
    (auto/partial/manual), ``present`` (its required files exist under ``root``) and ``path``."""
    root = resolve_root(root)
    return [{**info.summary(), "present": info.present(root), "path": str(info.path(root))}
            for info in REGISTRY.values()]


def download(name_or_info: str | DatasetInfo, root: str | os.PathLike | None = None, *,
             sources_dir: str | os.PathLike | None = None, keep_archives: bool = False,
             progress: bool = True) -> DownloadResult:
    """Fetch everything that can be fetched for a dataset into ``<root>/<directory>``; see
    :func:`clip_adapter.download.download_dataset`. ``result.manual`` lists the steps left to do by hand."""
    from .download import download_dataset

    info = get_info(name_or_info) if isinstance(name_or_info, str) else name_or_info
    root = resolve_root(root)
    if info.split_format == "imagenet":
        _write_imagenet_classnames(root)
    return download_dataset(info, root, sources_dir=sources_dir, keep_archives=keep_archives, progress=progress)


# -- verification ----------------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """Result of :func:`verify`: counts, expectations and every missing or unreadable file."""

    name: str
    folder: str
    counts: dict[str, int]
    classes: int
    expected_counts: dict[str, int] | None = None
    expected_classes: int | None = None
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.problems)

    def summary(self) -> str:
        """One line: verdict, counts against expectations, number of bad files."""
        def vs(got: int, exp: int | None) -> str:
            return f"{got}" if exp is None or exp == got else f"{got} (expected {exp})"
        exp = self.expected_counts or {}
        parts = ", ".join(f"{s} {vs(self.counts.get(s, 0), exp.get(s))}" for s in SPLITS)
        verdict = "OK" if self.ok else "FAILED"
        return (f"{self.name}: {verdict}: {self.checked} files checked in {self.folder}; {parts}; classes "
                f"{vs(self.classes, self.expected_classes)}; {len(self.missing)} missing, {len(self.corrupt)} corrupt.")

    def lines(self, limit: int | None = 50) -> list[str]:
        """The summary, then one line per problem, missing and corrupt file (at most ``limit`` file lines)."""
        out = [self.summary(), *self.problems]
        bad = [f"missing: {p}" for p in self.missing] + [f"corrupt: {p} ({why})" for p, why in self.corrupt]
        shown = bad if limit is None else bad[:limit]
        out += shown
        if len(bad) > len(shown):
            out.append(f"... and {len(bad) - len(shown)} more (use --format json for all).")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folder": self.folder, "ok": self.ok, "checked": self.checked,
                "counts": self.counts, "expected_counts": self.expected_counts, "classes": self.classes,
                "expected_classes": self.expected_classes, "problems": self.problems, "missing": self.missing,
                "corrupt": [{"path": p, "error": e} for p, e in self.corrupt]}


def _check_image(path: str, full: bool) -> str | None:
    """None if the image opens (and, with ``full``, decodes); else ``'missing'`` or the error."""
    from PIL import Image

    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as im:
            if full:
                im.load()
            else:
                im.verify()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        msg = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {msg}".rstrip(": ")
    return None


def _guess_image_dir(folder: Path, split_file: Path, sample: int = 50) -> Path:
    """The folder (``folder`` or one of its subfolders) holding the most of the first ``sample`` relpaths of each
    split; ``folder`` when none holds any (every file is then reported missing)."""
    try:
        raw = json.loads(split_file.read_text())
        rels = [e[0] for s in SPLITS for e in raw.get(s, [])[:sample]]
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return folder  # read_coop reports the malformed file
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    hits = [sum((c / r).exists() for r in rels) for c in candidates]
    return candidates[max(range(len(candidates)), key=hits.__getitem__)]


def verify(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None, *, full: bool = False,
           workers: int | None = None, progress: bool = True) -> VerifyReport:
    """Check that every image of every split exists and opens, and that the counts are the expected ones.

    Args:
        name_or_path: a built-in name (counts checked against the registry) or a dataset folder/CSV in any form
            :func:`clip_adapter.data.load_dataset` reads (counts then come from its split file only).
        root: data root for names.
        full: decode every image (slower, catches truncated JPEGs) instead of PIL's ``verify()``.
        workers: threads opening images (default: up to 8).

    Raises:
        ValueError / FileNotFoundError: unknown name, or the split file/required folders are missing.
    """
    from tqdm.auto import tqdm

    from .data import load_dataset, read_coop

    path = Path(name_or_path).expanduser()
    if path.exists():
        split_files = sorted(path.glob("split_zhou_*.json")) if path.is_dir() else []
        if len(split_files) == 1:
            # data.read_coop locates the image folder from the first entry of each split, which is exactly what
            # may be missing here; vote over a larger sample instead.
            ds = read_coop(path, split_file=split_files[0], image_dir=_guess_image_dir(path, split_files[0]))
        else:
            ds = load_dataset(path)
        folder = path if path.is_dir() else path.parent
        expected_counts = expected_classes = None
        label = ds.name
    else:
        info = get_info(str(name_or_path))
        ds = load_builtin(info.name, root)
        folder = info.path(root)
        expected_counts = dict(zip(SPLITS, info.split_sizes))
        expected_classes = info.num_classes
        label = info.name
    counts = {s: len(ds.splits.get(s, [])) for s in SPLITS}
    report = VerifyReport(label, str(folder), counts, ds.num_classes, expected_counts, expected_classes)
    if expected_counts and counts != expected_counts:
        report.problems.append("split sizes differ from the registry: " + ", ".join(
            f"{s} {counts[s]} vs {expected_counts[s]}" for s in SPLITS if counts[s] != expected_counts[s]) + ".")
    if expected_classes is not None and ds.num_classes != expected_classes:
        report.problems.append(f"{ds.num_classes} classes; the registry expects {expected_classes}.")
    paths = sorted({it.path for s in SPLITS for it in ds.splits.get(s, [])})
    report.checked = len(paths)

    def rel(p: str) -> str:
        try:
            return str(Path(p).relative_to(folder))
        except ValueError:
            return p

    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    check: Callable[[str], str | None] = lambda p: _check_image(p, full)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, paths, chunksize=64)
        for p, err in tqdm(zip(paths, results), total=len(paths), desc=f"verify {label}", unit="img",
                           disable=not progress, leave=False):
            if err == "missing":
                report.missing.append(rel(p))
            elif err:
                report.corrupt.append((rel(p), err))
    return report


# -- command line ----------------------------------------------------------------------------------------------
def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``datasets list|download|verify`` to a CLI's subparsers (handler: ``args.func(args) -> exit code``)."""
    p = subparsers.add_parser("datasets", help="list, download and verify the 11 benchmark datasets.",
                              description="The 11 CoOp/CLIP-Adapter benchmark datasets under a data root "
                                          f"(--root, else ${DATA_ENV}, else ~/data).")
    dsub = p.add_subparsers(dest="datasets_command", metavar="{list,download,verify}")
    q = dsub.add_parser("list", help="names, classes, split sizes and whether each is present.")
    q.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or ~/data).")
    q.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table).")
    q = dsub.add_parser("download", help="fetch, check and unpack datasets; prints the manual steps left.")
    q.add_argument("names", nargs="+", metavar="NAME", help=f"dataset name(s) or 'all': {', '.join(REGISTRY)}.")
    q.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or ~/data).")
    q.add_argument("--from", dest="sources_dir", default=None,
                   help="folder of files you already have (archives, split_zhou_*.json); used before the network.")
    q.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extraction.")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    q = dsub.add_parser("verify", help="check every image of every split exists and opens; counts match.")
    q.add_argument("name", metavar="NAME", help="dataset name, or a dataset folder / CSV path.")
    q.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or ~/data).")
    q.add_argument("--full", action="store_true", help="fully decode each image (slower; finds truncated files).")
    q.add_argument("--workers", type=int, default=None, help="threads opening images (default: up to 8).")
    q.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text).")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    p.set_defaults(func=_cmd_datasets, _datasets_parser=p)


def _cmd_datasets(args: argparse.Namespace) -> int:
    cmd = getattr(args, "datasets_command", None)
    if cmd == "list":
        return _cmd_list(args)
    if cmd == "download":
        return _cmd_download(args)
    if cmd == "verify":
        return _cmd_verify(args)
    args._datasets_parser.print_help()
    return 2


def _cmd_list(args: argparse.Namespace) -> int:
    rows = list_datasets(args.root)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("name", "classes", "train", "val", "test", "download", "present")
    table = [cols] + [tuple(str("yes" if r[c] is True else "no" if r[c] is False else r[c]) for c in cols)
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.rjust(w) if v.isdigit() else v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"root: {resolve_root(args.root)}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    names = list(REGISTRY) if [n.lower() for n in args.names] == ["all"] else args.names
    infos = [get_info(n) for n in names]  # fail on a typo before downloading anything
    root = resolve_root(args.root)
    incomplete = 0
    for info in infos:
        try:
            result = download(info, root, sources_dir=args.sources_dir, keep_archives=args.keep_archives,
                              progress=not args.no_progress)
        except DownloadError as e:  # e.g. a checksum mismatch: report it, go on with the other datasets
            print(f"{info.name}: error: {e}", file=sys.stderr)
            incomplete += 1
            continue
        if result.complete:
            print(f"{info.name}: ready in {result.dataset_dir}")
            continue
        incomplete += 1
        print(f"{info.name}: not complete in {result.dataset_dir}; steps left:")
        for i, step in enumerate(result.manual, 1):
            print(f"  {i}. {step}")
    if incomplete:
        print(f"{incomplete} of {len(infos)} dataset(s) are not ready: do the steps above or fix the errors, then "
              f"rerun the same command.", file=sys.stderr)
        return 1
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    report = verify(args.name, args.root, full=args.full, workers=args.workers, progress=not args.no_progress)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
