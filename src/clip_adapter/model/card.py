"""The model card (``README.md``) of a saved model: what it is, what it was trained on, how well it did."""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["model_card"]

MAX_CLASSES_SHOWN = 20


def model_card(method: str, backbone_id: str, classes: Sequence[str], templates: Sequence[str],
               facts: dict[str, Any]) -> str:
    """Markdown card. ``facts`` may hold ``dataset``, ``shots``, ``seed``, ``chosen``, ``val_accuracy``,
    ``test_accuracy``, ``macro_f1`` and ``n_test`` (a run's record provides them all); missing ones are said so."""
    more = ", ..." if len(classes) > MAX_CLASSES_SHOWN else ""
    shots = facts.get("shots", "not recorded")
    seed = f", seed {facts['seed']}" if facts.get("seed") is not None else ""
    lines = [f"# {method} on {facts.get('dataset', 'unknown data')}", "",
             f"- backbone: `{backbone_id}`",
             f"- classes ({len(classes)}): {', '.join(classes[:MAX_CLASSES_SHOWN])}{more}",
             f"- shots per class: {shots}{seed}"]
    if "chosen" in facts:
        val = _num(facts.get("val_accuracy"))
        lines.append(f"- chosen on validation: `{facts['chosen']}` (val accuracy {val})")
    acc = facts.get("test_accuracy")
    test = f"{_num(acc)}" if isinstance(acc, (int, float)) else "not measured"
    if isinstance(acc, (int, float)) and "macro_f1" in facts:
        test += f", macro-F1 {_num(facts['macro_f1'])} ({facts.get('n_test', '?')} images)"
    lines += [f"- test accuracy: {test}", f"- templates: {list(templates)}", "",
              "Load with `clip_adapter.AdaptedClassifier.from_pretrained(dir)` or "
              "`clip-adapter predict DIR IMAGES...`.", ""]
    return "\n".join(lines)


def _num(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "n/a"
