"""``clip-adapter report OUTDIR`` (or ``--into DIR A B ...``): tables and figures from result files."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..results import LOCK_TIMEOUT_ENV


def register(sub) -> None:
    """``report``."""
    p = sub.add_parser("report", help="rebuild tables and figures from an experiment's result files.",
                       description="Read OUTDIR/<dataset>/<method>/shots<K>-seed<S>.json and write summary.md, "
                                   "summary.csv, figures/*.png (and ablation.*, base_to_new.*, transfer.* when present); "
                                   "rebuild runs.jsonl. "
                                   "With --into DIR, merge several OUTDIRs into one report in DIR.")
    p.add_argument("outdir", metavar="OUTDIR", nargs="+", help="the experiment's output folder (several with --into).")
    p.add_argument("--into", metavar="DIR", default=None,
                   help="merge the OUTDIRs' runs into one report written to DIR (the same run twice is an error).")
    p.add_argument("--no-figures", action="store_true", help="tables only.")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: one self-contained page with the tables and figures.")
    p.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up waiting for the runs.jsonl lock held by another process after SECONDS (default: wait, "
                        "naming the lock and its holder's pid every 30 s; also $CLIP_ADAPTER_LOCK_TIMEOUT).")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..report import build_report     # torch-heavy: only when the command runs
    if args.lock_timeout is not None:  # read by every lock wait, here and in Ray workers
        os.environ[LOCK_TIMEOUT_ENV] = str(args.lock_timeout)
    if len(args.outdir) > 1 and not args.into:
        raise SystemExit(f"report: {len(args.outdir)} folders given; merge them with --into DIR "
                         f"(one folder is reported in place).")
    if args.into:
        paths = build_report(args.into, figures=not args.no_figures, inputs=args.outdir, html=args.html)
    else:
        paths = build_report(args.outdir[0], figures=not args.no_figures, html=args.html)
    for key in ("markdown", "ablation_markdown", "base_to_new_markdown", "transfer_markdown"):
        if paths.get(key):
            print(Path(paths[key]).read_text())
    written = [paths.get(k) for k in ("markdown", "csv", "ablation_markdown", "ablation_csv", "base_to_new_markdown",
                                      "base_to_new_csv", "transfer_markdown", "transfer_csv", "runs", "html")]
    print("wrote: " + ", ".join([p for p in written if p] + paths["figures"]), file=sys.stderr)
    return 0
