"""clip-adapter: few-shot adaptation of frozen CLIP models with cached features.

    >>> import clip_adapter as ca
    >>> bb = ca.load_backbone("lite")                      # or ("RN50", pretrained="openai")
    >>> ds = ca.load_dataset("path/to/dataset")            # CoOp folder, class folders or CSV
    >>> rec = ca.run_one(ds, bb, ca.RunSpec("clip_adapter", shots=16, seed=1))
    >>> rec["accuracy"]
"""
from .backbone import Backbone, BackboneLoadError, list_backbones, load_backbone
from .data import Dataset, Item, load_dataset
from .experiments import RunSpec, run_one
from .features import FeatureCache
from .fewshot import sample_k_shot
from .methods import FewShotMethod, get_method, list_methods
from .predict import AdaptedClassifier
from .prompts import ClassText, encode_class_texts
from .selection import FeatureSplit, select

__version__ = "0.1.0"

__all__ = ["AdaptedClassifier", "Backbone", "BackboneLoadError", "ClassText", "Dataset", "FeatureCache", "FeatureSplit", "FewShotMethod",
           "Item", "RunSpec", "encode_class_texts", "get_method", "list_backbones", "list_methods", "load_backbone",
           "load_dataset", "run_one", "sample_k_shot", "select", "__version__"]
