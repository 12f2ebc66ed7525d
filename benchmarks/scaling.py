"""How adapter training cost grows with classes x shots (synthetic cached features, no encoder).

Each cell trains ``ClipAdapter`` (image adapter, reduction 4, SGD, batch 32) for a fixed number of epochs on
synthetic raw features of dimension ``--dim`` with ``--views`` cached views per image, and reports the wall time
per epoch and per step and the peak memory the training adds:

* CPU: resident memory (RSS) sampled every 2 ms during ``fit`` minus RSS just before it, plus the
  ``getrusage`` max-RSS delta; each cell runs in a fresh subprocess so earlier cells' peaks do not hide its own.
* CUDA: ``torch.cuda.max_memory_allocated`` during ``fit`` minus memory allocated before it (this includes the
  copy of the views that ``train_loop`` moves to the device).

    python benchmarks/scaling.py                    # 10/100/1000 classes x 1/4/16 shots, 10 epochs, CPU
    python benchmarks/scaling.py --device cuda
    python benchmarks/scaling.py --methods          # every cached-feature method, one fit each (issue #18)

``--methods`` times one ``fit`` (the method's default config, no search) of every registered method that works on
cached features, on one 100-class, 16-shot, 1024-d problem with 10 views, on one CPU thread, against the 5 s
target of issue #18; it writes ``scaling_methods.json``.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch

import _util

log = _util.log


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    """Highest current RSS seen while running (a thread polling /proc/self/statm)."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_evt = interval, _rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_evt.set()
        self.join()
        self.peak = max(self.peak, _rss_bytes())
        return self.peak


def run_cell(classes: int, shots: int, dim: int, views: int, epochs: int, device: str, seed: int = 0) -> dict:
    from clip_adapter.methods import get_method
    from clip_adapter.prompts import ClassText
    n = classes * shots
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(shots)
    # Filled in place: no temporary copy inflates the peak before fit starts.
    view_feats = torch.empty(views, n, dim)
    view_feats.normal_(generator=g).mul_(0.6).add_(centers[labels]).relu_()   # non-negative like pooled features
    feats = view_feats[0].clone()
    text = ClassText([f"c{i}" for i in range(classes)], ["{}"], centers + 0.5 * torch.randn(classes, dim, generator=g))
    m = get_method("clip_adapter", alpha=0.6, epochs=epochs, seed=seed, device=device)
    # Warm-up outside the timing (allocator, kernels, thread pool): one epoch on a slice.
    get_method("clip_adapter", alpha=0.6, epochs=1, seed=seed, device=device).fit(
        feats[:64], labels[:64], text=ClassText(text.classnames, ["{}"], text.features), views=view_feats[:, :64])
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    rss0 = _rss_bytes()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = RssSampler()
    sampler.start()
    t = time.perf_counter()
    m.fit(feats, labels, text=text, views=view_feats)
    _util.sync(device)
    seconds = time.perf_counter() - t
    peak_rss = sampler.stop()
    out = {
        "classes": classes, "shots": shots, "n_train": n, "dim": dim, "views": views, "epochs": epochs,
        "steps": m.history_["steps"], "seconds": round(seconds, 4), "seconds_per_epoch": round(seconds / epochs, 5),
        "ms_per_step": round(1e3 * seconds / max(1, m.history_["steps"]), 4),
        "views_tensor_mib": round(view_feats.numel() * 4 / 2 ** 20, 2),
        "trainable_parameters": m.num_trainable_parameters(),
        "cpu_rss_before_mib": round(rss0 / 2 ** 20, 1),
        "cpu_peak_rss_delta_mib": round((peak_rss - rss0) / 2 ** 20, 2),
        "cpu_maxrss_delta_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - maxrss0) / 2 ** 20, 2),
        "final_train_accuracy": round(m.history_["train_acc"], 4),
    }
    if cuda:
        out["gpu_peak_delta_mib"] = round((torch.cuda.max_memory_allocated(device) - before) / 2 ** 20, 2)
    return out


METHODS_TARGET_SECONDS = 5.0


def run_methods(classes: int, shots: int, dim: int, views: int, device: str, seed: int = 0,
                repeats: int = 3) -> list[dict]:
    """The median of ``repeats`` timed fits of every cached-feature method (default config) on a synthetic problem,
    one CPU thread."""
    from clip_adapter.io import torch_threads
    from clip_adapter.methods import get_method, get_method_class, list_methods
    from clip_adapter.methods.proker import _EIGEN as proker_memo
    from clip_adapter.prompts import ClassText
    from threadpoolctl import threadpool_limits   # sklearn's dependency: numpy/scipy BLAS on one thread too
    names = [m for m in list_methods() if not get_method_class(m).needs_backbone
             and getattr(get_method_class(m), "inputs", "features") == "features"]
    n = classes * shots
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(shots)
    view_feats = torch.empty(views, n, dim).normal_(generator=g).mul_(0.6).add_(centers[labels]).relu_()
    feats = view_feats[0].clone()
    text = ClassText([f"c{i}" for i in range(classes)], ["{}"], centers + 0.5 * torch.randn(classes, dim, generator=g))
    test = (centers[labels] + 0.6 * torch.randn(n, dim, generator=g)).relu_()
    rows = []
    with torch_threads(1), threadpool_limits(1):
        # One untimed fit first, so the one-time start-up (BLAS buffers, lazy imports) is not charged to whichever
        # method happens to be timed first; sklearn's import (~1.4 s) is start-up too, not the probe's fit.
        import sklearn.linear_model  # noqa: F401
        small = labels < 10
        get_method("zs_lp", epochs=2).fit(feats[small], labels[small], text=ClassText(text.classnames[:10],
                                          ["{}"], text.features[:10]), views=view_feats[:, small])
        for name in names:
            kw = {"device": device} if "device" in get_method_class(name).config_cls.field_names() else {}
            times = []
            for _ in range(repeats):     # the median of a few fits: one fit on a shared VM is noisy (+-20%)
                proker_memo.clear()      # every fit pays ProKeR's kernel decomposition, as a single run does
                m = get_method(name, **kw)
                t = time.perf_counter()
                m.fit(feats, labels, text=text, views=view_feats)
                _util.sync(device)
                times.append(time.perf_counter() - t)
            seconds = statistics.median(times)
            acc = float((m.predict(test) == labels).float().mean())
            rows.append({"method": name, "fit_seconds": round(seconds, 3), "fit_seconds_each": [round(x, 3) for x in times],
                         "under_target": seconds < METHODS_TARGET_SECONDS,
                         "config": m.config.to_dict(), "trainable_parameters": m.num_trainable_parameters(),
                         "test_accuracy_synthetic": round(acc, 4), "loadavg": _util.loadavg()})
            log.info("%-14s fit %.2f s%s", name, seconds, "" if seconds < METHODS_TARGET_SECONDS else "  (over 5 s)")
    return rows


def main() -> None:
    p = _util.parser(__doc__.split("\n\n")[0])
    p.add_argument("--methods", action="store_true", help="time one fit of every cached-feature method (100 classes "
                   "x 16 shots x --dim x --views unless --classes/--shots give one value each)")
    p.add_argument("--classes", nargs="+", type=int, default=[10, 100, 1000])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--views", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="--methods: fits per method; the median is reported")
    p.add_argument("--in-process", action="store_true", help="no subprocess per cell (memory numbers less clean)")
    p.add_argument("--cell", nargs=2, type=int, metavar=("CLASSES", "SHOTS"), help=argparse_hidden())
    args = p.parse_args()
    if args.quick:
        args.classes, args.shots, args.epochs = [10, 100], [1, 4], 2
    _util.setup(args)
    if args.methods:
        classes = args.classes[0] if len(args.classes) == 1 else 100
        shots = args.shots[0] if len(args.shots) == 1 else 16
        rec = _util.Result("scaling_methods", args, {"classes": classes, "shots": shots, "dim": args.dim,
                                                     "views": args.views, "threads": 1, "repeats": args.repeats,
                                                     "target_seconds": METHODS_TARGET_SECONDS,
                                                     "features": "synthetic, N(class centre, 0.6^2) then ReLU"})
        rec.record["results"] = {"methods": run_methods(classes, shots, args.dim, args.views, args.device,
                                                               repeats=args.repeats)}
        rec.write()
        return
    if args.cell:   # child mode: one cell, JSON on stdout
        print(json.dumps(run_cell(*args.cell, args.dim, args.views, args.epochs, args.device)))
        return
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "verbose", "quick", "device", "cell")}
    settings.update(method="clip_adapter (image adapter, reduction 4, alpha 0.6)", batch_size=32, optimizer="sgd",
                    features="synthetic, N(class centre, 0.6^2) then ReLU, float32")
    rec = _util.Result("scaling" + ("_quick" if args.quick else ""), args, settings)
    rows = []
    for c in args.classes:
        for k in args.shots:
            if args.in_process:
                row = run_cell(c, k, args.dim, args.views, args.epochs, args.device)
            else:
                cmd = [sys.executable, __file__, "--cell", str(c), str(k), "--dim", str(args.dim), "--views",
                       str(args.views), "--epochs", str(args.epochs), "--device", args.device, "--out", args.out]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"cell {c}x{k} failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["loadavg"] = _util.loadavg()
            rows.append(row)
            log.info("%4d classes x %2d shots (n=%5d): %.4f s/epoch, %.3f ms/step, +%.1f MiB RSS%s", c, k,
                     row["n_train"], row["seconds_per_epoch"], row["ms_per_step"], row["cpu_peak_rss_delta_mib"],
                     f", +{row['gpu_peak_delta_mib']:.1f} MiB GPU" if "gpu_peak_delta_mib" in row else "")
            rec.record["results"] = {"cells": rows}
            rec.write()
    rec.write()


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
