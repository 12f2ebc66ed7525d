"""The grid search stacked vs one fit at a time: CLIP-Adapter's 4-point alpha search, and 3 seeds of one config.

Times, on features of lite's shape (1280-d, dtd10 at 16 shots: 10 classes x 16 images, 2 cached views; speed does
not depend on the values): one fit; the 4 alphas one after another (``ClipAdapter.fit_many(stack=False)``, what
``select`` did before); the 4 alphas as one stacked model (``stack=True``); 3 seeds both ways; and 3 seeds each
on its own data (an experiment's seeds: ``batch_seeds``, ``ClipAdapter.fit_many_data``) both ways. Every stacked
model is checked against its sequential twin (max |logit difference|). Fits run interleaved, ``--rounds`` times;
medians are reported (a shared machine's load moves between minutes).

    python benchmarks/batched_search.py --threads 1
    python benchmarks/batched_search.py --device cuda        # the GPU, where stacking is the default
"""
from __future__ import annotations

import statistics
import time

import torch

import _util
from clip_adapter.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
from clip_adapter.prompts import ClassText

log = _util.log


def _problem(classes: int, shots: int, dim: int, views: int):
    g = torch.Generator().manual_seed(0)
    text = ClassText(classnames=[f"c{i}" for i in range(classes)], templates=["{}"],
                     features=torch.randn(classes, dim, generator=g), logit_scale=100.0)
    labels = torch.arange(classes * shots) % classes
    feats = (text.features[labels] + torch.randn(len(labels), dim, generator=g)).relu()
    return text, feats, labels, feats + 0.2 * torch.randn(views, *feats.shape, generator=g)


def main() -> None:
    p = _util.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--dim", type=int, default=1280)
    args = p.parse_args()
    _util.setup(args)
    if args.quick:
        args.epochs, args.rounds = 5, 1
    res = _util.Result("batched_search", args, {k: getattr(args, k) for k in ("epochs", "rounds", "classes", "shots",
                                                                               "dim")})
    text, feats, labels, views = _problem(args.classes, args.shots, args.dim, 2)
    base = ClipAdapterConfig(epochs=args.epochs, device=args.device)
    alphas = [base.__class__(**{**base.to_dict(), "alpha": a}) for a in (0.2, 0.4, 0.6, 0.8)]
    seeds = [base.__class__(**{**base.to_dict(), "seed": s}) for s in (1, 2, 3)]

    def fit(configs, stack):
        t0 = time.perf_counter()
        models = ClipAdapter.fit_many(configs, feats, labels, text=text, views=views, stack=stack)
        _util.sync(args.device)
        return time.perf_counter() - t0, models

    g = torch.Generator().manual_seed(1)
    data = [(feats, labels, views)] + [((feats + 0.3 * torch.randn(feats.shape, generator=g)).relu(), labels,
                                        (views + 0.3 * torch.randn(views.shape, generator=g)).relu()) for _ in (2, 3)]

    def fit_data(configs, stack):
        t0 = time.perf_counter()
        if stack:
            models = ClipAdapter.fit_many_data(configs, [d[0] for d in data], [d[1] for d in data], text=text,
                                               views=[d[2] for d in data])
        else:
            models = [ClipAdapter(c).fit(f, y, text=text, views=v) for c, (f, y, v) in zip(configs, data)]
        _util.sync(args.device)
        return time.perf_counter() - t0, models

    cases = {"one fit": lambda: fit(alphas[:1], False),
             "4 alphas one by one": lambda: fit(alphas, False), "4 alphas stacked": lambda: fit(alphas, True),
             "3 seeds one by one": lambda: fit(seeds, False), "3 seeds stacked": lambda: fit(seeds, True),
             "3 seeds own data one by one": lambda: fit_data(seeds, False),
             "3 seeds own data stacked": lambda: fit_data(seeds, True)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    models: dict[str, list] = {}
    for _ in range(args.rounds):
        for k, run in cases.items():
            t, models[k] = run()
            times[k].append(t)
            log.info("%-22s %.2fs", k, t)
    one = statistics.median(times["one fit"])
    for k, ts in times.items():
        res.record["results"][k] = {"seconds_median": round(statistics.median(ts), 3),
                                    "seconds": [round(t, 3) for t in ts],
                                    "x_one_fit": round(statistics.median(ts) / one, 2)}
    for what in ("4 alphas", "3 seeds", "3 seeds own data"):
        diff = max(float((a.logits(feats) - b.logits(feats)).abs().max())
                   for a, b in zip(models[f"{what} one by one"], models[f"{what} stacked"]))
        res.record["results"][f"{what} stacked"]["max_abs_logit_diff_vs_one_by_one"] = diff
    res.write()


if __name__ == "__main__":
    main()
