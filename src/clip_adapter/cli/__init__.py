"""Command line: argparse and printing only, one module per command, over the Python API (nothing below imports it).

    clip-adapter demo                                   # offline demo on the shipped dataset
    clip-adapter run --data DIR --method clip_adapter --shots 16 --seed 1
    clip-adapter experiment CONFIG.yaml | report OUTDIR
    clip-adapter predict MODEL_DIR IMAGES... | evaluate MODEL_DIR --data DIR | export MODEL_DIR --onnx FILE
    clip-adapter datasets list | download NAME | verify NAME
    clip-adapter methods | backbones
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import datasets, demo, experiment, export, info, predict, report, run
from .common import Parser

__all__ = ["main", "build_parser"]

log = logging.getLogger("clip_adapter")

COMMANDS = (run, demo, experiment, report, predict, export, datasets, info)  # each has register(subparsers)


VERBOSE_HELP = "-v: debug messages of clip-adapter; -vv: also of the libraries below it, and tracebacks of errors."
NOISY = ("httpx", "urllib3", "sentence_transformers", "timm", "root", "huggingface_hub", "PIL", "filelock", "fsspec")


def build_parser() -> Parser:
    parser = Parser(prog="clip-adapter", description="Few-shot adaptation of frozen CLIP models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    _verbose_everywhere(sub)
    return parser


def _verbose_everywhere(sub: argparse._SubParsersAction) -> None:
    """``-v``/``-vv`` after the subcommand too (``clip-adapter run ... -vv``): every (sub)command parser counts it
    into its own attribute, added to the top-level count in :func:`main` (absent unless given, so that a nested
    command's parser does not reset what its parent counted)."""
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", dest="verbose_after", action="count", default=argparse.SUPPRESS,
                       help=VERBOSE_HELP)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_everywhere(action)


def setup_logging(verbose: int) -> None:
    """Default: INFO of clip-adapter (progress lines), WARNING of the libraries; -v: DEBUG of clip-adapter;
    -vv: DEBUG of everything."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if verbose >= 2:
        logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("clip_adapter").setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose += getattr(args, "verbose_after", 0)
    setup_logging(args.verbose)
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


MAX_ERROR_CHARS = 2000   # an error line never prints more (a huge value in a message is cut, not printed)


def _one_line(e: BaseException) -> str:
    """Our errors are one line already; anything else (a bug) is named by its type, with how to see more."""
    text = " ".join(str(e)[:4 * MAX_ERROR_CHARS].split()) or type(e).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]}... ({len(str(e)) - MAX_ERROR_CHARS:,} more characters)"
    if isinstance(e, (ValueError, FileNotFoundError, OSError, RuntimeError)):
        return text
    return f"{type(e).__name__}: {text} (an unexpected error; rerun with -vv for the traceback and report it)"
