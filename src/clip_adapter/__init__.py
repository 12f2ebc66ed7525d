"""clip-adapter: few-shot adaptation of frozen CLIP models with cached features.

    >>> import clip_adapter as ca
    >>> bb = ca.load_backbone("lite")                      # or ("RN50", pretrained="openai")
    >>> ds = ca.load_dataset("path/to/dataset")            # CoOp folder, class folders or CSV
    >>> rec = ca.run_one(ds, bb, ca.RunSpec("clip_adapter", shots=16, seed=1))
    >>> rec["accuracy"]

The layers, from the bottom (each imports only from the ones below it; ``docs/architecture.md``, checked by
``lint-imports``): ``io``, ``config`` -> ``backbones``, ``datasets`` -> ``prompts``, ``fewshot``, ``features``,
``evaluation``, ``results`` -> ``layers``, ``training`` -> ``methods`` -> ``selection``, ``model`` -> ``protocol``,
``report`` -> ``experiment``, ``ablations``, ``demo`` -> ``cli``.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# Public names -> the module that defines them. Imported on first use (PEP 562), so `import clip_adapter` and the
# command line's --help start at once; torch, open_clip, timm, sentence-transformers, scikit-learn and ray load
# only when something needs them.
_LAZY = {
    "Backbone": "backbones", "BackboneLoadError": "backbones", "BackboneSpec": "backbones",
    "list_backbones": "backbones", "load_backbone": "backbones",
    "Dataset": "datasets", "Item": "datasets", "load_dataset": "datasets",
    "run_experiment": "experiment", "FeatureCache": "features", "sample_k_shot": "fewshot",
    "FewShotMethod": "methods", "get_method": "methods", "list_methods": "methods",
    "AdaptedClassifier": "model", "ClassText": "prompts", "encode_class_texts": "prompts",
    "RunSpec": "protocol", "run_one": "protocol", "FeatureSplit": "selection", "select": "selection",
}

if TYPE_CHECKING:
    from .backbones import Backbone, BackboneLoadError, BackboneSpec, list_backbones, load_backbone
    from .datasets import Dataset, Item, load_dataset
    from .experiment import run_experiment
    from .features import FeatureCache
    from .fewshot import sample_k_shot
    from .methods import FewShotMethod, get_method, list_methods
    from .model import AdaptedClassifier
    from .prompts import ClassText, encode_class_texts
    from .protocol import RunSpec, run_one
    from .selection import FeatureSplit, select


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)    # a submodule, as the eager imports gave
        raise AttributeError(f"module 'clip_adapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value          # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = ["AdaptedClassifier", "Backbone", "BackboneLoadError", "BackboneSpec", "ClassText", "Dataset",
           "FeatureCache", "FeatureSplit", "FewShotMethod", "Item", "RunSpec", "encode_class_texts", "get_method",
           "list_backbones", "list_methods", "load_backbone", "load_dataset", "run_experiment", "run_one",
           "sample_k_shot", "select", "__version__"]
