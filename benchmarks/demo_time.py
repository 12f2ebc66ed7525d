"""The first-hour numbers: wall time of ``clip-adapter demo`` with an empty feature cache (a new user's first run)
and with a warm one, each in a fresh process exactly as a user types it.

    python benchmarks/demo_time.py                 # writes benchmarks/results/demo_time.json

The empty-cache run starts from a new ``CLIP_ADAPTER_CACHE`` folder, so it also fits the lite alignment map, as on a
new machine. The load average before and after each run is recorded: on a shared machine it moves the times.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import Result, loadavg, parser, setup


def _demo(cache: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "CLIP_ADAPTER_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "clip_adapter.cli", "demo", "--output", str(out), "--no-progress", *extra]
    before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({proc.returncode}): {proc.stderr[-2000:]}")
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    return {"seconds": round(seconds, 1), "loadavg_before": before, "loadavg_after": loadavg(),
            "expected_line": first, "table": proc.stdout}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--views", type=int, default=None, help="--views passed to the demo (default: the demo's)")
    args = p.parse_args()
    setup(args)
    extra = ["--views", str(args.views)] if args.views is not None else []
    if args.quick:
        extra += ["--shots", "1"]
    res = Result("demo_time", args, {"demo_args": extra})
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        res.record["results"]["empty_cache"] = _demo(cache, Path(tmp) / "out1", extra)
        res.record["results"]["warm_cache"] = _demo(cache, Path(tmp) / "out2", extra)
    res.write()
    for k, v in res.record["results"].items():
        print(f"{k}: {v['seconds']} s (load {v['loadavg_before']} -> {v['loadavg_after']})")


if __name__ == "__main__":
    main()
