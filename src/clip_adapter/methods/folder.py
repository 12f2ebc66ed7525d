"""A saved model folder as untrusted input and as a target: what this tool writes there, how it recognises a folder
of its own (marker keys, not the file name: HF PEFT writes ``adapter_config.json`` too), and the checks made
before a folder is replaced or anything in it is built.

A folder holds ``adapter_config.json`` (stamped ``"library": "clip-adapter"`` and ``"format_version"``),
``adapter_model.safetensors``, the model card ``README.md``, and possibly ``evaluate``'s default outputs
``eval-<dataset>-<split>.json``. Anything else in it is the user's: such a folder is never replaced.
"""
from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import Any

from ..io import recover_dir

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "EVAL_PATTERN", "LIBRARY", "FORMAT_VERSION", "marker",
           "is_own_folder", "foreign_entries", "check_save_target", "read_saved_config", "read_header",
           "check_header", "check_finite_tensors", "REQUIRED_KEYS"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
EVAL_PATTERN = "eval-*.json"  # `clip-adapter evaluate`'s default output, written into the model folder
LIBRARY = "clip-adapter"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("method", "config", "classnames", "embed_dim", "logit_scale")
SAVED_DTYPE = "F32"  # save_pretrained writes every tensor as float32


def marker() -> dict[str, Any]:
    """The keys that say a folder was written by this tool."""
    return {"library": LIBRARY, "format_version": FORMAT_VERSION}


def _config(directory: Path) -> Any:
    try:
        return json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_own_folder(directory: str | Path) -> bool:
    """Whether ``directory``'s ``adapter_config.json`` carries this tool's marker (or, for folders saved before the
    marker existed, this tool's version stamp next to its required keys)."""
    meta = _config(Path(directory))
    if not isinstance(meta, dict):
        return False
    if meta.get("library") == LIBRARY:
        return True
    versions = meta.get("versions")
    return isinstance(versions, dict) and LIBRARY in versions and all(k in meta for k in REQUIRED_KEYS)


def foreign_entries(directory: str | Path) -> list[str]:
    """Names in ``directory`` that this tool does not write into a model folder (subfolders and links included)."""
    out = []
    for p in sorted(Path(directory).iterdir()):
        ours = p.name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) or fnmatch.fnmatch(p.name, EVAL_PATTERN)
        if not ours or p.is_symlink() or not p.is_file():
            out.append(p.name)
    return out


def check_save_target(directory: str | Path, overwrite: bool = False) -> None:
    """A model folder may be new or empty, or replace a model this tool saved (with ``overwrite``); never a file, a
    link, another tool's folder (an HF PEFT adapter has an ``adapter_config.json`` too) or a folder holding files
    this tool did not write. Called before any training, and again just before writing."""
    d = Path(directory)
    if d.is_symlink():
        raise ValueError(f"Cannot save the model to {d}: it is a symbolic link; give the real folder.")
    if d.exists() and not d.is_dir():
        raise ValueError(f"Cannot save the model to {d}: it is an existing file; expected a folder (new, or a saved "
                         f"model to replace).")
    try:
        recover_dir(d)  # an interrupted save's model, set aside, is the one to check (and keep)
    except OSError:
        pass
    if not d.is_dir() or not any(d.iterdir()):
        return
    if not is_own_folder(d):
        names = [p.name for p in sorted(d.iterdir())]
        raise ValueError(f"Cannot save the model to {d}: it is a folder with other content, not a model saved by "
                         f"clip-adapter (it holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
                         f"refusing to replace it. Choose a new folder.")
    foreign = foreign_entries(d)
    if foreign:
        raise ValueError(f"Cannot save the model to {d}: besides a saved model it holds files clip-adapter did not "
                         f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them away or "
                         f"choose a new folder.")
    if not overwrite:
        raise ValueError(f"Cannot save the model to {d}: it already holds a saved model; pass --overwrite "
                         f"(save_pretrained(..., overwrite=True)) to replace it, or choose a new folder.")


def _no_constant(name: str) -> Any:
    raise ValueError(f"the non-finite number {name}")


def read_saved_config(directory: str | Path) -> dict[str, Any]:
    """The ``adapter_config.json`` of a saved model folder, checked; one-line errors name the file.

    Refused: NaN / Infinity anywhere, a missing or mistyped required key, a format newer than this version reads,
    class names that are not unique."""
    directory = Path(directory)
    if not directory.is_dir():
        try:
            recover_dir(directory)  # a kill between atomic_dir's two renames left the model aside
        except OSError:
            pass
    cfg_file, w_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not directory.is_dir():
        raise FileNotFoundError(f"Model directory {directory} not found.")
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found; expected a folder written by save_pretrained "
                                    f"(clip-adapter run --save-model DIR).")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError and NaN/Infinity
        reason = str(e) if str(e).startswith("the non-finite") else f"{type(e).__name__}: {e}"
        raise ValueError(f"{cfg_file} is not valid JSON ({reason}).") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object; got {type(meta).__name__}.")
    if meta.get("library", LIBRARY) != LIBRARY:
        raise ValueError(f"{cfg_file} was written by {meta['library']!r}, not by clip-adapter.")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
        raise ValueError(f"{cfg_file}: format_version {version!r} is not one this clip-adapter reads (1.."
                         f"{FORMAT_VERSION}); upgrade clip-adapter.")
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise ValueError(f"{cfg_file} lacks the required key {key!r}.")
    checks = {"method": isinstance(meta["method"], str), "config": isinstance(meta["config"], dict),
              "classnames": isinstance(meta["classnames"], list) and bool(meta["classnames"])
              and all(isinstance(c, str) for c in meta["classnames"]),
              "embed_dim": isinstance(meta["embed_dim"], int) and not isinstance(meta["embed_dim"], bool)
              and meta["embed_dim"] > 0,
              "logit_scale": isinstance(meta["logit_scale"], (int, float)) and not isinstance(meta["logit_scale"], bool)
              and math.isfinite(meta["logit_scale"]) and meta["logit_scale"] > 0}
    expected = {"method": "a method name", "config": "an object", "classnames": "a non-empty list of strings",
                "embed_dim": "an int > 0", "logit_scale": "a finite number > 0"}
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{cfg_file}: {key!r} must be {expected[key]}. Got {_short(meta[key])} instead.")
    seen: set[str] = set()
    for c in meta["classnames"]:
        if c in seen:
            raise ValueError(f"{cfg_file}: the class name {c!r} appears twice; class names must be unique.")
        seen.add(c)
    return meta


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_header(w_file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype, shape), read from the file's header only (nothing is allocated)."""
    from safetensors import safe_open
    try:
        with safe_open(str(w_file), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (str(sl.get_dtype()), tuple(int(s) for s in sl.get_shape()))
            return out
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{w_file} could not be read as safetensors ({str(e).splitlines()[0] if str(e) else e!r})."
                         ) from None


def check_header(header: dict[str, tuple[str, tuple[int, ...]]], meta: dict[str, Any], w_file: Path,
                 cfg_file: Path) -> None:
    """The tensors' dtypes and the shapes the config declares, checked against the safetensors header before
    anything is built: a config cannot make loading allocate more than the file holds."""
    for name, (dtype, _) in sorted(header.items()):
        if dtype != SAVED_DTYPE:
            raise ValueError(f"{w_file}: tensor {name!r} has dtype {dtype}; clip-adapter saves float32 (F32) only.")
    text = header.get("fixed.text_features")
    n_classes, dim = len(meta["classnames"]), int(meta["embed_dim"])
    if text is not None and text[1] != (n_classes, dim):
        raise ValueError(f"{w_file}: its class text features have shape {text[1]}, but {cfg_file} lists "
                         f"{n_classes} classes of dim {dim}.")
    if text is None and not any(dim in shape for _, shape in header.values()):
        raise ValueError(f"{cfg_file} declares embed_dim {dim}, but no tensor of {w_file} has that size.")


def check_finite_tensors(tensors: dict[str, Any], w_file: Path) -> None:
    """Non-finite weights would give NaN probabilities with exit status 0: a one-line error instead."""
    import torch
    for name, t in sorted(tensors.items()):
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{w_file}: tensor {name!r} holds {bad} non-finite values (NaN or inf); the model is "
                             f"damaged.")
