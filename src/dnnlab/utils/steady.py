"""Inputs that hold still: a file is read as one version of itself, or refused.

A file that changes while a command reads it (rewritten in place, or replaced by a rename
over its name) would give numbers that belong to neither version. So an input file is:

- refused before any byte is read when it is not a regular file: a named pipe would make the
  command wait forever for a writer, a device could never end (`check_regular`);
- opened once (`open_regular`, which never blocks, even on a pipe swapped in after the
  check), its identity (device, inode, size, modification time in ns) taken from the open
  descriptor (`Identity`);
- checked at the end (`check_unchanged`): the descriptor's file must still have that size
  and modification time, and the name must still lead to it. A change is an InputError
  naming the file.

A file read whole by a library that opens it by name (numpy, torch, safetensors) is read
inside `held_still`, which takes the identity from the name before and checks it after.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dnnlab.errors import InputError

_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def not_regular(mode: int) -> str | None:
    """What a file of this st_mode is when it is not a regular file ("a named pipe
    (FIFO)", "a folder", ...), else None."""
    for test, what in _SPECIAL:
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "not a regular file"


def special_reason(path) -> str | None:
    """What the file at `path` is when it exists and is not a regular file ("a named pipe
    (FIFO)", ...), else None: for readers that count a bad file and go on."""
    try:
        return not_regular(os.stat(path).st_mode)
    except OSError:
        return None  # missing: the reader says so in its own words


def refusal(path, what: str, flag: str | None = None) -> InputError:
    """The one-line refusal of an input that is not a regular file."""
    named = f"{flag} {path}" if flag else str(path)
    if what == "a folder":
        return InputError(f"{named}: a folder, not a file")
    return InputError(
        f"{named}: {what}, not a regular file; dnnlab reads inputs only from regular files "
        "(save the data to a file first)"
    )


def check_regular(path, flag: str | None = None) -> os.stat_result:
    """The file's stat (symlinks followed); refused, naming the flag and the path, when it is
    not a regular file. The path exists (the caller said why when it does not)."""
    st = os.stat(path)
    what = not_regular(st.st_mode)
    if what is not None:
        raise refusal(path, what, flag)
    return st


@dataclass(frozen=True)
class Identity:
    """Which version of a file: device, inode, size and modification time (ns)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def change(self, now: Identity) -> str | None:
        """How `now` differs from this version, in words, or None."""
        if (now.dev, now.ino) != (self.dev, self.ino):
            return "it was replaced by another file"
        if now.size != self.size:
            return f"its size went from {self.size} to {now.size} bytes"
        if now.mtime_ns != self.mtime_ns:
            return "it was rewritten"
        return None


def changed_error(path, why: str) -> InputError:
    return InputError(
        f"{path}: the file changed while dnnlab read it ({why}); the result would belong to "
        "neither version: run again once the file holds still"
    )


def open_regular(path, flag: str | None = None) -> BinaryIO:
    """The regular file at `path`, opened once for reading (binary, unbuffered reads by
    position are the caller's); refused when it is not a regular file. Opened without
    blocking, so a named pipe put in its place after the check cannot make it wait."""
    check_regular(path, flag)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        what = not_regular(os.fstat(fd).st_mode)
        if what is not None:
            raise refusal(path, what, flag)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def identity(fh: BinaryIO) -> Identity:
    """The identity of the file open as `fh`."""
    return Identity.of(os.fstat(fh.fileno()))


def check_unchanged(path, fh: BinaryIO | None, first: Identity) -> None:
    """Raise InputError naming `path` when the file open as `fh` (None: the one at `path`)
    is no longer the version `first`, or `path` no longer leads to it."""
    try:
        by_name = Identity.of(os.stat(path))
    except OSError as e:
        raise changed_error(path, f"it is gone: {e.strerror}") from None
    for now in ([identity(fh)] if fh is not None else []) + [by_name]:
        why = first.change(now)
        if why is not None:
            raise changed_error(path, why)


@contextmanager
def held_still(path, flag: str | None = None) -> Iterator[Path]:
    """For a file read whole by name inside the block: refused first when it is not a
    regular file, and checked afterwards to be the version the block began with."""
    path = Path(path)
    first = Identity.of(check_regular(path, flag))
    yield path
    check_unchanged(path, None, first)
