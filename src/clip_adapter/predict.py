"""Use an adapted model: one folder to save and load, predictions on images, evaluation, streaming over many images.

    >>> from clip_adapter.predict import AdaptedClassifier
    >>> model = AdaptedClassifier.from_pretrained("models/dtd")    # + checkpoint=FILE for a local-checkpoint backbone
    >>> model.predict(["a.jpg", "b.jpg"])                          # class names, one per image
    >>> model.predict_proba(["a.jpg"])                             # (n, C) probabilities, columns = model.classes_
    >>> for rec in model.predict_stream(paths): ...                # one dict per image, bounded memory

A saved model is a folder, PEFT style:

* ``adapter_config.json``: method, its hyper-parameters, class names, templates, feature dim, logit scale, package
  versions, the backbone id and a ``"backbone"`` block that rebuilds it (``name``, ``pretrained`` tag,
  ``checkpoint_sha256`` of a local checkpoint, ``embed_dim``, and the open_clip architecture ``model_config``);
* ``adapter_model.safetensors``: the learned tensors only, never the backbone;
* ``README.md``: a short model card (dataset, shots, measured accuracy when known).

Loading reads JSON and safetensors only: nothing is unpickled (weights of the backbone itself are open_clip's
business). A model trained on a local checkpoint needs that file again (``checkpoint=``); its sha256 is checked.

Inputs of :meth:`AdaptedClassifier.predict` / :meth:`~AdaptedClassifier.predict_proba`:

* a path, a PIL image, or a list mixing them: decoded and preprocessed with the backbone's test transform;
* a 4-D tensor ``(n, 3, H, W)`` (or 3-D ``(3, H, W)``): images **already preprocessed** with
  ``model.transform`` (resized, cropped, normalised), sent to the image encoder;
* a 2-D tensor ``(n, embed_dim)``: **raw image features** from ``backbone.encode_images`` (or the feature cache),
  classified directly without running the encoder.
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import itertools
import json
import logging
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset as TorchDataset
from tqdm.auto import tqdm

from .backbone import file_sha256, load_backbone
from .data import IMAGE_EXTENSIONS
from .features import default_num_workers
from .io import atomic_path, package_versions, write_json
from .methods import CONFIG_NAME, WEIGHTS_NAME, FewShotMethod, check_fitted

__all__ = ["AdaptedClassifier", "backbone_spec", "expand_images", "predict_to_jsonl", "add_subcommands"]

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


# -- the backbone, described well enough to rebuild it --------------------------------------------------------
def backbone_spec(backbone, checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """What rebuilds ``backbone`` with :func:`~clip_adapter.backbone.load_backbone`, read from its id.

    ``open_clip:NAME/TAG`` gives ``name`` and the ``pretrained`` tag (``random-init`` -> ``None``);
    ``open_clip:NAME/sha256:HEX`` a local checkpoint whose sha256 starts with ``HEX`` (``checkpoint_sha256``,
    the full digest when the caller knows it); ``PREFIX:...`` (e.g. ``lite:...``) the registered backbone
    ``PREFIX``. For open_clip the architecture config is stored too, so models built from a config JSON
    that is not registered on the loading machine can be rebuilt.
    """
    spec = _spec_from_id(str(backbone.id), int(backbone.embed_dim))
    if checkpoint_sha256 and spec.get("checkpoint_sha256") and checkpoint_sha256.startswith(spec["checkpoint_sha256"]):
        spec["checkpoint_sha256"] = checkpoint_sha256
    if str(backbone.id).startswith("open_clip:") and spec["name"]:
        try:
            import open_clip
            cfg = open_clip.get_model_config(spec["name"])
        except Exception:  # noqa: BLE001 - the config is a convenience, the id is what is checked
            cfg = None
        if cfg:
            spec["model_config"] = cfg
    return spec


def _spec_from_id(bid: str, embed_dim: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": bid, "embed_dim": embed_dim, "name": None, "pretrained": None,
                            "checkpoint_sha256": None}
    kind, sep, rest = bid.partition(":")
    if not sep:
        return spec
    if kind == "open_clip":
        name, _, tag = rest.partition("/")
        spec["name"] = name or None
        if tag.startswith("sha256:"):
            spec["checkpoint_sha256"] = tag[len("sha256:"):]
        elif tag and not tag.startswith("random-init"):
            spec["pretrained"] = tag
    else:
        spec["name"] = kind  # registered backbones (load_backbone("lite")) use their name as the id prefix
    return spec


def _rebuild_backbone(spec: dict[str, Any], where: Path, device, checkpoint) -> tuple[Any, str | None]:
    """(backbone rebuilt from ``spec``, full sha256 of ``checkpoint`` or None); checks the checkpoint first."""
    bid, name = spec.get("id"), spec.get("name")
    if not name:
        raise ValueError(f"{where} does not say how to rebuild its backbone {bid!r}; load that backbone yourself "
                         f"and pass it: AdaptedClassifier.from_pretrained(dir, backbone=bb).")
    sha, actual = spec.get("checkpoint_sha256"), None
    if sha:
        if checkpoint is None:
            raise ValueError(f"Model {where.parent} was trained on a local checkpoint of {name!r} (sha256 {sha[:16]}...); "
                             f"pass that file with checkpoint=FILE (CLI: --checkpoint FILE).")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"Checkpoint file {checkpoint} not found.")
        actual = file_sha256(checkpoint)
        if not actual.startswith(sha):
            raise ValueError(f"Checkpoint {checkpoint} has sha256 {actual[:16]}..., but model {where.parent} was trained "
                             f"on a checkpoint with sha256 {sha[:16]}...: wrong file.")
    elif checkpoint is not None:
        raise ValueError(f"Model {where.parent} was trained on {bid!r}, not on a local checkpoint; a checkpoint file "
                         f"would give a backbone with another id. Drop checkpoint= (--checkpoint).")
    model_config = spec.get("model_config")
    if bid and bid.startswith("open_clip:") and model_config:
        from .backbone import list_backbones
        if name not in list_backbones():
            # An architecture JSON that is not registered here: rebuild it from the copy in adapter_config.json.
            with tempfile.TemporaryDirectory() as tmp:
                cfg_path = Path(tmp) / f"{name}.json"
                cfg_path.write_text(json.dumps(model_config))
                return load_backbone(str(cfg_path), pretrained=None, checkpoint=checkpoint, device=device), actual
    return load_backbone(name, pretrained=spec.get("pretrained"), checkpoint=checkpoint, device=device), actual


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"Model directory {directory} not found.")
    cfg_file = directory / CONFIG_NAME
    for f in (cfg_file, directory / WEIGHTS_NAME):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found; expected a folder written by save_pretrained "
                                    f"(clip-adapter run --save-model DIR).")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_file} is not valid JSON ({e}).") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object; got {type(meta).__name__}.")
    if "embed_dim" not in meta:
        raise ValueError(f"{cfg_file} lacks the required key 'embed_dim'.")
    return meta


# -- image inputs ---------------------------------------------------------------------------------------------
def _open_rgb(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"Image {path} not found.") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise OSError(f"Image {path} could not be read ({type(e).__name__}: {e}).") from None


class _SafeImages(TorchDataset):
    """Images at ``paths`` through ``transform``; a file that cannot be read gives its error, not an exception."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(_open_rgb(self.paths[i])), None
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            return i, None, str(e)


def _collate(batch):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    errors = [(i, err) for i, x, err in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, errors


def expand_images(specs: Iterable[str | os.PathLike]) -> tuple[list[str], list[dict[str, str]]]:
    """Files, folders (recursive, image extensions only) and globs -> (image paths in order, error records).

    A path that does not exist, or a glob that matches nothing, becomes an error record ``{"path", "error"}``.
    Duplicates are dropped (first occurrence kept).
    """
    paths: list[str] = []
    errors: list[dict[str, str]] = []

    def folder_images(folder: Path) -> list[str]:
        return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())

    for spec in specs:
        s = str(spec)
        p = Path(s).expanduser()
        if p.is_dir():
            found = folder_images(p)
            if not found:
                errors.append({"path": s, "error": f"Folder {s} contains no images "
                                                   f"({', '.join(sorted(IMAGE_EXTENSIONS))})."})
            paths.extend(found)
        elif p.is_file():
            paths.append(str(p))
        elif _GLOB_CHARS & set(s):
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not matches:
                errors.append({"path": s, "error": f"No file matches {s}."})
            for m in matches:
                paths.extend(folder_images(Path(m)) if Path(m).is_dir() else [m])
        else:
            errors.append({"path": s, "error": f"Image {s} not found."})
    return list(dict.fromkeys(paths)), errors


# -- the model ------------------------------------------------------------------------------------------------
class AdaptedClassifier:
    """A frozen backbone plus a fitted few-shot method: an image classifier that saves to and loads from a folder.

    Args:
        backbone: the :class:`~clip_adapter.backbone.Backbone` the method was fitted on (checked by id and dim).
        method: a fitted :class:`~clip_adapter.methods.FewShotMethod`.
        info: extra facts kept with the model (``dataset``, ``shots``, ``seed``, ``test_accuracy``, ``model_card``).
        batch_size: images per encoder call in ``predict*``.
    """

    def __init__(self, backbone, method: FewShotMethod, *, info: dict[str, Any] | None = None, batch_size: int = 32):
        check_fitted(method)
        trained_on = (getattr(method, "metadata_", None) or {}).get("backbone_id")
        if int(method.embed_dim_) != int(backbone.embed_dim) or (trained_on and trained_on != backbone.id):
            raise ValueError(f"Adapter was trained on {trained_on or 'a backbone'!r} (dim {method.embed_dim_}); "
                             f"features come from {backbone.id!r} (dim {backbone.embed_dim}).")
        self.backbone = backbone
        self.method = method
        self.info = dict(info or {})
        self.batch_size = batch_size
        self._checkpoint_sha256: str | None = None

    # -- facts --------------------------------------------------------------------------------------------------
    @property
    def classes_(self) -> list[str]:
        """Class names; column ``j`` of :meth:`predict_proba` is ``classes_[j]``."""
        return list(self.method.classes_)

    @property
    def transform(self):
        """PIL image -> preprocessed tensor ``(3, H, W)``: the backbone's test transform."""
        return self.backbone.test_transform

    def __repr__(self) -> str:
        return (f"AdaptedClassifier(method={self.method.name!r}, backbone={self.backbone.id!r}, "
                f"classes={len(self.classes_)})")

    # -- persistence --------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, model_card: str | None = None, **info: Any) -> Path:
        """Write ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md`` into ``directory``
        (atomically: the folder is replaced as a whole). ``info`` (e.g. ``dataset=``, ``test_accuracy=``) is
        stored in the JSON and shown in the card."""
        facts = {**{k: v for k, v in self.info.items() if k != "model_card"}, **info}
        facts["backbone"] = backbone_spec(self.backbone, self._checkpoint_sha256)
        facts["model_card"] = model_card or self.info.get("model_card") or self._card(facts)
        return self.method.save_pretrained(directory, backbone_id=self.backbone.id, extra=facts)

    def _card(self, facts: dict[str, Any]) -> str:
        acc = facts.get("test_accuracy")
        more = ", ..." if len(self.classes_) > 20 else ""
        lines = [f"# {self.method.name} on {facts.get('dataset', 'unknown data')}", "",
                 f"- backbone: `{self.backbone.id}`",
                 f"- classes ({len(self.classes_)}): {', '.join(self.classes_[:20])}{more}",
                 f"- shots per class: {facts.get('shots', 'not recorded')}",
                 f"- test accuracy: {f'{acc:.4f}' if isinstance(acc, (int, float)) else 'not measured'}",
                 f"- templates: {list(getattr(self.method, 'templates_', []))}", "",
                 "Load with `AdaptedClassifier.from_pretrained(dir)` or `clip-adapter predict DIR IMAGES...`.", ""]
        return "\n".join(lines)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        checkpoint: str | os.PathLike | None = None, *, backbone=None,
                        batch_size: int = 32) -> "AdaptedClassifier":
        """Load a folder written by :meth:`save_pretrained` (or ``run_one(save_model=...)``); never unpickles.

        The backbone is rebuilt from the saved description on ``device``, unless ``backbone`` is given (it is then
        checked against the saved id and dim). A model trained on a local checkpoint needs ``checkpoint=FILE``;
        the file's sha256 must match the saved one.
        """
        directory = Path(directory)
        meta = _read_config(directory)
        cfg_file = directory / CONFIG_NAME
        bid = meta.get("backbone_id")
        spec = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else None
        if spec is None:  # written before the "backbone" block existed: the id says enough for named backbones
            spec = _spec_from_id(str(bid), int(meta["embed_dim"])) if bid else {"id": None, "name": None}
        sha = None
        if backbone is None:
            backbone, sha = _rebuild_backbone(spec, cfg_file, device, checkpoint)
            if str(bid).startswith("open_clip:") and "/random-init" in str(bid):
                raise ValueError(f"Model {directory} was trained on a randomly initialised backbone ({bid}); a rebuilt "
                                 f"one has other random weights. Pass the original: from_pretrained(dir, backbone=bb).")
        if bid and backbone.id != bid or int(meta["embed_dim"]) != int(backbone.embed_dim):
            raise ValueError(f"Adapter in {directory} was trained on {bid!r} (dim {meta['embed_dim']}); features come "
                             f"from {backbone.id!r} (dim {backbone.embed_dim}).")
        method = FewShotMethod.from_pretrained(directory, backbone=backbone)
        keep = ("dataset", "shots", "seed", "test_accuracy", "model_card")
        model = cls(backbone, method, info={k: meta[k] for k in keep if k in meta}, batch_size=batch_size)
        model._checkpoint_sha256 = sha
        return model

    # -- prediction ---------------------------------------------------------------------------------------------
    def features(self, images) -> torch.Tensor:
        """Raw image features ``(n, embed_dim)`` of ``images`` (see the module docstring for accepted inputs).

        Raises ``FileNotFoundError``/``OSError`` naming the file when an image cannot be read; use
        :meth:`predict_stream` to skip bad images instead.
        """
        dim = int(self.backbone.embed_dim)
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if isinstance(images, torch.Tensor):
            if images.ndim == 2:
                if images.shape[1] != dim:
                    raise ValueError(f"A 2-D tensor is read as raw features (n, {dim}); got {tuple(images.shape)}. "
                                     f"Preprocessed images must be (n, 3, H, W).")
                return images.float().cpu()
            if images.ndim == 3:
                images = images.unsqueeze(0)
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"A tensor must be preprocessed images (n, 3, H, W) (model.transform of a PIL image) "
                                 f"or raw features (n, {dim}); got {tuple(images.shape)}.")
            return self._encode_tensor(images)
        items = list(images)
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = [self._preprocess(x) for x in items[start:start + self.batch_size]]
            out.append(self._encode(torch.stack(chunk)))
        return torch.cat(out) if out else torch.zeros(0, dim)

    def _preprocess(self, x) -> torch.Tensor:
        if isinstance(x, Image.Image):
            return self.transform(x.convert("RGB") if x.mode != "RGB" else x)
        if isinstance(x, (str, os.PathLike)):
            return self.transform(_open_rgb(x))
        if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] == 3:
            return x.float()
        raise TypeError(f"Cannot classify a {type(x).__name__}; expected a path, a PIL image or a preprocessed "
                        f"(3, H, W) tensor.")

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """What the method consumes: raw features, or a layer adapter's activations (its own ``encode_images``)."""
        encode = getattr(self.method, "encode_images", None) or self.backbone.encode_images
        return encode(images).float().cpu()

    def _encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        chunks = [self._encode(images[i:i + self.batch_size])
                  for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, int(self.backbone.embed_dim))

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        """Class scores ``(n, C)``."""
        return self.method.logits(self.features(images))

    @torch.no_grad()
    def predict_proba(self, images) -> torch.Tensor:
        """Class probabilities ``(n, C)`` (softmax of the method's logits); column ``j`` is ``classes_[j]``."""
        return self.method.predict_proba(self.features(images))

    def predict(self, images) -> list[str]:
        """The most likely class name of each image (a list, also for one image)."""
        idx = self.method.predict(self.features(images))
        return [self.method.classes_[i] for i in idx.tolist()]

    def _records(self, probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
        vals, idx = probs.topk(min(k, probs.shape[1]), dim=1)
        out = []
        for v, i in zip(vals.tolist(), idx.tolist()):
            top = [{"class": self.method.classes_[j], "probability": p} for j, p in zip(i, v)]
            out.append({"prediction": top[0]["class"], "probability": top[0]["probability"], "top_k": top})
        return out

    def predict_stream(self, images: Sequence[str | os.PathLike], *, top_k: int = 5, batch_size: int | None = None,
                       num_workers: int | None = None, progress: bool = False) -> Iterator[dict[str, Any]]:
        """One record per image path, in input order, computed batch by batch (bounded memory).

        A record is ``{"path", "prediction", "probability", "top_k": [{"class", "probability"}, ...]}``, or
        ``{"path", "error"}`` for an image that cannot be read (logged as a warning, then skipped). Decoding runs in
        ``num_workers`` DataLoader processes (default: half the cores, at most 4) while the encoder works.
        """
        paths = [str(p) for p in images]
        if not paths:
            return
        bs = batch_size or self.batch_size
        workers = default_num_workers() if num_workers is None else num_workers
        workers = workers if len(paths) > bs else 0  # starting a process costs more than it saves on one batch
        loader = DataLoader(_SafeImages(paths, self.transform), batch_size=bs, shuffle=False, num_workers=workers,
                            collate_fn=_collate)
        with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False) as bar:
            for idx, batch, errors in loader:
                recs: list[tuple[int, dict[str, Any]]] = []
                if batch is not None:
                    probs = self.method.predict_proba(self._encode(batch))
                    recs += [(i, {"path": paths[i], **r}) for i, r in zip(idx, self._records(probs, top_k))]
                for i, err in errors:
                    log.warning("Skipped %s: %s", paths[i], err)
                    recs.append((i, {"path": paths[i], "error": err}))
                bar.update(len(recs))
                for _, rec in sorted(recs, key=lambda t: t[0]):
                    yield rec

    # -- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, dataset, split: str = "test", cache=None) -> dict[str, Any]:
        """Accuracy, macro-F1 and per-class accuracy on ``dataset``'s ``split``, features through ``cache``
        (a :class:`~clip_adapter.features.FeatureCache` of this backbone; a default one when ``None``)."""
        from .evaluation import evaluate_predictions
        from .features import FeatureCache

        items = dataset.split(split)
        if not items:
            raise ValueError(f"Split {split!r} of dataset {dataset.name} is empty.")
        labels = torch.tensor([it.label for it in items], dtype=torch.long)
        classes = self.classes_
        if list(dataset.classnames) != classes:
            unknown = sorted(set(dataset.classnames) - set(classes))
            if unknown:
                raise ValueError(f"Dataset {dataset.name} has classes the model does not know: {unknown[:10]}; "
                                 f"the model's classes are {classes[:20]}.")
            remap = torch.tensor([classes.index(c) for c in dataset.classnames])
            labels = remap[labels]
        cache = cache or FeatureCache(self.backbone)
        if cache.backbone.id != self.backbone.id:
            raise ValueError(f"The feature cache is for {cache.backbone.id!r}; the model uses {self.backbone.id!r}.")
        pred = self.method.predict(cache.features(items))
        m = evaluate_predictions(pred, labels, classes)
        return {"dataset": dataset.name, "split": split, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                "per_class_accuracy": m["per_class_accuracy"], "n": m["n"], "method": self.method.name,
                "backbone": self.backbone.id, "saved_test_accuracy": self.info.get("test_accuracy"),
                "versions": package_versions(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# -- JSON lines: incremental, resumable -----------------------------------------------------------------------
def _done_paths(out: Path) -> set[str]:
    """Paths already recorded in ``out``; a partial last line (interrupted write) is cut off the file."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s ends with a partial line (interrupted run); it is dropped and that image redone.", out)
        with open(out, "r+b") as f:
            f.truncate(end)
    done = set()
    for n, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(os.path.abspath(json.loads(line)["path"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s line %d is not a prediction record; ignored.", out, n)
    return done


def predict_to_jsonl(model: AdaptedClassifier, images: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                     top_k: int = 5, batch_size: int | None = None, num_workers: int | None = None,
                     progress: bool = False, extra_records: Sequence[dict[str, Any]] = ()) -> dict[str, int]:
    """Append one JSON line per image to ``out``, written as soon as its batch is done; resumable.

    Images whose path is already in ``out`` (from an earlier, possibly interrupted run) are skipped, error records
    included (delete those lines to retry them). Returns counts: ``written``, ``errors``, ``skipped``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_paths(out)
    fresh = [r for r in extra_records if os.path.abspath(r["path"]) not in done]
    todo = [str(p) for p in images if os.path.abspath(str(p)) not in done]
    skipped = len(images) + len(extra_records) - len(todo) - len(fresh)
    if skipped:
        log.info("%s already holds %d of these images; predicting the other %d.", out, skipped, len(todo) + len(fresh))
    counts = {"written": 0, "errors": 0, "skipped": skipped}
    with open(out, "a", encoding="utf-8") as f:
        stream = model.predict_stream(todo, top_k=top_k, batch_size=batch_size, num_workers=num_workers,
                                      progress=progress)
        for rec in itertools.chain(fresh, stream):  # lazily: each record is on disk before the next batch runs
            f.write(json.dumps(rec) + "\n")
            f.flush()
            counts["written"] += 1
            counts["errors"] += "error" in rec
    return counts


# -- CLI ------------------------------------------------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by 'clip-adapter run --save-model DIR'.")
    p.add_argument("--checkpoint", default=None,
                   help="the local backbone checkpoint the model was trained on (needed, and sha256-checked, when "
                        "it was trained on one).")
    p.add_argument("--device", default="cpu", help="torch device for the image encoder, e.g. cpu, cuda (default: cpu).")


def _infer_format(args) -> str:
    if args.format:
        return args.format
    suffix = Path(args.out).suffix.lower() if args.out else ""
    return {".json": "json", ".csv": "csv", ".jsonl": "jsonl"}.get(suffix, "table")


def cmd_predict(args) -> int:
    from .cli import format_table

    fmt = _infer_format(args)
    model = AdaptedClassifier.from_pretrained(args.model_dir, device=args.device, checkpoint=args.checkpoint,
                                              batch_size=args.batch_size)
    paths, bad_args = expand_images(args.images)
    for rec in bad_args:
        log.warning("Skipped %s: %s", rec["path"], rec["error"])
    if not paths and bad_args:
        raise FileNotFoundError(f"No images found in {', '.join(map(str, args.images))}.")
    k = args.top_k or min(5, len(model.classes_))
    if k < 1:
        raise ValueError(f"--top-k must be >= 1; got {k}.")
    progress = not args.no_progress and len(paths) > args.batch_size
    kw = {"top_k": k, "batch_size": args.batch_size, "num_workers": args.workers}

    if fmt == "jsonl" and args.out:
        counts = predict_to_jsonl(model, paths, args.out, progress=progress, extra_records=bad_args, **kw)
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
    if fmt == "json":
        text = json.dumps({"model": str(args.model_dir), "method": model.method.name, "backbone": model.backbone.id,
                           "classes": model.classes_, "top_k": k, "n_images": len(records), "n_errors": n_err,
                           "predictions": records}, indent=2) + "\n"
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "class", "probability", "error"])
        for r in records:
            if "error" in r:
                w.writerow([r["path"], "", "", "", r["error"]])
            else:
                w.writerows([r["path"], j, t["class"], f"{t['probability']:.6f}", ""] for j, t in
                            enumerate(r["top_k"], 1))
        text = buf.getvalue()
    else:
        rows = [{"image": r["path"], "prediction": r.get("prediction", "(error)"), "probability": r.get("probability", ""),
                 f"top-{k}": r["error"] if "error" in r else
                 ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"])} for r in records]
        text = format_table(rows, ["image", "prediction", "probability", f"top-{k}"]) + "\n"
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


def cmd_evaluate(args) -> int:
    from .cli import feature_cache_from_args, format_table
    from .data import load_dataset

    model = AdaptedClassifier.from_pretrained(args.model_dir, device=args.device, checkpoint=args.checkpoint)
    dataset = load_dataset(args.data, root=args.root)
    result = {"model": str(args.model_dir), **model.evaluate(dataset, args.split, feature_cache_from_args(args,
                                                                                                      model.backbone))}
    out = Path(args.out) if args.out else Path(args.model_dir) / f"eval-{dataset.name}-{args.split}.json"
    write_json(out, result)
    row = {"dataset": dataset.name, "split": args.split, "n": result["n"], "accuracy": result["accuracy"],
           "macro-F1": result["macro_f1"]}
    if isinstance(result["saved_test_accuracy"], float):
        row["saved test acc"] = result["saved_test_accuracy"]
    print(format_table([row], list(row)))
    print(f"results: {out}")
    return 0


def add_subcommands(sub) -> None:
    """Register ``predict`` and ``evaluate`` with the ``clip-adapter`` CLI (found by cli.py)."""
    p = sub.add_parser("predict", help="classify images with a saved model (top-k classes and probabilities).",
                       description="Classify image files, folders (recursive) and globs with a model saved by "
                                   "'clip-adapter run --save-model DIR'. Unreadable images are reported and skipped "
                                   "(exit status 1 if any). With --out FILE.jsonl, results are appended as they come "
                                   "and a rerun skips the images already in the file.")
    _add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (searched recursively) or globs.")
    p.add_argument("--top-k", type=int, default=None, help="classes per image (default: 5, or fewer classes).")
    p.add_argument("--format", choices=["table", "json", "csv", "jsonl"], default=None,
                   help="output format (default: from --out's extension, else table).")
    p.add_argument("--out", default=None, help="write to FILE instead of stdout; FILE.jsonl streams and resumes.")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default: 32).")
    p.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: half the cores).")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar.")
    p.set_defaults(func=cmd_predict)

    from .cli import add_data_args
    p = sub.add_parser("evaluate", help="re-compute the accuracy of a saved model on a dataset split.",
                       description="Accuracy and macro-F1 of a saved model on a dataset split (features from the "
                                   "feature cache); the result is written as JSON.")
    _add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to score (default: test).")
    p.add_argument("--out", default=None, help="result JSON (default: MODEL_DIR/eval-<dataset>-<split>.json).")
    p.set_defaults(func=cmd_evaluate)
