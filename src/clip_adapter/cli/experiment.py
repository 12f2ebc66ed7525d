"""``clip-adapter experiment CONFIG.yaml``: a datasets x shots x seeds x methods grid, resumable."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..io import plural
from ..results import LOCK_TIMEOUT_ENV

LOCAL = "local"  # --ray without an address

def register(sub) -> None:
    """``experiment``."""
    p = sub.add_parser("experiment", help="run a datasets x shots x seeds x methods grid from a YAML config.",
                       description="Run the few-shot protocol over every dataset, shot count, seed and method of "
                                   "a YAML config (hyper-parameters chosen on val), then write tables and figures. "
                                   "Rerunning the same command resumes: finished runs are skipped.")
    p.add_argument("config", metavar="CONFIG.yaml", help="experiment config (see configs/*.yaml).")
    p.add_argument("--output", default=None, help="results folder (default: the config's 'output').")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: the config's 'cache_dir').")
    p.add_argument("--device", default=None, help="torch device, overriding the config's backbone.device.")
    p.add_argument("--dry-run", action="store_true", help="validate the config and count runs done/left; run none.")
    p.add_argument("--no-report", action="store_true", help="skip the tables and figures at the end.")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars.")
    p.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                   help="run on Ray: without ADDRESS a local cluster on this machine, 'auto' the running cluster "
                        "(ray start), or host:port (overrides the config's executor).")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="run only every N-th planned run, from the i-th (0-based): one of N jobs sharing the output "
                        "folder, e.g. a Slurm array task (then 'clip-adapter report OUTPUT').")
    p.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up waiting for a run's lock held by another process after SECONDS (default: wait, "
                        "naming the lock and its holder's pid every 30 s; also $CLIP_ADAPTER_LOCK_TIMEOUT).")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args) -> int:
    from ..distributed import require_ray      # torch-heavy imports wait until the command runs
    from ..experiment import load_config, run_experiment
    if args.lock_timeout is not None:  # read by every lock wait, here and in Ray workers
        os.environ[LOCK_TIMEOUT_ENV] = str(args.lock_timeout)
    config = load_config(args.config, output=args.output, cache_dir=args.cache_dir)
    if args.device:
        config = config.replace(backbone={**config.to_raw()["backbone"], "device": args.device})
    if args.ray is not None:
        if args.shard:
            raise ValueError("--ray and --shard are two ways to share the work; give one.")
        ray = config.to_raw().get("executor", {}).get("ray", {})
        config = config.replace(executor={"ray": {**ray, "address": None if args.ray == LOCAL else args.ray}})
        require_ray()  # a one-line error now, not after loading the datasets
    try:
        result = run_experiment(config, progress=not args.no_progress, report=False if args.no_report else None,
                                dry_run=args.dry_run, shard=args.shard)
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are kept in {config.output}. Rerun the same command to resume.",
              file=sys.stderr)
        return 130
    if args.dry_run:
        print(f"{config.name}: {plural(result.planned, 'run')}, {result.skipped} done, "
              f"{result.planned - result.skipped} to go "
              f"-> {config.output}")
        if result.size is not None:
            print(f"plan: {result.size.line()}")
        return 0
    if result.report.get("markdown"):
        print(Path(result.report["markdown"]).read_text())
    print(f"{plural(result.ran, 'run')} ran, {result.skipped} {'was' if result.skipped == 1 else 'were'} already "
          f"done, {result.seconds:.0f} s; "
          f"results in {config.output}")
    if args.shard:
        print(f"shard {args.shard} done; once every shard is, build the tables: clip-adapter report {config.output}")
    return 0
