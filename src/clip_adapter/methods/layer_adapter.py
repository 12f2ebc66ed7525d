"""Deprecated module name: the insertion-layer adapter is :mod:`clip_adapter.methods.clip_adapter_layer` (named, like
every method file, after its registry key ``clip_adapter_layer``). ``LayerAdapter`` and ``LayerAdapterConfig`` are
``ClipAdapterLayer`` and ``ClipAdapterLayerConfig``; importing the old names still works, with a DeprecationWarning.
"""
from __future__ import annotations

import warnings
from typing import Any

from . import clip_adapter_layer

_RENAMED = {"LayerAdapter": "ClipAdapterLayer", "LayerAdapterConfig": "ClipAdapterLayerConfig"}


def __getattr__(name: str) -> Any:
    # Warn on use, not on import: the methods package imports every module (this one too) to register them.
    if name in _RENAMED:
        warnings.warn(f"clip_adapter.methods.layer_adapter.{name} is now clip_adapter.methods.clip_adapter_layer."
                      f"{_RENAMED[name]}; import it from there.", DeprecationWarning, stacklevel=2)
        return getattr(clip_adapter_layer, _RENAMED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
