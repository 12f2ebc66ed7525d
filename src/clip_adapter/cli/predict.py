"""``clip-adapter predict`` (classify images with a saved model) and ``clip-adapter evaluate`` (re-score it on a
dataset split)."""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from ..datasets import load_dataset
from ..io import atomic_path, write_json
from .common import (ENCODER_DEFAULTS, add_data_args, add_encoder_args, add_model_backbone_arg, cache_from_args,
                     count, encoder_from_args, parse_class_map)

log = logging.getLogger(__name__)


if TYPE_CHECKING:
    from ..model import AdaptedClassifier


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by 'clip-adapter run --save-model DIR'.")
    p.add_argument("--checkpoint", default=None,
                   help="the local backbone checkpoint the model was trained on (needed, and sha256-checked, when "
                        "it was trained on one).")
    p.add_argument("--device", default="cpu", help="torch device for the image encoder, e.g. cpu, cuda (default: cpu).")
    add_model_backbone_arg(p)
    add_encoder_args(p)


def _infer_format(args) -> str:
    if args.format:
        return args.format
    suffix = Path(args.out).suffix.lower() if args.out else ""
    return {".json": "json", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}.get(suffix, "table")


def _cmd_predict_stream(args, fmt: str) -> int:
    from ..distributed import check_shared_folder, connect, predict_on_ray   # torch-heavy: only when it runs
    from ..model import AdaptedClassifier, expand_images, predict_to_jsonl
    from ..model.stream import jsonl_to_parquet
    """Predictions streamed into a JSON-lines file (``.parquet``: a JSON-lines journal converted at the end), here or
    on Ray; a rerun resumes where it stopped."""
    if args.ray is not None and encoder_from_args(args) != ENCODER_DEFAULTS:
        raise ValueError("--precision/--compile/--runtime/--gpu-decode are not passed to Ray predictor actors yet; "
                         "drop them with --ray, or predict without --ray.")
    if not args.out or fmt not in ("jsonl", "parquet"):
        raise ValueError("--ray and parquet output stream into a file: give --out FILE.jsonl or --out FILE.parquet.")
    journal = Path(f"{args.out}.partial.jsonl") if fmt == "parquet" else Path(args.out)
    paths, bad_args = expand_images(args.images)
    if not paths and bad_args:
        raise FileNotFoundError(f"No images found in {', '.join(map(str, args.images))}.")
    kw = {"top_k": args.top_k or 5, "batch_size": args.batch_size, "extra_records": bad_args,
          "overwrite": args.overwrite}
    if args.ray is not None:
        ray = connect(None if args.ray == "local" else args.ray)
        check_shared_folder(ray, Path(args.model_dir), "model folder")
        counts = predict_on_ray(args.model_dir, paths, journal, device=args.device, checkpoint=args.checkpoint,
                                backbone=args.backbone, actors=args.actors, **kw)
    else:
        model = AdaptedClassifier.from_pretrained(args.model_dir, device=args.device, checkpoint=args.checkpoint,
                                                  backbone=args.backbone, batch_size=args.batch_size)
        model.backbone.configure_encoder(**encoder_from_args(args))
        kw["top_k"] = args.top_k or min(5, len(model.classes_))
        counts = predict_to_jsonl(model, paths, journal, num_workers=args.workers,
                                  progress=not args.no_progress, **kw)
    if fmt == "parquet":
        n = jsonl_to_parquet(journal, args.out)
        journal.unlink()
        print(f"wrote {n} predictions to {args.out}", file=sys.stderr)
    print(f"{args.out}: {counts['written']} new records ({counts['errors']} errors), {counts['skipped']} already "
          f"done.", file=sys.stderr)
    return 1 if counts["errors"] else 0


def _check_out(out: str | None) -> None:
    if out is not None and Path(out).is_symlink():
        raise ValueError(f"--out {out} is a symbolic link; refusing to write through it. Give the real path.")
    if out is not None and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; expected a file name (e.g. {Path(out) / 'predictions.jsonl'}).")


def cmd_predict(args) -> int:
    from ..model import AdaptedClassifier, expand_images, predict_to_jsonl
    fmt = _infer_format(args)
    _check_out(args.out)
    if fmt == "parquet" or args.ray is not None:
        return _cmd_predict_stream(args, fmt)
    model = AdaptedClassifier.from_pretrained(args.model_dir, device=args.device, checkpoint=args.checkpoint,
                                              backbone=args.backbone, batch_size=args.batch_size)
    model.backbone.configure_encoder(**encoder_from_args(args))
    paths, bad_args = expand_images(args.images)
    for rec in bad_args:
        log.warning("Skipped %s: %s", rec["path"], rec["error"])
    if not paths and bad_args:
        raise FileNotFoundError(f"No images found in {', '.join(map(str, args.images))}.")
    k = args.top_k or min(5, len(model.classes_))
    progress = not args.no_progress and len(paths) > args.batch_size
    kw = {"top_k": k, "batch_size": args.batch_size, "num_workers": args.workers}
    if fmt == "jsonl" and args.out:
        counts = predict_to_jsonl(model, paths, args.out, progress=progress, extra_records=bad_args,
                                  overwrite=args.overwrite, **kw)
        print(f"{args.out}: {counts['written']} new records ({counts['errors']} errors), "
              f"{counts['skipped']} already done.", file=sys.stderr)
        return 1 if counts["errors"] or any("error" in r for r in bad_args) else 0
    stream = model.predict_stream(paths, progress=progress, **kw)
    if fmt == "jsonl":  # to stdout, line by line
        n_err = 0
        for rec in itertools.chain(bad_args, stream):
            print(json.dumps(rec), flush=True)
            n_err += "error" in rec
        return 1 if n_err else 0
    records = [*bad_args, *stream]
    n_err = sum("error" in r for r in records)
    text = _render(fmt, records, model, args, k)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
        print(f"wrote {len(records)} predictions ({n_err} errors) to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if n_err:
        bad = ", ".join(r["path"] for r in records if "error" in r)
        print(f"{n_err} of {len(records)} images could not be read and were skipped: {bad}", file=sys.stderr)
    return 1 if n_err else 0


def _render(fmt: str, records: list[dict], model: AdaptedClassifier, args, k: int) -> str:
    from ..report import format_table
    """The predictions as ``json``, ``csv`` or a Markdown ``table``."""
    if fmt == "json":
        n_err = sum("error" in r for r in records)
        return json.dumps({"model": str(args.model_dir), "method": model.method.name, "backbone": model.backbone.id,
                           "classes": model.classes_, "top_k": k, "n_images": len(records), "n_errors": n_err,
                           "predictions": records}, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "class", "probability", "error"])
        for r in records:
            if "error" in r:
                w.writerow([_cell(r["path"]), "", "", "", _cell(r["error"])])
            else:
                w.writerows([_cell(r["path"]), j, _cell(t["class"]), f"{t['probability']:.6f}", ""]
                            for j, t in enumerate(r["top_k"], 1))
        return buf.getvalue()
    rows = [{"image": r["path"], "prediction": r.get("prediction", "(error)"),
             "probability": r.get("probability", ""),
             f"top-{k}": r["error"] if "error" in r else ", ".join(f"{t['class']} {t['probability']:.3f}"
                                                                  for t in r["top_k"])} for r in records]
    return format_table(rows, ["image", "prediction", "probability", f"top-{k}"]) + "\n"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula (= + - @, tab, CR) gets a leading
    apostrophe (OWASP's advice against CSV injection); the csv module quotes the rest."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def cmd_evaluate(args) -> int:
    from ..model import AdaptedClassifier
    from ..report import format_table
    _check_out(args.out)
    class_map = parse_class_map(args.class_map)
    model = AdaptedClassifier.from_pretrained(args.model_dir, device=args.device, checkpoint=args.checkpoint,
                                              backbone=args.backbone)
    model.backbone.configure_encoder(**encoder_from_args(args))
    dataset = load_dataset(args.data, root=args.root, allow_outside_paths=args.allow_outside_paths)
    cache = cache_from_args(args, model.backbone)
    result = {"model": str(args.model_dir), **model.evaluate(dataset, args.split, cache, class_map=class_map)}
    out = Path(args.out) if args.out else Path(args.model_dir) / f"eval-{dataset.name}-{args.split}.json"
    write_json(out, result)
    row = {"dataset": dataset.name, "split": args.split, "n": result["n"], "accuracy": result["accuracy"],
           "macro-F1": result["macro_f1"]}
    if isinstance(result["saved_test_accuracy"], float):
        row["saved test acc"] = result["saved_test_accuracy"]
    print(format_table([row], list(row)))
    print(f"results: {out}")
    return 0


def register(sub) -> None:
    """``predict`` and ``evaluate``."""
    p = sub.add_parser("predict", help="classify images with a saved model (top-k classes and probabilities).",
                       description="Classify image files, folders (recursive) and globs with a model saved by "
                                   "'clip-adapter run --save-model DIR'. Unreadable images are reported and skipped "
                                   "(exit status 1 if any). With --out FILE.jsonl, results are appended as they come "
                                   "and a rerun with the same model and --top-k skips the images already in the file "
                                   "and retries the failed ones (--overwrite starts over).")
    _add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (searched recursively) or globs.")
    p.add_argument("--top-k", type=count(1), default=None, help="classes per image (default: 5, or fewer classes).")
    p.add_argument("--format", choices=["table", "json", "csv", "jsonl", "parquet"], default=None,
                   help="output format (default: from --out's extension, else table).")
    p.add_argument("--out", default=None,
                   help="write to FILE instead of stdout; FILE.jsonl streams and resumes (only a file written by the "
                        "same model with the same --top-k; failed images are tried again).")
    p.add_argument("--overwrite", action="store_true",
                   help="start --out FILE.jsonl / .parquet over instead of resuming it.")
    p.add_argument("--batch-size", type=count(1), default=32, help="images per encoder call (default: 32).")
    p.add_argument("--workers", type=count(0), default=None, help="image-decoding processes (default: half the cores).")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar.")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="predict on Ray (needs --out FILE.jsonl or .parquet): without ADDRESS a local cluster, 'auto' "
                        "the running cluster, or host:port.")
    p.add_argument("--actors", type=count(1), default=None,
                   help="with --ray: predictor actors (default: one per GPU with --device cuda, else 1).")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="re-compute the accuracy of a saved model on a dataset split.",
                       description="Accuracy and macro-F1 of a saved model on a dataset split (features from the "
                                   "feature cache); the result is written as JSON.")
    _add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to score (default: test).")
    p.add_argument("--out", default=None, help="result JSON (default: MODEL_DIR/eval-<dataset>-<split>.json).")
    p.add_argument("--class-map", default=None, metavar="MAP",
                   help="how the dataset's classes map to the model's when they differ: 'by-name' (a subset of the "
                        "model's classes), 'shared' (only the classes both have, by name; images of the others are "
                        "left out), FILE.json ({dataset class: model class}) or a=b,c=d (default: the classes must "
                        "be the same).")
    p.set_defaults(func=cmd_evaluate)
