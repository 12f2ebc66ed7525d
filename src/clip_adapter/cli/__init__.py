"""Command line: argparse and printing only, one module per command, over the Python API (nothing below imports it).

    clip-adapter demo                                   # offline demo on the shipped dataset
    clip-adapter run --data DIR --method clip_adapter --shots 16 --seed 1
    clip-adapter experiment CONFIG.yaml | report OUTDIR
    clip-adapter predict MODEL_DIR IMAGES... | evaluate MODEL_DIR --data DIR | export MODEL_DIR --onnx FILE
    clip-adapter datasets list | download NAME | verify NAME
    clip-adapter methods | backbones
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from . import datasets, demo, experiment, export, info, predict, report, run
from .common import Parser

__all__ = ["main", "build_parser"]

log = logging.getLogger("clip_adapter")

COMMANDS = (run, demo, experiment, report, predict, export, datasets, info)  # each has register(subparsers)


def build_parser() -> Parser:
    parser = Parser(prog="clip-adapter", description="Few-shot adaptation of frozen CLIP models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "timm", "root", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error ends as one line; -vv shows the traceback
        if args.verbose >= 2:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    """Our errors are one line already; anything else (a bug) is named by its type, with how to see more."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (ValueError, FileNotFoundError, OSError, RuntimeError)):
        return text
    return f"{type(e).__name__}: {text} (an unexpected error; rerun with -vv for the traceback and report it)"
