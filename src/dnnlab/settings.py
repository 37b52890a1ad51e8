"""Settings that carry their help text and valid range, written once.

A config dataclass declares each setting with `setting(default, help, low=..., ...)`;
`validate(cfg)` checks them all (call it from `__post_init__`), `add_flags(parser, Cls)` makes
the command-line flags from the same declarations and `from_args(Cls, args)` builds the config
back from parsed flags. So a default, its range and its help text live in one place.

    @dataclass
    class TrainConfig:
        lr: float = setting(0.01, "learning rate", low=0, low_open=True)
        def __post_init__(self):
            validate(self)
"""

from __future__ import annotations

import argparse
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from dnnlab.errors import ConfigError


@dataclass(frozen=True)
class Spec:
    """What a setting accepts; `describe()` is the text --help shows."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    choices: tuple | None = None
    flag: str | None = None  # the command-line name when it is not --field-name
    cli: bool = True  # False: not a command-line flag (set by code)
    default_text: str | None = None  # what --help says of the default, when not the value

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        lo = None if self.low is None else ("> " if self.low_open else ">= ") + _num(self.low)
        hi = None if self.high is None else ("< " if self.high_open else "<= ") + _num(self.high)
        if lo and hi:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        return lo or hi or ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def setting(
    default,
    help: str,
    *,
    low=None,
    high=None,
    low_open=False,
    high_open=False,
    choices=None,
    flag=None,
    cli=True,
    default_text=None,
):
    """A dataclass field with its help text and valid range (see the module docstring)."""
    choices = tuple(choices) if choices is not None else None
    spec = Spec(help, low, high, low_open, high_open, choices, flag, cli, default_text)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


def flag_name(f) -> str:
    spec = f.metadata.get("spec")
    return (spec.flag if spec and spec.flag else None) or "--" + f.name.replace("_", "-")


def given_as(f, value) -> str:
    """How the setting `f` takes `value` on the command line: "--lr 0.5"; for a switch, "with
    SWITCH" or "without SWITCH", SWITCH being the flag that changes it from its default
    (--no-bf16 for one on by default)."""
    default = _default(f)
    if not isinstance(default, bool):
        return f"{flag_name(f)} {value}"
    switch = "--no-" + flag_name(f)[2:] if default else flag_name(f)
    return f"{'without' if value == default else 'with'} {switch}"


def _base_type(cls, name: str):
    """(python type, optional) of a field from its annotation: int, float, str, bool, tuple."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else rest
    if isinstance(hint, list):  # e.g. list[str] | str: no single type
        return None, optional
    origin = typing.get_origin(hint) or hint
    return origin, optional


def check_value(flag: str, value, spec: Spec, kind, optional: bool) -> None:
    """Raise ConfigError naming `flag` when `value` is not what `spec` and `kind` allow."""
    if value is None:
        if optional:
            return
        raise ConfigError(f"{flag}: a value is required")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag}: {value!r} is not true or false")
        return
    if kind is str and not isinstance(value, str | os.PathLike):  # from a file or a caller
        raise ConfigError(f"{flag}: {value!r} is not text")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{flag}: {value!r} is not a number")
        # An int is checked as it is: float() of a huge one (10**400) overflows.
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag}: {value} is not a finite number")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{flag}: {value} is not a whole number")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{flag}: {value!r} is not {spec.describe()}")
    if kind in (int, float):
        too_low = spec.low is not None and (
            value < spec.low or (spec.low_open and value == spec.low)
        )
        too_high = spec.high is not None and (
            value > spec.high or (spec.high_open and value == spec.high)
        )
        if too_low or too_high:
            raise ConfigError(f"{flag}: {value} is out of range; it must be {spec.describe()}")


def validate(cfg) -> None:
    """Check every `setting` field of a config dataclass instance."""
    cls = type(cfg)
    for f in fields(cfg):
        spec = f.metadata.get("spec")
        if spec is None:
            continue
        kind, optional = _base_type(cls, f.name)
        check_value(_named(f, kind), getattr(cfg, f.name), spec, kind, optional)


def _named(f, kind) -> str:
    """How an error names setting `f`: by its flag; a bool by its key and the flag that
    changes it from its default (--no-x when on by default), since only a file or a caller
    can give one a bad value."""
    if kind is not bool:
        return flag_name(f)
    flag = flag_name(f)
    return f"{f.name} ({'--no-' + flag[2:] if _default(f) else flag})"


def _parse_list(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give a comma-separated list")
    return items


def add_flags(parser: argparse.ArgumentParser, cls, names=None, exclude=()) -> None:
    """Add one flag per `setting` field of `cls` (all, or `names`, minus `exclude`)."""
    wanted = None if names is None else set(names)
    for f in fields(cls):
        spec = f.metadata.get("spec")
        if spec is None or not spec.cli or f.name in exclude:
            continue
        if wanted is not None and f.name not in wanted:
            continue
        default = _default(f)
        kind, optional = _base_type(cls, f.name)
        flag = flag_name(f)
        rng = spec.describe()
        extra = "; ".join(x for x in (rng, default_text(f)) if x)
        text = f"{spec.help} ({extra})"
        if kind is bool:
            if default:  # on by default: --no-x turns it off, --x (over a --preset) on
                switch = parser.add_argument(
                    flag, dest=f.name, action=argparse.BooleanOptionalAction, default=True
                )
                # Set after: given at the start, argparse would append "(default: ...)".
                switch.help = f"{spec.help} (on by default)".replace("%", "%%")
            else:
                parser.add_argument(
                    flag, dest=f.name, action="store_true", help=spec.help.replace("%", "%%")
                )
            continue
        conv = {int: int, float: float, tuple: _parse_list}.get(kind, str)
        parser.add_argument(
            flag,
            dest=f.name,
            type=conv,
            default=default,
            help=text.replace("%", "%%"),
            metavar=_metavar(spec, flag),
        )


def _metavar(spec: Spec, flag: str) -> str:
    """What usage shows for a flag's value: its choices ({a,b}) where it has them (the config
    checks them, so argparse is not given them), else the flag's name (--val-size VAL_SIZE)."""
    if spec.choices is not None:
        return "{" + ",".join(map(str, spec.choices)) + "}"
    return flag[2:].upper().replace("-", "_")


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def default_text(f) -> str:
    """What --help says of a `setting` field's default: its default_text, else the value."""
    return f.metadata["spec"].default_text or f"default {_show(_default(f))}"


def _show(v) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or "none"
    return "none" if v is None else str(v)


def from_args(cls, args: argparse.Namespace, **extra):
    """Build `cls` from parsed flags (the fields add_flags added), plus `extra` values."""
    ns = vars(args)
    kw = {f.name: ns[f.name] for f in fields(cls) if f.name in ns and f.metadata.get("spec")}
    kw.update(extra)
    return cls(**kw)


class _Unset:
    """The parser's default for a setting whose command tells a flag not given from one given
    with its default value (train, study, detect: a resumed run keeps its own value, and a
    --preset or --quick fills in only the flags not given)."""

    def __repr__(self) -> str:
        return "unset"


UNSET = _Unset()


def unset_defaults(*classes) -> dict:
    """UNSET for every setting of the config classes, as `parser.set_defaults` takes them."""
    return {f.name: UNSET for cls in classes for f in fields(cls) if f.metadata.get("spec")}


def given_flags(args: argparse.Namespace, cls) -> dict:
    """The settings of config class `cls` given on the command line (those whose parser
    default is UNSET and that were not left at it)."""
    return {
        f.name: getattr(args, f.name)
        for f in fields(cls)
        if getattr(args, f.name, UNSET) is not UNSET
    }
