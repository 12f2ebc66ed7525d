"""Start-up cost of the command line and of ``import clip_adapter``: wall and CPU seconds of fresh interpreters.

Each case runs ``--repeat`` times in a new ``python`` process (the ``clip-adapter`` console script is ``python -c
"from clip_adapter.cli import main; main()"``; a pyenv shim in front of it would add its own seconds). Wall time on a
shared, loaded machine is mostly waiting for a core, so the CPU time (user + sys of the child) is recorded too, and
the heavy modules each case imported. ``--src`` compares trees (e.g. ``--src /work/main/src`` for "before").

    python benchmarks/startup.py --src src --name startup_after
    python benchmarks/startup.py --src ../main/src --name startup_before
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _util

CASES = {
    "clip-adapter --help": ["--help"],
    "clip-adapter run --help": ["run", "--help"],
    "clip-adapter datasets list": ["datasets", "list"],
    "clip-adapter run --shots x (bad flag)": ["run", "--shots", "x"],
}
HEAVY = ("torch", "open_clip", "timm", "sentence_transformers", "sklearn", "ray")


def _probe(body: str) -> str:
    return (f"import sys, json, contextlib, io\n{body}\n"
            f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}), file=sys.__stderr__)")


def _cli(argv: list[str]) -> str:
    return _probe("from clip_adapter.cli import main\n"
                  "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
                  f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass")


def time_case(code: str, src: str, repeat: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "HF_HUB_OFFLINE": "1"}
    walls, cpus, loaded = [], [], {}
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        loaded = json.loads(out.stderr.strip().splitlines()[-1])
    return {"wall_s_median": round(statistics.median(walls), 3), "wall_s": [round(w, 3) for w in walls],
            "cpu_s_median": round(statistics.median(cpus), 3), "heavy_modules_imported": [m for m, v in loaded.items() if v]}


def main() -> None:
    p = _util.parser(__doc__.splitlines()[0])
    p.add_argument("--src", default=str(_util.REPO / "src"), help="the source tree to time (PYTHONPATH)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--name", default="startup")
    args = p.parse_args()
    _util.setup(args)
    res = _util.Result(args.name, args, {"src": args.src, "repeat": args.repeat, "python": sys.version.split()[0]})
    cases = {name: _cli(argv) for name, argv in CASES.items()}
    cases["import clip_adapter"] = _probe("import clip_adapter")
    cases["import clip_adapter + every public name"] = _probe(
        "import clip_adapter as ca\nfor n in ca.__all__: getattr(ca, n)")
    for name, code in cases.items():
        res.record["results"][name] = r = time_case(code, args.src, args.repeat)
        _util.log.info("%-42s wall %.2fs cpu %.2fs heavy %s", name, r["wall_s_median"], r["cpu_s_median"],
                       r["heavy_modules_imported"])
    res.write()


if __name__ == "__main__":
    main()
