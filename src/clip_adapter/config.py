"""Declarative value constraints, the one error message shape, the one "did you mean", and the one config style.

Every config (each method's, :class:`~clip_adapter.protocol.RunSpec`, the experiment schema in
:mod:`clip_adapter.experiment.schema`) declares a field's default, doc and constraint together with
:func:`setting`, instead of hand-coding checks::

    @dataclass(frozen=True)
    class ClipAdapterConfig(TrainingConfig):
        alpha: float = setting(0.2, "residual ratio of the image adapter", Interval(float, 0, 1))

Every violation raises the same one-line ``ValueError``, e.g.
``The 'alpha' parameter of ClipAdapterConfig must be a float in [0, 1]. Got 1.5 instead.``
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import reprlib
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping

__all__ = ["Constraint", "Interval", "Options", "Bool", "Text", "NoneOr", "IntList", "Predicate", "closest", "suggest",
           "unknown_key", "invalid_value", "SettingError", "check_keys", "invalid_examples", "setting", "Setting", "settings_of", "settings_table", "shown", "value_kind", "Config",
           "MethodConfig", "brief", "HP_SELECTION"]

# How hyper-parameters are chosen (RunSpec.hp_selection, `run --hp-selection`, the experiment's `hp_selection`):
# on min(K, 4) val images per class, on the whole val split, or not at all (the config's values). Here, in a
# torch-free module, so the command line's --help lists the choices without importing torch.
HP_SELECTION = ("few_shot_val", "full_val", "none")


# -- messages ------------------------------------------------------------------------------------------------
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 3, 80, 80, 40
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 6


def brief(value: Any) -> str:
    """``repr(value)`` capped (a few items per level, a few levels, 80 characters per string): what an error message
    shows of a value, so a huge or deeply shared value (a YAML alias bomb) costs nothing to print."""
    return _BRIEF.repr(value)


def closest(key: object, valid: Iterable[str]) -> str | None:
    """The entry of ``valid`` nearest to ``key`` (difflib's ratio >= 0.6), or None: the one "did you mean"."""
    near = difflib.get_close_matches(str(key), list(valid), n=1)
    return near[0] if near else None


def suggest(key: object, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid`` to ``key``, else ``""``."""
    near = closest(key, valid)
    return f" (did you mean {brief(near)}?)" if near else ""


def unknown_key(what: str, key: object, valid: Iterable[str], where: str = "") -> ValueError:
    """``[where: ]Unknown <what> 'key' (did you mean 'x'?). Valid: a, b, c.``"""
    valid = sorted(valid)
    prefix = f"{where}: " if where else ""
    return ValueError(f"{prefix}Unknown {what} {brief(key)}{suggest(key, valid)}. Valid: {', '.join(valid)}.")


def invalid_value(name: str, value: Any, expected: str, *, owner: str | None = None, where: str = "") -> ValueError:
    """The one shape of a bad value: ``The 'name' parameter of Owner must be <expected>. Got <value> instead.``,
    or ``<where>: 'name' must be <expected>. Got <value> instead.`` for settings that belong to a file."""
    head = f"The {name!r} parameter of {owner}" if owner else (f"{where}: {name!r}" if where else repr(name))
    return ValueError(f"{head} must be {expected}. Got {brief(value)} instead.")


class SettingError(ValueError):
    """A value that fails its :func:`setting`'s check, raised by :class:`Config` in the one message shape; it keeps
    the config class, the setting and the value, so that a reader of a file (the experiment schema) can say the same
    thing in the file's terms (its key, where in the file, the value as written)."""

    def __init__(self, owner: type, setting: "Setting", value: Any):
        super().__init__(str(invalid_value(setting.name, value, setting.accepts, owner=owner.__name__)))
        self.owner, self.setting, self.value = owner, setting, value


def check_keys(d: Mapping, valid: Iterable[str], where: str) -> None:
    """Every key of ``d`` is one of ``valid``, else ``<where>: unknown key 'k' (did you mean ...). Valid keys: ...``."""
    valid = list(valid)
    for k in d:
        if k not in valid:
            raise ValueError(f"{where}: unknown key {brief(k)}{suggest(k, valid)}. Valid keys: {', '.join(valid)}.")


# -- constraints ---------------------------------------------------------------------------------------------
class Constraint:
    """What a value must be: :meth:`ok` tests it, :meth:`describe` says it ("an int >= 1")."""

    def ok(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Interval(Constraint):
    """A finite number in a range: ``Interval(int, 1)`` is "an int >= 1", ``Interval(float, 0, 1)`` "a float in
    [0, 1]". ``closed`` says which ends are included ("both", "left", "right", "neither"); a float range accepts
    ints too, never bools, NaN or infinities."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    text: str | None = None   # the description, when the default wording does not fit

    def ok(self, v: Any) -> bool:
        if not (_is_int(v) if self.kind is int else _is_number(v)) or not math.isfinite(v):
            return False
        lo_in, hi_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and (v < self.low or (v == self.low and not lo_in)):
            return False
        return self.high is None or v < self.high or (v == self.high and hi_in)

    def describe(self) -> str:
        if self.text:
            return self.text
        name = "an int" if self.kind is int else "a float"
        if self.low is None and self.high is None:
            return name
        lo_in, hi_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        fmt = (lambda v: str(int(v))) if self.kind is int else (lambda v: f"{v:g}")
        if self.kind is int and self.high is None and self.low is not None:
            return f"{name} {'>=' if lo_in else '>'} {fmt(self.low)}"
        lo = "-inf" if self.low is None else fmt(self.low)
        hi = "inf" if self.high is None else fmt(self.high)
        return f"{name} in {'[' if lo_in and self.low is not None else '('}{lo}, {hi}" \
               f"{']' if hi_in and self.high is not None else ')'}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values: "one of 'image', 'text', 'both'"."""

    values: tuple

    def ok(self, v: Any) -> bool:
        return any(v == x and type(v) is type(x) for x in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(x) for x in self.values)


@dataclass(frozen=True)
class Bool(Constraint):
    """``True`` or ``False`` (not 0/1, not "yes")."""

    def ok(self, v: Any) -> bool:
        return isinstance(v, bool)

    def describe(self) -> str:
        return "a bool"


@dataclass(frozen=True)
class Text(Constraint):
    """A string; ``nonempty`` rejects "" (and whitespace), ``no_slash`` rejects "/" (names that become folders)."""

    nonempty: bool = True
    no_slash: bool = False
    text: str | None = None

    def ok(self, v: Any) -> bool:
        return isinstance(v, str) and (not self.nonempty or bool(v.strip())) and not (self.no_slash and "/" in v)

    def describe(self) -> str:
        if self.text:
            return self.text
        what = "a non-empty string" if self.nonempty else "a string"
        return what + (" without '/'" if self.no_slash else "")


@dataclass(frozen=True)
class NoneOr(Constraint):
    """``None`` or a value that passes ``inner``: "an int >= 1 or null"."""

    inner: Constraint
    none: str = "null"

    def ok(self, v: Any) -> bool:
        return v is None or self.inner.ok(v)

    def describe(self) -> str:
        return f"{self.inner.describe()} or {self.none}"


@dataclass(frozen=True)
class IntList(Constraint):
    """A non-empty list of distinct ints (a single int is read as a one-element list by the parsers)."""

    minimum: int | None = None

    def ok(self, v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) for x in v)
                and (self.minimum is None or all(x >= self.minimum for x in v)) and len(set(v)) == len(v))

    def describe(self) -> str:
        bound = f" >= {self.minimum}" if self.minimum is not None else ""
        return f"a non-empty list of distinct ints{bound}"


@dataclass(frozen=True)
class Predicate(Constraint):
    """Any test with its own wording, for the rare constraint the others do not express."""

    test: Any
    text: str

    def ok(self, v: Any) -> bool:
        try:
            return bool(self.test(v))
        except (TypeError, ValueError):
            return False

    def describe(self) -> str:
        return self.text


def invalid_examples(constraint: Constraint) -> list[Any]:
    """Values ``constraint`` rejects (scikit-learn's ``generate_invalid_param_val``): a value of the wrong type plus,
    for a range, one just outside each finite end. Tests feed each to the config to check its message."""
    if isinstance(constraint, NoneOr):
        return [v for v in invalid_examples(constraint.inner) if v is not None]
    out: list[Any] = [object()]  # of no accepted type
    if isinstance(constraint, Interval):
        out += ["1", math.nan, True]
        step = 1 if constraint.kind is int else 1e-9
        if constraint.low is not None:
            out.append(constraint.low if constraint.closed in ("right", "neither") else constraint.low - step)
        if constraint.high is not None:
            out.append(constraint.high if constraint.closed in ("left", "neither") else constraint.high + step)
    elif isinstance(constraint, Options):
        out.append("not-one-of-" + "-".join(map(str, constraint.values)))
    elif isinstance(constraint, Bool):
        out += [1, "yes"]
    elif isinstance(constraint, Text):
        out += [3, *([""] if constraint.nonempty else []), *(["a/b"] if constraint.no_slash else [])]
    elif isinstance(constraint, IntList):
        out += [[], [1, 1], [1.5]]
    return [v for v in out if not constraint.ok(v)]


# -- settings: a field's default, doc and constraint in one place ------------------------------------------
def setting(default: Any = dataclasses.MISSING, doc: str = "", check: Constraint | None = None, *,
            factory: Callable[[], Any] | None = None, key: str | None = None, path: bool = False,
            parse: Callable[..., Any] | None = None, shown: str | None = None, accepts: str | None = None) -> Any:
    """A config field with its docs and its constraint (PEFT's ``field(metadata={"help": ...})``, sklearn's
    ``_parameter_constraints``, in one place)::

        alpha: float = setting(0.2, "residual ratio of the image adapter", Interval(float, 0, 1))

    ``check`` is what a value must be (checked by :class:`Config`'s ``__post_init__``, also when the experiment
    schema reads a file: it says a failure in the file's terms). A subclass that only changes a default writes ``setting(300)``: ``doc`` and
    ``check`` left out are its base's. The file-facing extras: ``key`` (the name in a file when it differs),
    ``path`` (resolved against the file's folder), ``parse(value, where, ctx)`` (a parser for a structured value,
    described by ``accepts``), ``shown`` (the default as the docs show it)."""
    meta = {"doc": doc, "check": check, "key": key, "path": path, "parse": parse, "shown": shown, "accepts": accepts}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One field of a config as the docs, the command line and the checks see it (inherited parts resolved)."""

    name: str
    type: str           # the annotation as written: "float", "int | None"
    default: Any        # dataclasses.MISSING when required; a default_factory's value otherwise
    doc: str
    check: Constraint | None
    key: str | None = None
    path: bool = False
    parse: Callable[..., Any] | None = None
    shown: str | None = None
    accepts: str | None = None

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def _meta(klass: type, name: str) -> Mapping[str, Any]:
    f = klass.__dict__.get("__dataclass_fields__", {}).get(name)
    return f.metadata if f is not None else {}


_SETTINGS: dict[type, tuple[Setting, ...]] = {}


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The :class:`Setting` of every field of the dataclass ``cls``, in field order; a ``doc`` or ``check`` a field
    leaves out is taken from the nearest base class that declares it."""
    if cls not in _SETTINGS:
        out = []
        for f in fields(cls):
            found: dict[str, Any] = {}
            for klass in cls.__mro__:
                meta = _meta(klass, f.name)
                for k in ("doc", "check"):
                    if k not in found and meta.get(k):
                        found[k] = meta[k]
            meta = f.metadata
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            check = found.get("check")
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))  # no __future__
            out.append(Setting(f.name, kind, default, found.get("doc", ""), check, key=meta.get("key"),
                               path=bool(meta.get("path")), parse=meta.get("parse"), shown=meta.get("shown"),
                               accepts=meta.get("accepts") or (check.describe() if check is not None else None)))
        _SETTINGS[cls] = tuple(out)
    return _SETTINGS[cls]


def shown(value: Any) -> str:
    """A default as the generated references show it: YAML's spelling (null, true, [1, 2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(list(value)) if isinstance(value, tuple) else str(value)


def settings_table(rows: Iterable[Setting], *, head: str = "key", types: bool = False) -> list[str]:
    """The markdown table of generated references (``docs/experiment-config.md``, ``docs/method-config.md``): one
    row per setting with its name, [type,] default, what it accepts and what it means."""
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|")

    cols = [head, *(["type"] if types else []), "default", "accepts", "meaning"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for x in rows:
        default = x.shown or ("required" if x.required else shown(x.default))
        kind = [f"`{cell(x.type)}`"] if types else []
        out.append("| " + " | ".join([f"`{x.key or x.name}`", *kind, cell(default), cell(x.accepts or "any"),
                                      cell(x.doc)]) + " |")
    return out


class Config:
    """Base of every validated config (each method's config, :class:`~clip_adapter.protocol.RunSpec`, the experiment
    schema's entries): a dataclass whose fields are made by :func:`setting`.

    Construction checks every field against its ``check`` (one line, a :class:`SettingError`: ``The 'alpha'
    parameter of ClipAdapterConfig must be a float in [0, 1]. Got 1.5 instead.``), then :meth:`validate` (the rare
    check spanning fields).
    :meth:`replace` changes values through the same checks; an unknown name is an error with the closest field.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "constraints" in cls.__dict__:   # the old style would be silently ignored: say what to write instead
            raise TypeError(f"{cls.__name__}: a 'constraints' dict is no longer read; declare each field as "
                            f"name: type = setting(default, doc, constraint) (clip_adapter.config.setting).")

    def __post_init__(self) -> None:
        for s in self.settings():
            self.check_value(s.name, getattr(self, s.name))
        self.validate()

    @classmethod
    def check_value(cls, name: str, value: Any) -> None:
        """``value`` passes the check of field ``name``, else a one-line :class:`SettingError` (a ``ValueError``):
        the check construction runs, for the rare value needed before the config exists (the experiment's data
        root, which its datasets read)."""
        s = next(x for x in cls.settings() if x.name == name)
        if s.check is not None and not s.check.ok(value):
            raise SettingError(cls, s, value)

    def validate(self) -> None:
        """Checks that span several fields; raise :func:`invalid_value`. Nothing by default."""

    @classmethod
    def settings(cls) -> tuple[Setting, ...]:
        """Every field with its default, doc and constraint (:func:`settings_of`)."""
        return settings_of(cls)

    @classmethod
    def all_constraints(cls) -> dict[str, Constraint]:
        """field -> constraint, for the fields that have one (the common tests make invalid values from these)."""
        return {s.name: s.check for s in cls.settings() if s.check is not None}

    @classmethod
    def field_names(cls) -> list[str]:
        return sorted(f.name for f in fields(cls))

    @classmethod
    def check_field_names(cls, names: Iterable[str], what: str = "key", where: str = "") -> None:
        """Every name is a field of this config, else one line with the closest field and the valid ones."""
        for k in names:
            if k not in cls.field_names():
                raise unknown_key(f"{cls.__name__} {what}", k, cls.field_names(), where)

    def replace(self, **changes: Any):
        """A copy with ``changes``, validated as a new config is (``dataclasses.replace`` plus the "did you mean"
        of an unknown name)."""
        self.check_field_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- method configs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodConfig(Config):
    """Base of every method config: a frozen dataclass of :func:`setting` fields, validated on construction.

    A method declares its fields as ``alpha: float = setting(0.2, "what it means", Interval(float, 0, 1))``; the
    rare check that spans fields goes in :meth:`validate`. Change a value with ``cfg.replace(alpha=0.6)`` (validated
    again). ``docs/method-config.md`` is generated from these declarations.
    """

    # numpy/scikit-learn seeds are 0..2**32-1
    seed: int = setting(1, "seeds weight init and batch order of trained methods", Interval(int, 0, 2**32 - 1))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "MethodConfig":
        """Build from a dict; unknown keys (e.g. written by a newer version) are dropped with a warning."""
        names = set(cls.field_names())
        unknown = sorted(set(d) - names)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown {cls.__name__} keys {unknown}.", stacklevel=2)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    @classmethod
    def parse_overrides(cls, pairs: list[str]) -> dict[str, Any]:
        """``["alpha=0.6", "epochs=50"]`` -> typed dict; an unknown key is an error with a suggestion."""
        out: dict[str, Any] = {}
        types = {x.name: x.type for x in cls.settings()}
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"Override {pair!r} must look like key=value.")
            k, v = pair.split("=", 1)
            k = k.strip().replace("-", "_")
            cls.check_field_names([k])
            out[k] = _coerce(k, v.strip(), types[k])
        return out


def value_kind(type_text: str) -> tuple[str | None, bool]:
    """``"int | None"`` -> ``("int", True)``: the one kind of a field's values among int, float, bool and str (None
    for anything else) and whether it may be None."""
    parts = [t.strip() for t in type_text.split("|")]
    kinds = [t for t in parts if t != "None"]
    return (kinds[0] if len(kinds) == 1 and kinds[0] in ("int", "float", "bool", "str") else None), "None" in parts


def _coerce(key: str, v: str, type_text: str) -> Any:
    """The string of a ``key=value`` override as a value of the field's type (``none``/``null`` for None when the
    field may be None; JSON for a type other than int, float, bool, str)."""
    kind, optional = value_kind(type_text)
    if optional and v.lower() in ("none", "null"):
        return None
    if kind == "bool":
        if v.lower() in ("1", "true", "yes"):
            return True
        if v.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"Override {key}={v!r}: expected true or false.")
    try:
        if kind == "int":
            return int(v)
        if kind == "float":
            return float(v)
    except ValueError:
        raise ValueError(f"Override {key}={v!r}: expected {'an int' if kind == 'int' else 'a number'}.") from None
    if kind is None:
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v
