"""Frozen image/text encoders behind one interface (:class:`Backbone`), found by name with :func:`load_backbone`.

    load_backbone("RN50", pretrained="openai")   # open_clip (open_clip.py): any architecture, tag, checkpoint, JSON
    load_backbone("lite")                        # the offline EfficientNet-Lite0 + MiniLM pair (lite.py)
    load_backbone("hf:PATH")                     # transformers CLIPModel / SiglipModel (hf.py, hf_clip.py, hf_siglip.py)

The interface, the registry and :class:`BackboneSpec` (backbone ids, built and parsed) are in ``base.py``; each
factory module registers itself, and importing this package imports them all.
"""
from . import hf, hf_clip, hf_siglip, lite, open_clip  # noqa: F401 - each registers its factory
from .base import (Backbone, BackboneLoadError, BackboneSpec, build_transforms, check_backbone, list_backbones,
                   load_backbone, register_backbone, weights_fingerprint)
from .open_clip import PACKAGED_CONFIGS, OpenClipBackbone

__all__ = ["Backbone", "BackboneLoadError", "BackboneSpec", "OpenClipBackbone", "build_transforms", "check_backbone",
           "list_backbones", "load_backbone", "register_backbone", "weights_fingerprint", "PACKAGED_CONFIGS"]
