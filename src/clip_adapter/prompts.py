"""Prompt templates (as data) and class text features."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_TEMPLATE", "DATASET_TEMPLATES", "templates_for", "ClassText", "encode_class_texts"]

DEFAULT_TEMPLATE = "a photo of a {}."

# CoOp's single hand-crafted template per dataset (CoOp trainers/zsclip.py CUSTOM_TEMPLATES), also used by
# CLIP-Adapter's code. Keys are CoOp dataset names; lookup ignores case, "_"/"-" and a trailing count
# (so "DescribableTextures10" and "dtd" both find the DTD template).
DATASET_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
}
_ALIASES = {"dtd": "DescribableTextures", "flowers": "OxfordFlowers", "flowers102": "OxfordFlowers",
            "oxfordflowers": "OxfordFlowers", "pets": "OxfordPets", "cars": "StanfordCars",
            "aircraft": "FGVCAircraft", "fgvcaircraft": "FGVCAircraft", "food": "Food101", "sun": "SUN397",
            "caltech": "Caltech101", "ucf": "UCF101", "eurosat": "EuroSAT", "imagenet": "ImageNet"}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def templates_for(dataset_name: str) -> list[str]:
    """The CoOp template of a known dataset (matched on its name's prefix), else ``DEFAULT_TEMPLATE``."""
    key = _norm(dataset_name)
    table = {_norm(k): v for k, v in DATASET_TEMPLATES.items()}
    table.update({a: DATASET_TEMPLATES[v] for a, v in _ALIASES.items()})
    if key in table:
        return [table[key]]
    # "describabletextures10", "oxfordflowers89", "dtd10": longest known prefix wins.
    for k in sorted(table, key=len, reverse=True):
        if key.startswith(k) and key[len(k):].isdigit():
            return [table[k]]
    return [DEFAULT_TEMPLATE]


@dataclass
class ClassText:
    """The zero-shot head: class names, templates, text features ``(C, dim)`` (raw; see
    :func:`encode_class_texts`) and the backbone's logit scale (CLIP: 100)."""

    classnames: list[str]
    templates: list[str]
    features: torch.Tensor
    logit_scale: float = 100.0

    def __post_init__(self):
        if self.features.shape[0] != len(self.classnames):
            raise ValueError(f"ClassText has {len(self.classnames)} class names but {self.features.shape[0]} "
                             f"feature rows.")


def encode_class_texts(backbone, classnames: Sequence[str], templates: Sequence[str]) -> ClassText:
    """Text features of every class.

    One template: the raw text feature of the prompt (what CLIP-Adapter's text adapter sees in the paper's
    code). Several templates: prompt ensembling, the mean of the L2-normalised features over templates.
    """
    classnames, templates = list(classnames), list(templates)
    if not templates:
        raise ValueError("At least one prompt template is needed, e.g. 'a photo of a {}.'.")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"Prompt template {t!r} has no '{{}}' placeholder for the class name.")
    prompts = [t.format(c) for c in classnames for t in templates]
    feats = backbone.encode_texts(prompts).float().reshape(len(classnames), len(templates), -1)
    if len(templates) == 1:
        out = feats[:, 0]
    else:
        out = F.normalize(feats, dim=-1).mean(dim=1)
    return ClassText(classnames, templates, out, float(backbone.logit_scale))
