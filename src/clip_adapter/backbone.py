"""Deprecated path: see :mod:`clip_adapter.backbones`."""
from ._compat import moved
from .backbones import Backbone, BackboneLoadError, BackboneSpec, OpenClipBackbone, list_backbones, load_backbone

moved("clip_adapter.backbone", "clip_adapter.backbones")
__all__ = ["Backbone", "BackboneLoadError", "BackboneSpec", "OpenClipBackbone", "list_backbones", "load_backbone"]
