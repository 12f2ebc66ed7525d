"""Scaling out on Ray (an optional extra: ``pip install 'clip-adapter[ray]'``): joining a cluster, feature extraction
on Ray Data into the ordinary feature cache, and batch prediction with a saved model.

    cluster.py   connect (local / auto / host:port), resource and shared-folder checks, one-line errors
    extract.py   extract_features: decode in Ray Data tasks, encode in a pool of actors, write cache shards
    predict.py   predict_on_ray: streaming, resumable prediction into the same JSON lines as the plain path

The experiment grid on Ray is :mod:`clip_adapter.experiment.ray_executor` (``executor: {ray: ...}``). Nothing here
imports Ray at import time: ``--ray`` without the extra is a one-line error saying how to install it.
"""
from .cluster import (ClusterError, RayUnavailable, check_resources, check_shared_folder, connect, require_ray)
from .extract import BackboneRecipe, ExtractRequest, extract_features
from .predict import predict_on_ray

__all__ = ["ClusterError", "RayUnavailable", "BackboneRecipe", "ExtractRequest", "check_resources",
           "check_shared_folder", "connect", "extract_features", "predict_on_ray", "require_ray"]
