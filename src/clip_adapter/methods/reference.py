"""The method config reference, generated from the field declarations of every registered method's config.

Two files come from here and tests keep both equal to what this module generates:

* ``docs/method-config.md`` (:func:`reference_markdown`): per method, every field with its type, default, what it
  accepts and what it means, and the grid searched on validation by default, by the same table code as
  ``docs/experiment-config.md`` (:func:`clip_adapter.config.settings_table`);
* ``src/clip_adapter/cli/method_flags.py`` (:func:`flags_module`): the same fields as a plain table, which
  ``clip-adapter run`` turns into its method-config flags (``--alpha``, ``--lr``, ...). The methods import torch;
  the table lets ``run --help`` list their fields without it.

Regenerate both after changing a method's config::

    python -m clip_adapter.methods.reference
"""
from __future__ import annotations

import pprint
from pathlib import Path
from typing import Any

from ..config import Options, settings_table, value_kind
from .base import FewShotMethod, get_method_class, list_methods

__all__ = ["reference_markdown", "field_table", "flags_module", "write_references", "DOC_PATH", "FLAGS_PATH"]

_ROOT = Path(__file__).resolve().parents[3]
DOC_PATH = _ROOT / "docs" / "method-config.md"
FLAGS_PATH = Path(__file__).resolve().parents[1] / "cli" / "method_flags.py"
_KINDS = ("int", "float", "bool", "str")


def _grid_line(grid: dict[str, list]) -> str:
    if not grid:
        return "Searched on validation by default: nothing (the values above are used)."
    def values(v: list) -> str:   # a long grid by its size and ends (the full list is the method's default_grid)
        return str(list(v)) if len(v) <= 13 else f"{len(v)} values from {v[0]} to {v[-1]}"
    return "Searched on validation by default: " + "; ".join(f"`{k}` in {values(v)}" for k, v in grid.items()) + "."


def reference_markdown() -> str:
    """``docs/method-config.md``: every registered method's config fields and default grid."""
    out = ["# Method config reference", "",
           "Generated from the field declarations (`setting(...)`) of each registered method's config in "
           "`src/clip_adapter/methods/` (a test keeps this file equal to "
           "`clip_adapter.methods.reference.reference_markdown()`; regenerate it with "
           "`python -m clip_adapter.methods.reference`).", "",
           "Set a field with its own flag or `--set KEY=VALUE` on `clip-adapter run`, with `overrides:` in an "
           "experiment config, or in Python with `get_method(name, KEY=VALUE)` / `config.replace(KEY=VALUE)`; "
           "`--grid KEY=V1,V2` (`grid:` in an experiment) searches values on validation instead. Every value is "
           "checked when the config is built: a bad one is a one-line error naming the field, the value and what "
           "it accepts.", ""]
    for name in list_methods():
        cls = get_method_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out += [f"## `{name}` (`{cls.config_cls.__name__}`)", "", *([summary, ""] if summary else []),
                *settings_table(cls.config_cls.settings(), head="field", types=True), "",
                _grid_line(cls.default_grid) + (" Then a finer search around the first choice (`refine_grid`)."
                                                if cls.refine_grid.__func__ is not FewShotMethod.refine_grid.__func__
                                                else ""), ""]
    return "\n".join(out)


def _kind(type_text: str) -> tuple[str, bool]:
    """``"int | None"`` -> ``("int", True)``; a field of another type cannot be a flag (a one-line error)."""
    kind, optional = value_kind(type_text)
    if kind is None:
        raise ValueError(f"A method config field of type {type_text!r}: a command-line flag needs one of "
                         f"{', '.join(_KINDS)} (optionally '| None').")
    return kind, optional


def field_table() -> dict[str, dict[str, Any]]:
    """Every field of every registered method's config, by name: its kind (int, float, bool, str), whether it
    may be None, its choices when every method that has it takes the same fixed set, and each method's doc."""
    table: dict[str, dict[str, Any]] = {}
    checks: dict[str, list] = {}
    for method in list_methods():
        for s in get_method_class(method).config_cls.settings():
            kind, optional = _kind(s.type)
            row = table.setdefault(s.name, {"kind": kind, "optional": False, "choices": None, "docs": {}})
            if row["kind"] != kind:
                raise ValueError(f"The config field {s.name!r} is a {row['kind']} in one method and a {kind} in "
                                 f"{method!r}; give it one type (a flag parses one).")
            row["optional"] = row["optional"] or optional
            row["docs"][method] = s.doc
            checks.setdefault(s.name, []).append(s.check)
    for name, row in table.items():
        if all(isinstance(c, Options) and c.values == checks[name][0].values for c in checks[name]):
            row["choices"] = list(checks[name][0].values)
    return dict(sorted(table.items(), key=lambda kv: kv[0].lower()))


def flags_module() -> str:
    """The source of ``clip_adapter/cli/method_flags.py``: :func:`field_table` as a literal."""
    body = pprint.pformat(field_table(), width=116, sort_dicts=False)
    return ('"""Every method config field, torch-free, for `clip-adapter run`\'s method-config flags.\n\n'
            "Generated by clip_adapter.methods.reference.flags_module() from the methods' config declarations "
            "(a test keeps\nit current); do not edit: run `python -m clip_adapter.methods.reference`.\n"
            '"""\n\n'
            f"FIELDS = {body}\n")


def write_references() -> list[Path]:
    """Write ``docs/method-config.md`` and ``cli/method_flags.py`` of this source tree."""
    DOC_PATH.write_text(reference_markdown())
    FLAGS_PATH.write_text(flags_module())
    return [DOC_PATH, FLAGS_PATH]


if __name__ == "__main__":
    for path in write_references():
        print(f"wrote {path}")
