"""Deprecated path: see :mod:`clip_adapter.model`."""
from ._compat import moved
from .model import AdaptedClassifier, expand_images, predict_to_jsonl

moved("clip_adapter.predict", "clip_adapter.model")
__all__ = ["AdaptedClassifier", "expand_images", "predict_to_jsonl"]
