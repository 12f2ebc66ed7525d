"""CLIP-Adapter (Gao et al., IJCV 2024): a bottleneck MLP on frozen CLIP features, blended residually.

    f' = alpha * A(f) + (1 - alpha) * f,    A = Linear(d, d/r) -> ReLU -> Linear(d/r, d) -> ReLU
    logits = logit_scale * normalize(img') @ normalize(txt').T

The adapter acts on the raw features and both sides are L2-normalised after the blend, as in the official
``clip_adapter.py``. It can sit on the image side, the text side, or both (each with its own alpha).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Bool, Interval, Options, setting
from ..prompts import ClassText
from ..training import TrainingConfig, can_stack, train_loop, train_stacked
from .base import FewShotMethod, register_method
from .common import Adapter, blend, cosine_logits

__all__ = ["ClipAdapterConfig", "ClipAdapter"]


@dataclass(frozen=True)
class ClipAdapterConfig(TrainingConfig):
    alpha: float = setting(0.2, "residual ratio of the image adapter: alpha * A(f) + (1 - alpha) * f",
                           Interval(float, 0, 1))
    alpha_text: float = setting(0.2, "residual ratio of the text adapter (target 'text' or 'both')",
                                Interval(float, 0, 1))
    target: str = setting("image", "where adapters sit: 'image', 'text' or 'both'", Options(("image", "text", "both")))
    reduction: int = setting(4, "bottleneck: hidden = dim // reduction", Interval(int, 1))
    bias: bool = setting(False, "the adapter's linear layers have biases", Bool())
    final_relu: bool = setting(True, "a ReLU after the adapter's second layer (the paper's)", Bool())


@register_method("clip_adapter")
class ClipAdapter(FewShotMethod):
    """CLIP-Adapter: trains the adapter(s) with cross-entropy on cached (augmented) features."""

    config_cls = ClipAdapterConfig
    # alpha's whole range [0, 1] in steps of 0.2, as the paper's alpha study: 0 is zero-shot (the adapter unused), 1
    # all adapter. Its ends are the range's, so a choice there is not a grid edge (selection.grid_edges); lite chose
    # the old grid's ends (0.2 on imagenette, 0.8 on dtd10 and flowers89) in most runs.
    default_grid = {"alpha": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}
    trainable = ("image_adapter.*", "text_adapter.*")
    unseen_classes = "transfer"   # the adapters map any feature: new class names need only their text features

    def _build(self, dim: int) -> None:
        c = self.config
        # Seeded init without touching the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.image_adapter_ = Adapter(dim, c.reduction, c.bias, c.final_relu) if c.target != "text" else None
            self.text_adapter_ = Adapter(dim, c.reduction, c.bias, c.final_relu) if c.target != "image" else None

    def _adapters(self) -> list[nn.Module]:
        return [a for a in (self.image_adapter_, self.text_adapter_) if a is not None]

    def _logits(self, img: torch.Tensor) -> torch.Tensor:
        img = blend(img, self.image_adapter_, self.config.alpha)
        txt = blend(self.text_features_, self.text_adapter_, self.config.alpha_text)
        return cosine_logits(img, txt, self.logit_scale_)

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, *, text: ClassText,
             views: torch.Tensor | None) -> None:
        self.text_features_ = text.features.float().clone().to(self.config.device)
        self._build(features.shape[1])
        params = []
        for a in self._adapters():
            a.to(self.config.device).train()
            params += list(a.parameters())
        # The paper's placement (an image adapter, text fixed) trains through a hand-written step; others by autograd.
        step = _ImageAdapterStep(self.image_adapter_, self.text_features_, self.config.alpha, self.logit_scale_) \
            if self.text_adapter_ is None else None
        self.history_ = train_loop(params, self._logits, features, labels, self.config, views=views,
                                   drop_last=self.drop_last, step=step)
        for a in self._adapters():
            a.cpu().eval().requires_grad_(False)
        self.text_features_ = self.text_features_.cpu()

    @classmethod
    def fit_many(cls, configs: Sequence[ClipAdapterConfig], features: torch.Tensor, labels: torch.Tensor, *,
                 text: ClassText, views: torch.Tensor | None = None, backbone=None,
                 stack: bool | None = None) -> list["ClipAdapter"]:
        """Fit every config, stacked (``stack=True``) as one vectorised model
        (:func:`~clip_adapter.training.train_stacked`: the adapters of all points stacked, one pass over the
        batches) or one by one (``stack=False``); each point equals its own :meth:`fit` either way (the image
        placement bit for bit). Points with different architectures or optimisation settings are always fitted one
        by one. Default (``None``): stacked off the CPU, where a step of these small models is kernel-launch
        overhead that stacking pays once for all points; one by one on the CPU, where a step is arithmetic and
        memory traffic and the stacked weights fall out of the cache (4 alphas stacked measured 1.3x the time of
        one by one there: benchmarks/batched_search.py)."""
        if stack is None:
            stack = torch.device(configs[0].device).type != "cpu"
        if not stack or not cls._can_stack(configs):
            return super().fit_many(configs, features, labels, text=text, views=views, backbone=backbone)
        return cls._fit_stacked(configs, [features] * len(configs), [labels] * len(configs),
                                [views] * len(configs), text, backbone, shared=True)

    stacks_data = True

    @classmethod
    def fit_many_data(cls, configs: Sequence[ClipAdapterConfig], features: Sequence[torch.Tensor],
                      labels: Sequence[torch.Tensor], *, text: ClassText, views: Sequence[torch.Tensor | None],
                      backbone=None) -> list["ClipAdapter"]:
        """Each config on its own data (an experiment's seeds) as one stacked model when the points can share an
        optimiser and their data have one shape (whatever the device: asked for by ``batch_seeds``); each model
        equals its own :meth:`fit` on its data."""
        shapes = {(tuple(f.shape), None if v is None else tuple(v.shape)) for f, v in zip(features, views)}
        if len(shapes) != 1 or not cls._can_stack(configs):
            return super().fit_many_data(configs, features, labels, text=text, views=views, backbone=backbone)
        return cls._fit_stacked(configs, features, labels, views, text, backbone, shared=False)

    @staticmethod
    def _can_stack(configs: Sequence[ClipAdapterConfig]) -> bool:
        same_arch = len({(c.target, c.reduction, c.bias, c.final_relu) for c in configs}) == 1
        return same_arch and can_stack(configs)

    @classmethod
    def _fit_stacked(cls, configs, features, labels, views, text, backbone, shared: bool) -> list["ClipAdapter"]:
        models = [cls(c, backbone=backbone) for c in configs]
        for m, f, y, v in zip(models, features, labels, views):     # what fit() does before _fit
            m._start_fit(f, y, text, v)
            m.check_train_data(f, y, v)
            m.text_features_ = text.features.float().clone()
            m._build(f.shape[1])
        if shared:      # one data set for every point
            x, y, v = features[0].float(), labels[0], None if views[0] is None else views[0].float()
        else:
            x, y = torch.stack([f.float() for f in features]), torch.stack(list(labels))
            v = None if views[0] is None else torch.stack([t.float() for t in views])
        stacked = _StackedClipAdapter(models)
        histories = train_stacked(stacked, configs, x, y, views=v, drop_last=cls.drop_last)
        stacked.write_back()
        for m, h in zip(models, histories):
            m.history_ = h
            for a in m._adapters():
                a.cpu().eval().requires_grad_(False)
            m._end_fit()
        return models

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(self._check_features(features))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"fixed.text_features": self.text_features_}
        for prefix, a in (("image_adapter.", self.image_adapter_), ("text_adapter.", self.text_adapter_)):
            if a is not None:
                out.update({prefix + k: v for k, v in a.state_dict().items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.text_features_ = tensors["fixed.text_features"]
        self._build(int(meta["embed_dim"]))
        for prefix, a in (("image_adapter.", self.image_adapter_), ("text_adapter.", self.text_adapter_)):
            if a is not None:
                sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                a.load_state_dict(sd, strict=True)
                a.eval().requires_grad_(False)


class _StackedAdapters(nn.Module):
    """The adapters of ``P`` models on one side (image or text), weights stacked transposed ``(P, in, out)``,
    applied with batched matrix products to ``(P, n, d)``: the same maths as :class:`~.common.Adapter` on each
    slice. Transposed so that the gradients come out contiguous: SGD's element-wise updates on a transposed
    gradient were 10x slower than the products themselves (measured)."""

    def __init__(self, adapters: list[nn.Module]):
        super().__init__()
        linears = [[m for m in a.fc if isinstance(m, nn.Linear)] for a in adapters]
        self.weights = nn.ParameterList([nn.Parameter(torch.stack([ls[j].weight.detach().t() for ls in linears]).contiguous())
                                         for j in range(2)])
        self.biases = nn.ParameterList([nn.Parameter(torch.stack([ls[j].bias.detach() for ls in linears]))
                                        for j in range(2)] if linears[0][0].bias is not None else [])
        self.final_relu = isinstance(adapters[0].fc[-1], nn.ReLU)
        self.targets = linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, w in enumerate(self.weights):
            x = torch.baddbmm(self.biases[j].unsqueeze(1), x, w) if self.biases else torch.bmm(x, w)
            if j == 0 or self.final_relu:
                x = torch.relu(x)
        return x

    @torch.no_grad()
    def write_back(self) -> None:
        for p, ls in enumerate(self.targets):
            for j, lin in enumerate(ls):
                lin.weight.copy_(self.weights[j][p].t())
                if self.biases:
                    lin.bias.copy_(self.biases[j][p])


class _StackedClipAdapter(nn.Module):
    """``P`` CLIP-Adapter models (one per grid point) as one module: ``(P, B, d)`` -> logits ``(P, B, C)``, each
    slice equal to that model's :meth:`ClipAdapter._logits`."""

    def __init__(self, models: list[ClipAdapter]):
        super().__init__()
        first = models[0]
        self.image = _StackedAdapters([m.image_adapter_ for m in models]) if first.image_adapter_ else None
        self.text = _StackedAdapters([m.text_adapter_ for m in models]) if first.text_adapter_ else None
        self.scale = first.logit_scale_
        self.register_buffer("text_features", torch.stack([m.text_features_ for m in models]))
        # Each factor rounded once from a Python float, as blend() does with alpha and 1 - alpha.
        for name, vals in (("alpha", [m.config.alpha for m in models]),
                           ("alpha_text", [m.config.alpha_text for m in models])):
            self.register_buffer(name, torch.tensor([[a, 1 - a] for a in vals], dtype=torch.float32)[:, :, None, None])
        # train_stacked's hand-written step (ManualStep): for the paper's placement, image side only.
        self.step = self._image_step if self.image is not None and self.text is None else None

    @staticmethod
    def _blend(x: torch.Tensor, adapters: _StackedAdapters | None, ab: torch.Tensor) -> torch.Tensor:
        return x if adapters is None else ab[:, 0] * adapters(x) + ab[:, 1] * x

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = self._blend(img, self.image, self.alpha)
        txt = self._blend(self.text_features, self.text, self.alpha_text)
        return torch.bmm(self.scale * F.normalize(img, dim=-1), F.normalize(txt, dim=-1).mT)   # as cosine_logits

    def write_back(self) -> None:
        for side in (self.image, self.text):
            if side is not None:
                side.write_back()

    @torch.no_grad()
    def _image_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`, the per-point mean cross-entropy and its backward by hand (:class:`_ImageAdapterStep`
        stacked): writes the image adapters' ``.grad``, returns (per-point losses ``(P,)``, logits)."""
        side = self.image
        ws = [w.detach() for w in side.weights]
        bs = [b.detach() for b in side.biases] if side.biases else [None, None]
        acts = _adapter_fwd(x, ws, bs, side.final_relu, stacked=True)
        img = self.alpha[:, 0] * acts[-1] + self.alpha[:, 1] * x
        norm_text = F.normalize(self.text_features, dim=-1)
        losses, logits, g_img = _cosine_ce_bwd(img, norm_text, self.scale, y, stacked=True)
        grads = _adapter_bwd(g_img * self.alpha[:, 0], x, acts, ws, bs, side.final_relu, stacked=True)
        for j, (g_w, g_b) in enumerate(grads):
            side.weights[j].grad = g_w
            if side.biases:
                side.biases[j].grad = g_b
        return losses, logits


# -- hand-written training steps ---------------------------------------------------------------------------------
# Autograd's bookkeeping costs as much as the maths for these small products on the CPU. The steps below run, with
# autograd off, the very operations autograd runs for the modules above (the same kernels on the same operands, in
# the same layouts), so the gradients are the same bits: tests/test_fastfit.py checks them against autograd.

def _linear_fwd(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stacked: bool) -> torch.Tensor:
    """``F.linear`` (weight ``(out, in)``), or the stacked adapters' ``bmm`` (weight ``(P, in, out)``)."""
    if stacked:
        return torch.baddbmm(b.unsqueeze(1), x, w) if b is not None else torch.bmm(x, w)
    return torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())


def _linear_bwd(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stacked: bool,
                need_input: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(grad input, grad weight, grad bias) of :func:`_linear_fwd`, as autograd's mm/bmm/addmm backward."""
    if stacked:
        gx = torch.bmm(g, w.transpose(1, 2)) if need_input else None
        return gx, torch.bmm(x.transpose(1, 2), g), g.sum(1, keepdim=True).squeeze(1) if b is not None else None
    gx = torch.mm(g, w) if need_input else None
    return gx, torch.mm(g.t(), x), g.sum(0) if b is not None else None


def _adapter_fwd(x: torch.Tensor, ws: list, bs: list, final_relu: bool, stacked: bool) -> list[torch.Tensor]:
    """The bottleneck MLP's activations: ``[relu(h1), a]`` (``a`` the adapter's output)."""
    r1 = torch.relu(_linear_fwd(x, ws[0], bs[0], stacked))
    h2 = _linear_fwd(r1, ws[1], bs[1], stacked)
    return [r1, torch.relu(h2) if final_relu else h2]


def _adapter_bwd(g: torch.Tensor, x: torch.Tensor, acts: list[torch.Tensor], ws: list, bs: list, final_relu: bool,
                 stacked: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per layer (grad weight, grad bias) of :func:`_adapter_fwd` given the output's grad ``g``."""
    r1, a = acts
    if final_relu:
        g = torch.ops.aten.threshold_backward(g, a, 0)
    g_r1, g_w2, g_b2 = _linear_bwd(g, r1, ws[1], bs[1], stacked, need_input=True)
    g_h1 = torch.ops.aten.threshold_backward(g_r1, r1, 0)
    _, g_w1, g_b1 = _linear_bwd(g_h1, x, ws[0], bs[0], stacked, need_input=False)
    return [(g_w1, g_b1), (g_w2, g_b2)]


def _cosine_ce_bwd(img: torch.Tensor, norm_text: torch.Tensor, scale: float, y: torch.Tensor,
                   stacked: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, logits and the loss's grad w.r.t. ``img`` of ``cross_entropy(scale * normalize(img) @ text.T, y)``
    (stacked: the per-point losses ``(P,)``, each the mean over its batch, as ``train_stacked`` sums them)."""
    norm = torch.linalg.vector_norm(img, 2, -1, keepdim=True)
    denom = norm.clamp_min(1e-12).expand_as(img)
    unit = img / denom
    scaled = unit * scale
    if stacked:
        logits = torch.bmm(scaled, norm_text.mT)
        P, B = y.shape
        logp = torch.log_softmax(logits.flatten(0, 1), 1)
        nll, total = torch.ops.aten.nll_loss_forward(logp, y.flatten(), None, 0, -100)
        loss = nll.view(P, B).mean(1)
        g_nll = (torch.ones(P, dtype=img.dtype, device=img.device).unsqueeze(1).expand(P, B) / B).reshape(-1)
        g = torch.ops.aten.nll_loss_backward(g_nll, logp, y.flatten(), None, 0, -100, total)
        g = torch._log_softmax_backward_data(g, logp, 1, logp.dtype).view_as(logits)
        g_scaled = torch.bmm(g, norm_text)
    else:
        logits = torch.mm(scaled, norm_text.t())
        logp = torch.log_softmax(logits, 1)
        loss, total = torch.ops.aten.nll_loss_forward(logp, y, None, 1, -100)
        g = torch.ops.aten.nll_loss_backward(torch.ones((), dtype=img.dtype, device=img.device), logp, y, None, 1,
                                             -100, total)
        g = torch._log_softmax_backward_data(g, logp, 1, logp.dtype)
        g_scaled = torch.mm(g, norm_text)
    g_unit = g_scaled * scale
    # F.normalize's backward: through the division, then the clamped norm (autograd's formulas, term by term).
    g_denom = (-g_unit * ((img / denom) / denom)).sum(-1, keepdim=True)
    g_norm = torch.where(norm >= 1e-12, g_denom, torch.zeros((), dtype=img.dtype, device=img.device))
    g_img = g_unit / denom + g_norm * (img / norm).masked_fill_(norm == 0, 0)
    return loss, logits, g_img


class _ImageAdapterStep:
    """One training step of an image-side CLIP-Adapter (the text side fixed): forward, backward into each
    parameter's ``.grad``; returns (loss, logits) for :func:`~clip_adapter.training.train_loop`."""

    def __init__(self, adapter: Adapter, text_features: torch.Tensor, alpha: float, scale: float):
        linears = [m for m in adapter.fc if isinstance(m, nn.Linear)]
        self.ws = [lin.weight for lin in linears]
        self.bs = [lin.bias for lin in linears]
        self.final_relu = isinstance(adapter.fc[-1], nn.ReLU)
        self.alpha, self.scale = alpha, scale
        self.text_features = text_features

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ws, bs = [w.detach() for w in self.ws], [None if b is None else b.detach() for b in self.bs]
        acts = _adapter_fwd(x, ws, bs, self.final_relu, stacked=False)
        img = acts[-1] * self.alpha + x * (1 - self.alpha)          # blend(), as alpha * A(x) + (1 - alpha) * x
        norm_text = F.normalize(self.text_features, dim=-1)
        loss, logits, g_img = _cosine_ce_bwd(img, norm_text, self.scale, y, stacked=False)
        grads = _adapter_bwd(g_img * self.alpha, x, acts, ws, bs, self.final_relu, stacked=False)
        for w, b, (g_w, g_b) in zip(self.ws, self.bs, grads):
            w.grad = g_w
            if b is not None:
                b.grad = g_b
        return loss, logits
