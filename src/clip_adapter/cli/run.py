"""``clip-adapter run``: one few-shot run (sample K shots, fit, select on val, score on test)."""
from __future__ import annotations

import argparse
import json
import logging

from ..datasets import SPLITS, load_dataset
from ..config import HP_SELECTION
from .common import (add_backbone_args, add_data_args, backbone_from_args, cache_from_args, count, int_list, label,
                     parse_grid, seed)

log = logging.getLogger(__name__)

# Older spellings of method-config flags that keep working (config field -> extra flags).
FLAG_ALIASES = {"target": ("--adapter",)}


def register(sub) -> None:
    p = sub.add_parser("run", help="one few-shot run: sample K shots, fit, select on val, score on test.",
                       description="Fit one method on K shots per class, choose its hyper-parameters on the "
                                   "validation split, and report test accuracy. Features are cached.")
    add_data_args(p)
    add_backbone_args(p)
    g = p.add_argument_group("method")
    g.add_argument("--method", default="clip_adapter",
                   help="zero_shot, linear_probe, clip_adapter, ... ('clip-adapter methods' lists them; '-' or '_'), "
                        "or 'auto': try the methods that work on cached features, cheapest first, and keep the one "
                        "with the best validation accuracy (default: clip_adapter).")
    g.add_argument("--auto-budget", type=float, default=None, metavar="SECONDS",
                   help="with --method auto: stop trying further methods after this many seconds (default: 600).")
    g.add_argument("--shots", type=int_list(1), default=[16],
                   help="training images per class; several comma-separated (1,2,4,8,16) run one after another "
                        "(default: 16).")
    g.add_argument("--seed", type=seed, default=1, help="few-shot sampling and training seed (default: 1).")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any method config field, e.g. --set lr=1e-3 --set optimizer=adamw.")
    g.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="values searched on val, e.g. --grid alpha=0.2,0.5,0.8 (default: the method's grid).")
    g.add_argument("--hp-selection", choices=HP_SELECTION, default="few_shot_val",
                   help="where hyper-parameters are chosen: few_shot_val (min(K, 4) val images per class; default), "
                        "full_val (the whole val split) or none (no search: the config's values).")
    g.add_argument("--views", type=count(0), default=10,
                   help="cached augmented views per training image (default: 10).")
    g.add_argument("--template", action="append", metavar="TEMPLATE",
                   help="prompt template with {} (repeat for an ensemble; default: the dataset's).")
    g.add_argument("--fewshot-index", default=None, help="a CoOp few-shot index file shot_K-seed_S.json.")
    g.add_argument("--repeat-shots", action="store_true",
                   help="sample with repetition when a class has fewer than --shots images.")
    g.add_argument("--label", default=None, type=label,
                   help="the dataset's name in results: OUTPUT/LABEL/METHOD/... (default: the dataset's name: a "
                        "folder's name, a CSV's file name or its folder's for a generic one such as data.csv).")
    g.add_argument("--base-to-new", action="store_true",
                   help="CoCoOp's base-to-new protocol: train and select on the base half of the classes, score base "
                        "and new test images (records base/new accuracy and their harmonic mean; result folder "
                        "<method>-base_to_new).")
    g.add_argument("--output", default="runs", help="results directory (default: runs).")
    g.add_argument("--save-model", default=None, metavar="DIR",
                   help="also save the fitted model to DIR (a new or empty folder, or a model saved before with "
                        "--overwrite).")
    g.add_argument("--overwrite", action="store_true",
                   help="let --save-model replace the model saved in DIR (never a folder with other files).")
    p.set_defaults(func=cmd_run, config_flags=_add_config_flags(p))


_NONE = "none"   # what `--epochs none` parses to: unset flags are None, so an asked-for None needs its own mark


def _maybe(kind):
    """An argparse type for a field that may be None: 'none' or 'null' asks for None, anything else a ``kind``."""
    def parse(text: str):
        return _NONE if text.strip().lower() in ("none", "null") else kind(text)
    parse.__name__ = kind.__name__   # argparse's message: "invalid int value: 'x'"
    return parse


def _flag_help(row: dict) -> str:
    """Each method's doc of a field, methods with the same doc together: 'training epochs [clip_adapter, coop]'."""
    by_doc: dict[str, list[str]] = {}
    for method, doc in row["docs"].items():
        by_doc.setdefault(doc, []).append(method)
    text = "; ".join(f"{doc} [{', '.join(methods)}]" for doc, methods in by_doc.items())
    return (text + (" ('none': None)" if row["optional"] else "")).replace("%", "%%")


def _add_config_flags(p: argparse.ArgumentParser) -> tuple[tuple[str, str, str], ...]:
    """One flag per method config field (``--alpha``, ``--lr``, ``--class-specific``), from the generated field
    table (:mod:`.method_flags`, torch-free, so ``--help`` stays fast), after run's own options: a field whose flag
    is one of them (``--seed``, ``--batch-size``) keeps run's meaning and is set with ``--set``. Returns
    ``(field, flag, dest)`` of the flags added."""
    from .method_flags import FIELDS
    kinds = {"int": int, "float": float, "str": str}
    rows = [(name, row, (f"--{name.replace('_', '-')}", *FLAG_ALIASES.get(name, ()))) for name, row in FIELDS.items()]
    taken = [name for name, _, flags in rows if flags[0] in p._option_string_actions]
    set_only = [n for n in taken if n not in ("seed", "device")]   # --seed, --device: run's own set these too
    g = p.add_argument_group(
        "method config", "Each flag fixes that field of --method's config (a method without it is an error; unset: "
        "the method's default, or its grid searched on val). docs/method-config.md lists every method's fields; "
        "--set KEY=VALUE sets any of them" + (f" ({', '.join(set_only)} only so: their flags are run's own)"
                                               if set_only else "") + ".")
    added = []
    for name, row, flags in rows:
        if name in taken:
            continue
        dest = f"config_{name}"
        if row["kind"] == "bool":
            g.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                           help=_flag_help(row))
        else:
            kind = kinds[row["kind"]]
            g.add_argument(*flags, dest=dest, default=None, type=_maybe(kind) if row["optional"] else kind,
                           choices=row["choices"], metavar=None if row["choices"] else name.upper(),
                           help=_flag_help(row))
        added.append((name, flags[0], dest))
    return tuple(added)


def _given(args: argparse.Namespace) -> list[tuple[str, str, object]]:
    """``(field, flag, value)`` of the method-config flags on the command line."""
    return [(name, flag, None if getattr(args, dest) is _NONE else getattr(args, dest))
            for name, flag, dest in args.config_flags if getattr(args, dest) is not None]


def _overrides(args: argparse.Namespace, cls) -> dict:
    from ..methods import check_overrides
    check_overrides(cls, [p.split("=", 1)[0].strip().replace("-", "_") for p in args.set or [] if "=" in p])
    overrides = cls.config_cls.parse_overrides(args.set or [])
    fields = cls.config_cls.field_names()
    for key, flag, value in _given(args):
        if key not in fields:
            raise ValueError(f"{flag} does not apply to method {cls.name!r} (its config has no {key!r}).")
        overrides[key] = value
    return overrides


def _check_flags(args: argparse.Namespace, auto: bool) -> None:
    if auto and (args.set or args.grid or _given(args)):
        given = ", ".join(["--set"] * bool(args.set) + ["--grid"] * bool(args.grid) + [f for _, f, _ in _given(args)])
        raise ValueError(f"--method auto chooses each method's hyper-parameters on val itself; drop {given} (or name "
                         f"one method).")
    if auto and args.base_to_new:
        raise ValueError("--base-to-new needs one named method (--method auto is not supported there).")
    if args.auto_budget is not None and not auto:
        raise ValueError("--auto-budget goes with --method auto.")
    if args.auto_budget is not None and not args.auto_budget > 0:
        raise ValueError(f"--auto-budget must be > 0 seconds. Got {args.auto_budget!r} instead.")
    if len(args.shots) > 1 and (args.save_model or args.fewshot_index):
        flag = "--save-model" if args.save_model else "--fewshot-index"
        raise ValueError(f"{flag} needs one shot count; got --shots {','.join(map(str, args.shots))}.")


def _row(record: dict) -> dict:
    return {"dataset": record["dataset"], "method": record["method"], "shots": record["shots"],
            "seed": record["seed"], "chosen": json.dumps(record["chosen"]) if record["chosen"] else "-",
            "val acc": record["val_accuracy"], "test acc": record["accuracy"], "macro-F1": record["macro_f1"],
            "train s": round(record["train_seconds"], 2),
            **({"base acc": record["base_accuracy"], "new acc": record["new_accuracy"], "HM": record["harmonic_mean"],
                "new classes": record["unseen_classes"]} if "base_accuracy" in record else {})}


def cmd_run(args: argparse.Namespace) -> int:
    from ..auto import DEFAULT_BUDGET_SECONDS, run_auto      # torch-heavy imports wait until a command runs
    from ..experiment.size import run_size
    from ..fewshot import read_index_file
    from ..generalisation import run_base_to_new
    from ..methods import get_method_class
    from ..protocol import RunSpec, run_one
    from ..report import format_table
    auto = args.method == "auto"
    _check_flags(args, auto)
    cls = None if auto else get_method_class(args.method)
    overrides = {} if auto else _overrides(args, cls)
    grid = parse_grid(args.grid) if args.grid else None
    both = sorted(set(overrides) & set(grid or {}))
    if both:   # run_one would silently drop the grid's values for a fixed key
        raise ValueError(f"{both[0]!r} is both fixed (--set or its own flag) and searched (--grid); keep one.")
    dataset = load_dataset(args.data, root=args.root, allow_outside_paths=args.allow_outside_paths)
    if args.label:
        dataset.name = args.label
    if not auto:  # the size of the largest run (auto's candidates are sized as they run)
        size = run_size(cls.name, overrides, grid, max(args.shots), {s: len(dataset.split(s)) for s in SPLITS},
                        dataset.num_classes, args.views)
        log.info("%s: plan: %s", dataset.name, size.line())
        if size.warning():
            log.warning("%s: %s", dataset.name, size.warning())
    backbone = backbone_from_args(args)
    train_items = val_items = None
    if args.fewshot_index:
        idx = read_index_file(args.fewshot_index, {s: dataset.split(s) for s in SPLITS},
                              classnames=dataset.classnames, shots=args.shots[0])
        train_items, val_items = idx["train"], idx.get("val")
    cache = cache_from_args(args, backbone)
    records = []
    for shots in args.shots:
        spec = RunSpec(method="auto" if auto else cls.name, shots=shots, seed=args.seed, overrides=overrides,
                       grid=grid, n_views=args.views, repeat_shots=args.repeat_shots,
                       templates=args.template or None, train_items=train_items, val_items=val_items,
                       device=args.device, hp_selection=args.hp_selection)
        if auto:
            record = run_auto(dataset, backbone, spec, cache=cache, output=args.output, save_model=args.save_model,
                              overwrite=args.overwrite, budget_seconds=args.auto_budget or DEFAULT_BUDGET_SECONDS)
            tried = ", ".join(f"{c['method']} {c['val_accuracy']:.4f}" for c in record["auto"]["tried"])
            print(f"auto ({shots} shots): chose {record['method']} on validation accuracy ({tried})")
        elif args.base_to_new:
            spec = spec.replace(variant=f"{cls.name}-base_to_new")
            record = run_base_to_new(dataset, backbone, spec, cache=cache, output=args.output,
                                     save_model=args.save_model, overwrite=args.overwrite)
            if record["unseen_classes"] != "transfer":
                print(f"{cls.name} is class-specific: its new-class accuracy is zero-shot CLIP's (zero-shot "
                      f"fallback).")
        else:
            record = run_one(dataset, backbone, spec, cache=cache, output=args.output, save_model=args.save_model,
                            overwrite=args.overwrite)
        records.append(record)
        if cls is not None and not cls.trains:
            break  # a method that does not train gives the same run for every shot count
    rows = [_row(r) for r in records]
    print(format_table(rows, list(rows[0])))
    print("results: " + ", ".join(r["result_file"] for r in records))
    if args.save_model:
        print(f"model: {records[0]['model_dir']}")
    return 0
