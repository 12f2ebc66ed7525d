"""Method configs: frozen dataclasses validated on construction, with sklearn-shaped error messages."""
from __future__ import annotations

import dataclasses
import difflib
import json
import warnings
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["MethodConfig"]


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config: a frozen dataclass validated on construction.

    Change a value with ``dataclasses.replace(cfg, alpha=0.6)`` (validates again).
    """

    seed: int = 1  # seeds weight init and batch order of trained methods

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message for an invalid value; subclasses extend."""

    def _check(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"The {name!r} parameter of {type(self).__name__} must be {expected}. "
                             f"Got {getattr(self, name)!r} instead.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "MethodConfig":
        """Build from a dict; unknown keys (e.g. written by a newer version) are dropped with a warning."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown {cls.__name__} keys {unknown}.", stacklevel=2)
        kw = {}
        for f in fields(cls):
            if f.name in d:
                v = d[f.name]
                kw[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    @classmethod
    def parse_overrides(cls, pairs: list[str]) -> dict[str, Any]:
        """``["alpha=0.6", "epochs=50"]`` -> typed dict; an unknown key is an error with a suggestion."""
        out: dict[str, Any] = {}
        types = {f.name: f for f in fields(cls)}
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"Override {pair!r} must look like key=value.")
            k, v = pair.split("=", 1)
            k = k.strip().replace("-", "_")
            if k not in types:
                near = difflib.get_close_matches(k, list(types), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"Unknown {cls.__name__} key {k!r}{hint}. Valid keys: {', '.join(sorted(types))}.")
            default = getattr(cls(), k) if _has_defaults(cls) else None
            out[k] = _coerce(v.strip(), default)
        return out


def _has_defaults(cls) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in fields(cls))


def _coerce(v: str, like: Any) -> Any:
    if isinstance(like, bool):
        if v.lower() in ("1", "true", "yes"):
            return True
        if v.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"Expected true/false, got {v!r}.")
    if isinstance(like, int):
        return int(v)
    if isinstance(like, float):
        return float(v)
    if like is None:
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v
