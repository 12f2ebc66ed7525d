"""``clip-adapter report OUTDIR`` (or ``--into DIR A B ...``): tables and figures from result files."""
from __future__ import annotations

import sys
from pathlib import Path



def register(sub) -> None:
    """``report``."""
    p = sub.add_parser("report", help="rebuild tables and figures from an experiment's result files.",
                       description="Read OUTDIR/<dataset>/<method>/shots<K>-seed<S>.json and write summary.md, "
                                   "summary.csv, figures/*.png (and ablation.* when present); rebuild runs.jsonl. "
                                   "With --into DIR, merge several OUTDIRs into one report in DIR.")
    p.add_argument("outdir", metavar="OUTDIR", nargs="+", help="the experiment's output folder (several with --into).")
    p.add_argument("--into", metavar="DIR", default=None,
                   help="merge the OUTDIRs' runs into one report written to DIR (the same run twice is an error).")
    p.add_argument("--no-figures", action="store_true", help="tables only.")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..report import build_report     # torch-heavy: only when the command runs
    if len(args.outdir) > 1 and not args.into:
        raise SystemExit(f"report: {len(args.outdir)} folders given; merge them with --into DIR "
                         f"(one folder is reported in place).")
    if args.into:
        paths = build_report(args.into, figures=not args.no_figures, inputs=args.outdir)
    else:
        paths = build_report(args.outdir[0], figures=not args.no_figures)
    for key in ("markdown", "ablation_markdown"):
        if paths.get(key):
            print(Path(paths[key]).read_text())
    written = [paths.get(k) for k in ("markdown", "csv", "ablation_markdown", "ablation_csv", "runs")]
    print("wrote: " + ", ".join([p for p in written if p] + paths["figures"]), file=sys.stderr)
    return 0
