"""``--method auto``: choose among the toolkit's methods on the validation split, within a time budget.

Each candidate method runs its own validation search on the run's few-shot train/val sets (exactly what
:func:`~clip_adapter.protocol.run_one` would do, but the test split is never touched); the method with the highest
validation accuracy wins, ties going to the cheaper one (earlier in :data:`AUTO_ORDER`). The winner is then run once
more by :func:`~clip_adapter.protocol.run_one` with its chosen hyper-parameters fixed, which scores the test split
once. The record keeps why: every candidate's validation accuracy, chosen values and seconds, the methods skipped
for the budget, and the rule that chose.

Candidates are the registered methods that work on cached features (methods that back-propagate through the
encoders, like CoOp or CLIP-LoRA, are not auto candidates), cheapest first, so a small budget still tries the
training-free ones.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from .datasets.types import Dataset
from .features import FeatureCache
from .methods import get_method_class, list_methods
from .prompts import encode_class_texts
from .protocol import RunSpec, run_one, select_on_val

__all__ = ["AUTO_ORDER", "auto_candidates", "run_auto", "DEFAULT_BUDGET_SECONDS"]

log = logging.getLogger(__name__)

# Cheapest first: training-free, then convex/closed-form, then trained on cached features. Names not registered in
# this installation are skipped.
AUTO_ORDER = ("zero_shot", "tip_adapter", "gda", "proker", "linear_probe", "lp_pp", "zs_lp", "clap", "taskres",
              "clip_adapter", "tip_adapter_f")
DEFAULT_BUDGET_SECONDS = 600.0
RULE = "highest validation accuracy; ties go to the cheaper method (earlier in clip_adapter.auto.AUTO_ORDER)"


def auto_candidates() -> list[str]:
    """The registered methods ``--method auto`` tries, cheapest first."""
    registered = set(list_methods())
    return [m for m in AUTO_ORDER if m in registered and not getattr(get_method_class(m), "needs_backbone", False)]


def run_auto(dataset: Dataset, backbone, spec: RunSpec, cache: FeatureCache | None = None,
             output: str | Path | None = None, save_model: str | Path | None = None, overwrite: bool = False,
             budget_seconds: float = DEFAULT_BUDGET_SECONDS, candidates: Sequence[str] | None = None) -> dict:
    """Pick the method with the best validation accuracy (within ``budget_seconds``), then run it once.

    ``spec.method`` is ignored (it is ``"auto"``); its shots, seed, views and sampling are every candidate's. The
    record is the winner's, written under the variant ``auto`` (``<output>/<dataset>/auto/...``), with an ``auto``
    field saying which methods were tried, their validation accuracies and why the winner won.
    """
    names = list(candidates) if candidates is not None else auto_candidates()
    for name in names:
        get_method_class(name)  # a one-line error for an unknown name, before any work
    if not names:
        raise ValueError("--method auto has no candidate methods to try.")
    if budget_seconds <= 0:
        raise ValueError(f"The auto time budget must be > 0 seconds. Got {budget_seconds!r} instead.")
    cache = cache or FeatureCache(backbone)
    text = encode_class_texts(backbone, dataset.classnames, spec.templates or dataset.templates)
    t0 = time.perf_counter()
    tried: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name in names:
        if tried and time.perf_counter() - t0 >= budget_seconds:
            skipped.append(name)
            continue
        cand = RunSpec(name, shots=spec.shots, seed=spec.seed, n_views=spec.n_views, repeat_shots=spec.repeat_shots,
                       templates=spec.templates, train_items=spec.train_items, val_items=spec.val_items,
                       device=spec.device)
        t = time.perf_counter()
        sel, val_accuracy = select_on_val(dataset, backbone, cand, cache, text)
        tried.append({"method": name, "val_accuracy": val_accuracy, "chosen": sel.chosen,
                      "seconds": round(time.perf_counter() - t, 3)})
        log.info("auto: %s val accuracy %.4f (%s)", name, val_accuracy, sel.chosen or "-")
    best = max(tried, key=lambda c: c["val_accuracy"])  # max keeps the first (cheapest) of equal values
    log.info("auto: chose %s (val accuracy %.4f of %d methods tried)", best["method"], best["val_accuracy"], len(tried))
    final = RunSpec(best["method"], shots=spec.shots, seed=spec.seed, overrides=dict(best["chosen"]), grid={},
                    n_views=spec.n_views, repeat_shots=spec.repeat_shots, templates=spec.templates,
                    train_items=spec.train_items, val_items=spec.val_items, variant="auto", device=spec.device)
    auto = {"chosen_method": best["method"], "rule": RULE, "budget_seconds": budget_seconds, "tried": tried,
            "skipped_for_budget": skipped, "search_seconds": round(time.perf_counter() - t0, 3)}
    return run_one(dataset, backbone, final, cache=cache, output=output, save_model=save_model, text=text,
                   extra={"auto": auto}, overwrite=overwrite)
