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

__version__ = "0.1.0"

__all__ = ["AdaptedClassifier", "Backbone", "BackboneLoadError", "BackboneSpec", "ClassText", "Dataset",
           "FeatureCache", "FeatureSplit", "FewShotMethod", "Item", "RunSpec", "encode_class_texts", "get_method",
           "list_backbones", "list_methods", "load_backbone", "load_dataset", "run_experiment", "run_one",
           "sample_k_shot", "select", "__version__"]
