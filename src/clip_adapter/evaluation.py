"""Metrics: top-1 accuracy, macro-F1, per-class accuracy; mean ± std over seeds."""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["evaluate_predictions", "mean_std"]


def evaluate_predictions(pred: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> dict:
    """Accuracy, macro-F1 (sklearn's definition) and per-class accuracy of integer predictions."""
    from sklearn.metrics import f1_score
    pred, labels = pred.cpu().long(), labels.cpu().long()
    if pred.shape != labels.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(labels.shape)} differ in shape.")
    n = labels.numel()
    # Exact fractions (correct / total) as Python floats: 19/20 is stored as 0.95, not float32's 0.949999988.
    acc = int((pred == labels).sum()) / n if n else float("nan")
    present = sorted(set(labels.tolist()))
    macro_f1 = float(f1_score(labels.numpy(), pred.numpy(), labels=present, average="macro", zero_division=0)) \
        if n else float("nan")
    per_class = {}
    for c in present:
        mask = labels == c
        per_class[classnames[c]] = int((pred[mask] == c).sum()) / int(mask.sum())
    return {"accuracy": acc, "macro_f1": macro_f1, "per_class_accuracy": per_class, "n": n}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
