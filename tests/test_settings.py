"""The settings helper: ranges checked with the flag named, flags generated from the fields."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from dnnlab.errors import ConfigError
from dnnlab.settings import add_flags, from_args, setting, validate


@dataclass
class Toy:
    lr: float = setting(0.01, "learning rate", low=0, low_open=True)
    epochs: int = setting(3, "epochs", low=1)
    frac: float = setting(0.5, "a fraction", low=0, high=1)
    subset: int | None = setting(None, "subset size", low=1)
    mode: str = setting("a", "mode", choices=("a", "b"))
    names: tuple[str, ...] = setting(("x", "y"), "names")
    fast: bool = setting(False, "go fast")
    check: bool = setting(True, "check (on by default: the flag is --no-check)")
    val_size: int = setting(10, "validation images", low=1, flag="--val")
    where: str = setting("here", "a folder")
    memory: str | int = setting("2GB", "a size, as text or bytes")

    def __post_init__(self):
        validate(self)


@pytest.mark.parametrize(
    "kw, text",
    [
        ({"lr": float("nan")}, "--lr: nan is not a finite number"),
        ({"lr": 0.0}, "--lr: 0.0 is out of range; it must be > 0"),
        ({"epochs": 0}, "--epochs: 0 is out of range; it must be >= 1"),
        ({"epochs": 2.5}, "--epochs: 2.5 is not a whole number"),
        ({"frac": 1.5}, "--frac: 1.5 is out of range; it must be in [0, 1]"),
        ({"subset": 0}, "--subset: 0 is out of range"),
        ({"mode": "c"}, "--mode: 'c' is not one of a, b"),
        ({"val_size": -4}, "--val: -4 is out of range"),
        ({"epochs": True}, "--epochs: True is not a number"),
        ({"epochs": -(10**400)}, f"--epochs: {-(10**400)} is out of range"),  # no overflow
        # A bool gets a bad value only from a file or a caller: named by its key and by the
        # flag that exists.
        ({"fast": "yes"}, "fast (--fast): 'yes' is not true or false"),
        ({"check": 1}, "check (--no-check): 1 is not true or false"),
        ({"mode": 5}, "--mode: 5 is not text"),
        ({"where": ["a"]}, "--where: ['a'] is not text"),
    ],
)
def test_out_of_range_names_the_flag(kw, text):
    with pytest.raises(ConfigError, match=re.escape(text)):
        Toy(**kw)


def test_valid_values_and_none_for_optional():
    t = Toy(lr=0.1, epochs=1, frac=0, subset=None, mode="b")
    assert (t.lr, t.epochs, t.frac, t.subset, t.mode) == (0.1, 1, 0, None, "b")
    # Text settings take a path too; a setting typed str | int takes either.
    assert Toy(where=Path("p"), memory=10**6).memory == 10**6


def test_flags_from_fields_round_trip_and_help_shows_range():
    p = argparse.ArgumentParser()
    add_flags(p, Toy)
    args = p.parse_args(["--lr", "0.2", "--names", "a,b", "--fast", "--val", "7"])
    t = from_args(Toy, args)
    assert (t.lr, t.names, t.fast, t.val_size, t.epochs) == (0.2, ("a", "b"), True, 7, 3)
    text = p.format_help()
    assert "> 0; default 0.01" in text and "in [0, 1]" in text
    assert "--mode {a,b}" in text and "--val VAL" in text and "--check, --no-check" in text
    # A switch on by default is turned off by --no-check, and --check (over a preset) on.
    assert not p.parse_args(["--no-check"]).check and p.parse_args(["--check"]).check
    assert "(default: True)" not in text  # argparse's own suffix: the help says "on by default"
    with pytest.raises(ConfigError, match="--lr"):
        from_args(Toy, p.parse_args(["--lr", "nan"]))
    with pytest.raises(SystemExit):  # an empty list is refused by the parser itself
        p.parse_args(["--names", ","])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "9" * 400 + "GB"])
def test_a_memory_size_that_is_not_finite_is_named(value):
    """Not a ValueError or OverflowError from int(): the command line and study.json both
    reach parse_size (`dnnlab si --max-memory 999...9GB`)."""
    from dnnlab.errors import InputError
    from dnnlab.utils.sizes import parse_size

    with pytest.raises(InputError, match="size"):
        parse_size(value)
