"""``clip-adapter methods`` and ``clip-adapter backbones``: what can be used."""
from __future__ import annotations

import argparse
import json



def register(sub) -> None:
    p = sub.add_parser("methods", help="list the few-shot methods.")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("backbones", help="list backbone names.")
    p.set_defaults(func=cmd_backbones)


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import get_method_class, list_methods      # torch-heavy: only when the command runs
    from ..report import format_table
    rows = []
    for name in list_methods():
        cls = get_method_class(name)
        rows.append({"method": name, "trains": cls.trains, "searched on val": json.dumps(cls.default_grid) or "-",
                     "summary": (cls.__doc__ or "").strip().splitlines()[0]})
    print(format_table(rows, list(rows[0])))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from ..backbones import list_backbones
    print("\n".join(list_backbones()))
    return 0
