"""How the `dnnlab` command talks to the terminal: a flag argparse cannot read, and a Python
warning, each reported on one line as dnnlab's own errors are; and a quiet stop when the
reader of stdout goes away (`dnnlab si ... | head`). Standard library only, so that
`dnnlab --help` stays light."""

from __future__ import annotations

import argparse
import os
import select
import sys


class OneLineErrors(argparse.ArgumentParser):
    """argparse, but a flag it cannot read is reported as dnnlab's own errors are: one line,
    `dnnlab CMD: error: ...`, exit status 2 (instead of the usage block first); and only
    whole flag names are read (allow_abbrev=False, its subcommands' parsers too): an
    abbreviation that works today (`--over` for `--overwrite`, `--box` before `--box-loss`
    existed) would stop working, or mean another flag, once a longer flag is added."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line_warning(cmd: str):
    """How a Python warning raised under command `cmd` is shown: one line, `dnnlab CMD:
    warning: ...`, its first line only, without the source file and line that Python's
    own display adds (a user's concern is the input, not dnnlab's code)."""

    def show(message, category, filename, lineno, file=None, line=None):
        lines = str(message).strip().splitlines()
        text = lines[0] if lines else category.__name__
        print(f"dnnlab {cmd}: warning: {text}", file=sys.stderr)

    return show


def stdout_gone() -> bool:
    """Whether stdout's reader has gone (a pipe with no reader polls as an error), rather
    than some other pipe the command wrote to."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (captured, closed)
        return False


def silence_stdout() -> None:
    """Send what is left for stdout nowhere, so that Python does not report the broken pipe
    again when it flushes stdout at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
