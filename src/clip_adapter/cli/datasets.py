"""``clip-adapter datasets list | download | verify``: the 11 benchmark datasets under a data root."""
from __future__ import annotations

import argparse
import json
import sys

from ..datasets import REGISTRY, DownloadError, download, get_info, list_datasets, resolve_root, verify
from ..datasets.catalog import DATA_ENV
from .common import count


def register(subparsers) -> None:
    """``datasets list|download|verify``."""
    p = subparsers.add_parser("datasets", help="list, download and verify the 11 benchmark datasets.",
                              description="The 11 CoOp/CLIP-Adapter benchmark datasets under a data root "
                                          f"(--root, else ${DATA_ENV}, else ~/data).")
    dsub = p.add_subparsers(dest="datasets_command", metavar="{list,download,verify}")
    q = dsub.add_parser("list", help="names, classes, split sizes and whether each is present.")
    q.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or ~/data).")
    q.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table).")
    q = dsub.add_parser("download", help="fetch, check and unpack datasets; prints the manual steps left.")
    q.add_argument("names", nargs="+", metavar="NAME", help=f"dataset name(s) or 'all': {', '.join(REGISTRY)}.")
    q.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or ~/data).")
    q.add_argument("--from", dest="sources_dir", default=None,
                   help="folder of files you already have (archives, split_zhou_*.json); used before the network.")
    q.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extraction.")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    q = dsub.add_parser("verify", help="check every image of every split exists and opens; counts match.")
    q.add_argument("name", metavar="NAME", help="dataset name, or a dataset folder / CSV path.")
    q.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or ~/data).")
    q.add_argument("--full", action="store_true", help="fully decode each image (slower; finds truncated files).")
    q.add_argument("--workers", type=count(1), default=None,
                   help="image-decoding workers (threads here; default: up to 8).")
    q.add_argument("--format", choices=("table", "json", "text"), default="table",
                   help="output format: table (a report per dataset; 'text' is an old name for it) or json "
                        "(default: table).")
    q.add_argument("--allow-outside-paths", action="store_true",
                   help="let split-file/CSV entries point outside the dataset folder (absolute paths, '..'); refused "
                        "by default.")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    p.set_defaults(func=_cmd_datasets, _datasets_parser=p)


def _cmd_datasets(args: argparse.Namespace) -> int:
    cmd = getattr(args, "datasets_command", None)
    if cmd == "list":
        return _cmd_list(args)
    if cmd == "download":
        return _cmd_download(args)
    if cmd == "verify":
        return _cmd_verify(args)
    args._datasets_parser.print_help()
    return 2


def _cmd_list(args: argparse.Namespace) -> int:
    rows = list_datasets(args.root)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("name", "classes", "train", "val", "test", "download", "present")
    table = [cols] + [tuple(str("yes" if r[c] is True else "no" if r[c] is False else r[c]) for c in cols)
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.rjust(w) if v.isdigit() else v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"root: {resolve_root(args.root)}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    names = list(REGISTRY) if [n.lower() for n in args.names] == ["all"] else args.names
    infos = [get_info(n) for n in names]  # fail on a typo before downloading anything
    root = resolve_root(args.root)
    incomplete = 0
    for info in infos:
        try:
            result = download(info, root, sources_dir=args.sources_dir, keep_archives=args.keep_archives,
                              progress=not args.no_progress)
        except DownloadError as e:  # e.g. a checksum mismatch: report it, go on with the other datasets
            print(f"{info.name}: error: {e}", file=sys.stderr)
            incomplete += 1
            continue
        if result.complete:
            print(f"{info.name}: ready in {result.dataset_dir}")
            continue
        incomplete += 1
        print(f"{info.name}: not complete in {result.dataset_dir}; steps left:")
        for i, step in enumerate(result.manual, 1):
            print(f"  {i}. {step}")
    if incomplete:
        print(f"{incomplete} of {len(infos)} dataset(s) are not ready: do the steps above or fix the errors, then "
              f"rerun the same command.", file=sys.stderr)
        return 1
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    report = verify(args.name, args.root, full=args.full, workers=args.workers, progress=not args.no_progress,
                    allow_outside_paths=args.allow_outside_paths)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
