"""Print the README's result tables (markdown) from the JSON files in a results folder.

    python benchmarks/tables.py                       # benchmarks/results
    python benchmarks/tables.py benchmarks/results/gpu
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _ms(d: dict | None, fmt: str = "{:.3f}") -> str:
    if not d or d.get("mean") is None:
        return "-"
    s = fmt.format(d["mean"])
    return s + (" ± " + fmt.replace("+", "").format(d["std"]) if d.get("n", 0) > 1 else "")


def _machine(r: dict) -> str:
    m = r["machine"]
    gpu = f", {m['gpu_name']}" if m.get("gpu_name") else ""
    return (f"{m['cpu_count']} x {m['cpu_model']}{gpu}, device {m['device']}, torch threads {m['torch_threads']}, "
            f"load avg {m.get('loadavg_start')} -> {m.get('loadavg_end')}; torch {r['versions'].get('torch')}")


def training_cost(r: dict) -> list[str]:
    s = r["settings"]
    out = [f"**{r['benchmark']}** — `{r['command']}`  ",
           f"{_machine(r)}; backbone `{s['backbone_id']}`, {s['shots']} shots, {s['epochs']} epochs, alpha "
           f"{s['alpha']} (fixed), lr {s['lr']}, batch {s['batch_size']}, loader workers {s['num_workers_used']}", ""]
    for dname, e in r["results"].items():
        sm = e.get("summary")
        if not sm:
            continue
        zs = f", zero-shot {e['zero_shot_accuracy']:.3f}" if "zero_shot_accuracy" in e else ""
        test = f", test {e['n_test']} images encoded once in {e['test_extract_seconds']:.0f} s" if "n_test" in e else ""
        out += [f"*{e['dataset']}* ({e['classes']} classes, {sm['seeds']} seed(s){zs}{test})", "",
                "| path | views | one-off extraction (s) | training (s) | (a) / (b) training | (a) / (b) extraction+training "
                "| same, per-seed pairs | test accuracy | (b) - (a) accuracy, paired |", "|---|---|---|---|---|---|---|---|---|"]
        if "paper_seconds" in sm:
            out.append(f"| (a) paper: encoder every step | fresh | 0 | {_ms(sm['paper_seconds'], '{:.1f}')} | 1 | 1 | 1 | "
                       f"{_ms(sm['paper_accuracy'])} | |")
        for v, c in sorted(sm["cached"].items(), key=lambda kv: int(kv[0])):
            out.append(f"| (b) cached views | {v} | {_ms(c['extract_seconds'], '{:.1f}')} | "
                       f"{_ms(c['train_seconds'], '{:.2f}')} | {c.get('ratio_paper_over_train', '-')}x | "
                       f"{c.get('ratio_paper_over_extract_plus_train', '-')}x | "
                       f"{_ms(c.get('ratio_paper_over_extract_plus_train_per_seed'), '{:.2f}')} | {_ms(c['accuracy'])} | "
                       f"{_ms(c.get('accuracy_minus_paper'), '{:+.3f}')} |")
        longs = [x["cached"].get("long_run") for x in e["seeds"].values() if x["cached"].get("long_run")]
        if longs:
            accs = [x["test_accuracy"] for x in longs if "test_accuracy" in x]
            acc = f", test accuracy {sum(accs) / len(accs):.3f}" if accs else ""
            out.append(f"\n(b) trained {longs[0]['epochs']} epochs on {longs[0]['views']} views (the paper's epoch "
                       f"count, context only): {sum(x['train_seconds'] for x in longs) / len(longs):.1f} s{acc}.")
        out.append("")
    return out


def extraction(r: dict) -> list[str]:
    s = r["settings"]
    out = [f"**{r['benchmark']}** — `{r['command']}`  ",
           f"{_machine(r)}; backbone `{s['backbone_id']}`, {s['n_images']} images per measurement, target "
           f"{s['target']}", "", "| batch | loader workers | encoder alone (img/s) | full path (img/s) | ratio | >= target |",
           "|---|---|---|---|---|---|"]
    for c in r["results"].get("cells", []):
        out.append(f"| {c['batch_size']} | {c['num_workers']} | {c['encoder_alone_images_per_s']:.1f} | "
                   f"{c['full_path_images_per_s']:.1f} | {c['ratio']:.2f} | {'yes' if c['meets_target'] else 'no'} |")
    return out + [""]


def scaling(r: dict) -> list[str]:
    s = r["settings"]
    gpu = any("gpu_peak_delta_mib" in c for c in r["results"].get("cells", []))
    out = [f"**{r['benchmark']}** — `{r['command']}`  ",
           f"{_machine(r)}; dim {s['dim']}, {s['views']} views, {s['epochs']} epochs, batch 32", "",
           "| classes | shots | train images | steps/epoch | s/epoch | ms/step | views tensor (MiB) | "
           + ("peak GPU delta (MiB) |" if gpu else "peak RSS delta (MiB) |"),
           "|---|---|---|---|---|---|---|---|"]
    for c in r["results"].get("cells", []):
        mem = c["gpu_peak_delta_mib"] if gpu else c["cpu_peak_rss_delta_mib"]
        out.append(f"| {c['classes']} | {c['shots']} | {c['n_train']} | {c['steps'] // c['epochs']} | "
                   f"{c['seconds_per_epoch']:.3f} | {c['ms_per_step']:.2f} | {c['views_tensor_mib']:.1f} | {mem:.1f} |")
    return out + [""]


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results"
    lines: list[str] = []
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        kind = r.get("benchmark", path.stem)
        fn = (training_cost if kind.startswith("training_cost") else extraction if kind.startswith("extraction")
              else scaling if kind.startswith("scaling") else None)
        if fn is not None:
            lines += [f"<!-- {path.name} -->"] + fn(r)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
