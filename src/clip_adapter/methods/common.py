"""Pieces several methods share: CLIP's cosine classifier, CLIP-Adapter's bottleneck MLP and its residual blend, and
the training samples of methods that use every augmented view as a sample of its own."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["cosine_logits", "Adapter", "blend", "view_samples"]


def cosine_logits(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float = 0.0) -> torch.Tensor:
    """``scale * normalize(image) @ normalize(text).T + bias``: CLIP's classifier (``bias``: SigLIP's, 0 for CLIP;
    a constant shift, so softmax and argmax do not depend on it, only SigLIP's per-class sigmoid does)."""
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    return logits + bias if bias else logits


class Adapter(nn.Module):
    """The bottleneck MLP ``Linear(d, d/r) -> ReLU -> Linear(d/r, d) [-> ReLU]`` (no bias by default)."""

    def __init__(self, dim: int, reduction: int = 4, bias: bool = False, final_relu: bool = True):
        super().__init__()
        hidden = max(1, dim // reduction)
        layers: list[nn.Module] = [nn.Linear(dim, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, dim, bias=bias)]
        if final_relu:
            layers.append(nn.ReLU())
        self.fc = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def blend(x: torch.Tensor, adapter: nn.Module | None, alpha: float) -> torch.Tensor:
    """Residual blend ``alpha * adapter(x) + (1 - alpha) * x`` (identity without an adapter)."""
    if adapter is None:
        return x
    return alpha * adapter(x) + (1 - alpha) * x


def view_samples(features: torch.Tensor, labels: torch.Tensor,
                 views: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every augmented view as a sample, ``(V * n, d)`` with its labels (view-major), or the features themselves
    when there are no views: what GDA, ProKeR and CLAP estimate from (their authors encode each augmentation
    epoch of the training set and concatenate them)."""
    if views is None:
        return features, labels
    return views.reshape(-1, views.shape[-1]), labels.repeat(views.shape[0])
