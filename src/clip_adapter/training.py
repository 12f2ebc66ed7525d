"""The one training loop every trained method shares, on cached features (the encoder never runs here).

Defaults follow the CLIP-Adapter/CoOp code (Dassl): SGD momentum 0.9, weight decay 5e-4, lr 2e-3, batch 32,
cosine schedule over the epochs after one constant warm-up epoch at 1e-5, cross-entropy. Whether an epoch drops its
last partial batch is each method's declared choice (``FewShotMethod.drop_last``, as its authors' code does).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import Interval, MethodConfig, Options, Predicate, setting
from .io import progress_bar, torch_threads

__all__ = ["TrainingConfig", "train_loop", "train_stacked", "can_stack", "VmapStack", "lr_at_epoch", "ManualStep",
           "make_optimizer"]

log = logging.getLogger(__name__)


def _is_device(v: object) -> bool:
    try:
        torch.device(v)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        return False
    return isinstance(v, str)


@dataclass(frozen=True)
class TrainingConfig(MethodConfig):
    """Optimisation settings shared by trained methods (flat fields so ``--set lr=1e-3`` works)."""

    epochs: int = setting(200, "training epochs", Interval(int, 1))
    batch_size: int = setting(32, "training images per step", Interval(int, 1))
    lr: float = setting(2e-3, "learning rate (cosine-annealed after the warm-up)", Interval(float, 0, closed="neither"))
    optimizer: str = setting("sgd", "'sgd' (paper), 'adam' (Dassl's: L2 weight decay, eps 1e-8) or 'adamw' (eps 1e-4)",
                             Options(("sgd", "adam", "adamw")))
    momentum: float = setting(0.9, "SGD momentum", Interval(float, 0, 1, closed="left"))
    weight_decay: float = setting(5e-4, "weight decay", Interval(float, 0))
    warmup_epochs: int = setting(1, "epochs of constant lr warm-up, as Dassl's \"constant\" warm-up", Interval(int, 0))
    warmup_lr: float = setting(1e-5, "the warm-up's learning rate", Interval(float, 0, closed="neither"))
    device: str = setting("cpu", "torch device of training",
                          Predicate(_is_device, "a torch device such as 'cpu', 'cuda' or 'cuda:1'"))


class ManualStep(Protocol):
    """A hand-written training step: ``step(x, y)`` -> ``(loss, logits)``, each trained parameter's ``.grad`` set
    to what ``loss.backward()`` would give (stacked: ``x`` ``(P, B, d)``, per-point losses ``(P,)``)."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def lr_at_epoch(cfg: TrainingConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): constant warm-up, then cosine from ``lr`` towards 0.

    The warm-up never takes every epoch: at least the last epoch trains at the cosine rate.
    """
    warmup = min(cfg.warmup_epochs, cfg.epochs - 1)
    if epoch < warmup:
        return cfg.warmup_lr
    t = epoch - warmup
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / cfg.epochs))


@contextlib.contextmanager
def cpu_threads(n: int, device: torch.device):
    """Run with ``n`` intra-op threads on the CPU, then restore. Adapter steps are tiny matrix products: extra
    threads only add synchronisation, and on a busy machine each parallel region waits for a time slice
    (measured here: 0.3-0.5 s per step with 2 threads under load, milliseconds with 1)."""
    with torch_threads(n if device.type == "cpu" else None):
        yield


def train_loop(params: Iterable[torch.nn.Parameter], logits_fn: Callable[[torch.Tensor], torch.Tensor],
               features: torch.Tensor, labels: torch.Tensor, cfg: TrainingConfig,
               views: torch.Tensor | None = None, drop_last: bool = True,
               penalty: Callable[[], torch.Tensor] | None = None, step: ManualStep | None = None) -> dict:
    """Minimise cross-entropy of ``logits_fn(batch_features)`` over ``cfg.epochs``.

    Each epoch draws one augmented view per image from ``views`` ``(V, n, d)`` when given (the cached
    counterpart of re-augmenting every image every epoch), else uses ``features`` ``(n, d)``.
    ``drop_last`` is the method's declared choice (``FewShotMethod.drop_last``, as its authors' code does): when
    True, an epoch drops its last partial batch if the training set holds at least one full batch (Dassl's rule);
    when False every image is seen every epoch (Tip-Adapter-F's loader). ``penalty()``, when given, is added to each
    batch's loss (a regulariser on the parameters, e.g. CLAP's pull towards the zero-shot weights).
    ``step``, when given, replaces autograd: ``step(x, y)`` computes the loss of ``logits_fn(x)`` and writes each
    parameter's ``.grad`` itself (a method's hand-written backward, which must give autograd's gradients).
    Returns a history dict (loss per epoch, train accuracy of the last epoch, steps, seconds).
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("Nothing to train: no parameter requires grad.")
    if step is not None and penalty is not None:
        raise ValueError("train_loop: a hand-written step computes the whole loss; it takes no penalty.")
    device = torch.device(cfg.device)
    source = (views if views is not None else features.unsqueeze(0)).to(device)
    labels = labels.to(device)
    n = source.shape[1]
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(params, cfg, device)
    drop_last = drop_last and n >= cfg.batch_size
    history: dict = {"loss": [], "steps": 0}
    t0 = time.perf_counter()
    with cpu_threads(1, device), progress_bar(cfg.epochs, f"train on {n} images", unit="epochs",
                                              enabled=log.isEnabledFor(logging.INFO), min_seconds=10) as bar:
        _epochs(params, logits_fn, source, labels, cfg, opt, gen, drop_last, history, bar, penalty, step)
    history["seconds"] = time.perf_counter() - t0
    log.debug("trained %d steps in %.1fs, final loss %.4f", history["steps"], history["seconds"], history["loss"][-1])
    return history


def _epochs(params: list, logits_fn: Callable, source: torch.Tensor, labels: torch.Tensor, cfg: TrainingConfig,
            opt, gen: torch.Generator, drop_last: bool, history: dict, bar,
            penalty: Callable[[], torch.Tensor] | None = None, step: ManualStep | None = None) -> None:
    n_views, n = source.shape[0], source.shape[1]
    # One gather per batch from (views * images, ...) rows; per-image activations keep their shape ((tokens, width)
    # for the insertion-layer adapter).
    flat = source.reshape(n_views * n, *source.shape[2:])
    bounds = batch_bounds(n, cfg.batch_size, drop_last)
    for epoch in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at_epoch(cfg, epoch)
        rows, ys = epoch_rows(gen, n_views, n, labels)
        last = epoch == cfg.epochs - 1
        losses, correct = [], 0
        for start, stop in bounds:
            x = flat.index_select(0, rows[start:stop])       # a fresh batch, as indexing the views gave it
            y = ys[start:stop]
            if step is not None:
                loss, logits = step(x, y)
            else:
                logits = logits_fn(x)
                loss = F.cross_entropy(logits, y)
                if penalty is not None:
                    loss = loss + penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            losses.append(loss.detach())
            if last:    # only the last epoch's train accuracy is kept
                correct += (logits.detach().argmax(-1) == y).sum()
        history["steps"] += len(bounds)
        history["loss"].append(epoch_loss(losses, bounds))
        history["train_acc"] = int(correct) / max(sum(stop - start for start, stop in bounds), 1)
        bar.update(1)


def batch_bounds(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch of an epoch over ``n`` images; ``drop_last`` (already resolved against
    ``n >= batch_size``) drops the last partial batch."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)
            if not (drop_last and s + batch_size > n)]


def epoch_rows(gen: torch.Generator, n_views: int, n: int, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's draw, in the order every trained method has always consumed its generator (a permutation of the
    images, then one view per image): the row of each position in the flattened views ``(V * n, d)`` and its
    label, on ``labels``' device."""
    order = torch.randperm(n, generator=gen)
    view_idx = torch.randint(n_views, (n,), generator=gen)
    order_d = order.to(labels.device)
    return (view_idx[order] * n + order).to(labels.device), labels.index_select(0, order_d)


def epoch_loss(losses: list[torch.Tensor], bounds: list[tuple[int, int]]) -> float:
    """The epoch's mean loss over the images seen, summed in Python floats step by step (one device sync per
    epoch, not per step)."""
    total, seen = 0.0, 0
    for value, (start, stop) in zip(torch.stack(losses).tolist() if losses else [], bounds):
        total += value * (stop - start)
        seen += stop - start
    return total / max(seen, 1)


class LeanSGD:
    """``torch.optim.SGD``'s update without its per-step Python bookkeeping (~60-70 us a step here, as much as the
    update itself for an adapter): the same element-wise operations in the same order (its ``foreach`` form), so the
    same updates bit for bit (tests/test_fastfit.py). The weight decay is added into the gradient in place (the
    gradient is not used after the step). Dampening 0, no Nesterov, as the configs have. (The ``fused`` kernel is
    one pass instead of three but rounds the tail of a tensor differently: not used.)"""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, momentum: float, weight_decay: float):
        self.params = list(params)
        self.param_groups = [{"lr": lr}]
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: list[torch.Tensor] | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            raise RuntimeError("LeanSGD: every parameter needs a gradient at every step.")
        if self.weight_decay != 0:
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        if self.momentum != 0:
            if self.buffers is None:
                self.buffers = [g.detach().clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads, alpha=1)
            grads = self.buffers
        torch._foreach_add_(self.params, grads, alpha=-self.param_groups[0]["lr"])


def make_optimizer(params: Sequence[torch.Tensor], cfg: TrainingConfig, device: torch.device):
    """The configured optimiser. On the CPU, SGD is :class:`LeanSGD` (torch's SGD without its bookkeeping; the
    same updates bit for bit, tests/test_fastfit.py) and Adam/AdamW ``foreach`` (the same updates as the default
    single-tensor loop, fewer dispatches; fused Adam rounds differently)."""
    cpu = device.type == "cpu"
    if cfg.optimizer == "sgd":
        if cpu:
            return LeanSGD(params, cfg.lr, cfg.momentum, cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    extra = {"foreach": True} if cpu else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-4, **extra)


# -- one vectorised fit for several grid points ----------------------------------------------------------------
#: the fields that must agree for grid points to share one optimiser and one schedule (the seed may differ)
SHARED_FIELDS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "warmup_epochs", "warmup_lr",
                 "device")


def can_stack(configs: Sequence[TrainingConfig]) -> bool:
    """Whether :func:`train_stacked` can fit these points at once: the optimisation settings agree (the seeds and
    the method's own hyper-parameters may differ)."""
    return len(configs) > 1 and all(
        all(getattr(c, f) == getattr(configs[0], f) for f in SHARED_FIELDS) for c in configs)


def train_stacked(model: nn.Module, configs: Sequence[TrainingConfig], features: torch.Tensor, labels: torch.Tensor,
                  views: torch.Tensor | None = None, drop_last: bool = True) -> list[dict]:
    """Fit ``P = len(configs)`` grid points as ONE vectorised model; each point as :func:`train_loop` fits it alone.

    ``model`` maps a stacked batch ``(P, B, d)`` to stacked logits ``(P, B, C)``, point ``p`` reading only its own
    slice ``p`` of every parameter (:class:`VmapStack` builds one from per-point modules; a method may write its
    own with batched matrix products; a model with a ``step`` method (:class:`ManualStep`, stacked) trains through
    it instead of autograd). Each point draws its batches from its own generator seeded with its own
    ``cfg.seed`` exactly as :func:`train_loop` does, the optimiser and the schedule act element by element, and the
    summed loss gives each point exactly its own gradient: every point sees the seeds, batches and schedule of
    fitting it alone, in one pass over the batches. ``drop_last`` as in :func:`train_loop`. Returns one history
    per point.

    Per-point data (an experiment's seeds, each with its own few-shot sample of the same size): ``labels``
    ``(P, n)``, ``features`` ``(P, n, d)`` and ``views`` ``(P, V, n, d)``; point ``p`` trains on slice ``p`` only.
    """
    if not can_stack(configs):
        raise ValueError("train_stacked needs at least two configs with equal optimisation settings "
                         f"({', '.join(SHARED_FIELDS)}); use train_loop for each point instead.")
    cfg, device = configs[0], torch.device(configs[0].device)
    trained = [p for p in model.to(device).parameters() if p.requires_grad]
    if not trained:
        raise ValueError("Nothing to train: no parameter requires grad.")
    per_point = labels.ndim == 2
    if per_point and labels.shape[0] != len(configs):
        raise ValueError(f"train_stacked: per-point labels for {labels.shape[0]} points, {len(configs)} configs.")
    source = (views if views is not None else features.unsqueeze(-3)).to(device)   # (V, n, d) or (P, V, n, d)
    labels = labels.to(device)
    opt = make_optimizer(trained, cfg, device)
    gens = [torch.Generator().manual_seed(c.seed) for c in configs]
    histories: list[dict] = [{"loss": [], "steps": 0} for _ in configs]
    t0 = time.perf_counter()
    with cpu_threads(1, device):
        for epoch in range(cfg.epochs):
            for g in opt.param_groups:
                g["lr"] = lr_at_epoch(cfg, epoch)
            _stacked_epoch(model, source, labels, cfg, opt, gens, histories, drop_last, epoch == cfg.epochs - 1)
    seconds = time.perf_counter() - t0
    for h in histories:
        h["seconds"] = seconds
    log.debug("trained %d points x %d steps at once in %.1fs", len(configs), histories[0]["steps"], seconds)
    return histories


class VmapStack(nn.Module):
    """Per-point modules (one architecture, different values) as one stacked module for :func:`train_stacked`.

    Parameters and buffers are stacked along a new first dimension (:func:`torch.func.stack_module_state`) and
    the forward runs :func:`torch.func.vmap` over :func:`torch.func.functional_call`; per-point constants (e.g. a
    blend ratio) belong in buffers. :meth:`write_back` copies the trained values into the original modules.
    Generic; a hand-written batched forward (``torch.bmm``) can be faster on the CPU.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        self.points = list(modules)
        params, buffers = torch.func.stack_module_state(self.points)
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[k], requires_grad=params[k].requires_grad)
                                         for k in self.names])
        for k, v in buffers.items():
            self.register_buffer("b_" + k.replace(".", "__"), v)
        self.buffer_names = list(buffers)
        self._base = [copy.deepcopy(self.points[0]).to("meta")]   # in a list: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(zip(self.names, self.stacked))
        buffers = {k: getattr(self, "b_" + k.replace(".", "__")) for k in self.buffer_names}
        base = self._base[0]
        return torch.func.vmap(lambda p, b, xi: torch.func.functional_call(base, (p, b), (xi,)))(params, buffers, x)

    @torch.no_grad()
    def write_back(self) -> None:
        for i, m in enumerate(self.points):
            for k, v in zip(self.names, self.stacked):
                m.get_parameter(k).copy_(v[i])


def _stacked_epoch(logits_fn: nn.Module, source: torch.Tensor, labels: torch.Tensor,
                   cfg: TrainingConfig, opt, gens: list[torch.Generator],
                   histories: list[dict], drop_last: bool, last: bool) -> None:
    per_point = source.ndim == 4              # (P, V, n, d): each point its own data
    n_views, n = source.shape[-3:-1]
    flat = source.reshape(-1, source.shape[-1])
    # Each point consumes its own generator exactly as train_loop's epoch does: one permutation, then view indices.
    draws = [epoch_rows(g, n_views, n, labels[p] if per_point else labels) for p, g in enumerate(gens)]
    rows = torch.stack([r + (p * n_views * n if per_point else 0) for p, (r, _) in enumerate(draws)])   # (P, n)
    ys = torch.stack([y for _, y in draws])                                     # (P, n)
    bounds = batch_bounds(n, cfg.batch_size, drop_last and n >= cfg.batch_size)
    P = len(gens)
    losses, correct = [], 0
    for start, stop in bounds:
        idx = rows[:, start:stop]
        x = flat.index_select(0, idx.reshape(-1)).view(P, stop - start, -1)     # (P, B, d)
        y = ys[:, start:stop]                                                   # (P, B)
        step = getattr(logits_fn, "step", None)
        if step is not None:        # the model's hand-written forward and backward
            point_losses, logits = step(x, y)
        else:
            logits = logits_fn(x)                                               # (P, B, C)
            point_losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y).mean(1)
            opt.zero_grad(set_to_none=True)
            point_losses.sum().backward()   # the points share no parameter: each gets its own loss's gradient
        opt.step()
        losses.append(point_losses.detach())
        if last:
            correct = correct + (logits.detach().argmax(-1) == y).sum(1)
    seen = max(sum(stop - start for start, stop in bounds), 1)
    per_point = torch.stack(losses).t() if losses else torch.zeros(P, 0)
    correct = correct.tolist() if isinstance(correct, torch.Tensor) else [0] * P
    for p, h in enumerate(histories):
        h["steps"] += len(bounds)
        h["loss"].append(epoch_loss(list(per_point[p]), bounds))
        if last:
            h["train_acc"] = int(correct[p]) / seen
