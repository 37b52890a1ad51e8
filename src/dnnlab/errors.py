"""dnnlab's own error types.

The command line reports a `DnnlabError` as one short "dnnlab CMD: error: ..." line; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class DnnlabError(Exception):
    """An error dnnlab explains to the user: bad input, a refused action, a missing file."""


class InputError(DnnlabError, ValueError):
    """A file, value or flag that cannot be used as given."""


class ConfigError(InputError):
    """A setting outside its documented valid range."""


class BudgetError(InputError, MemoryError):
    """A memory budget (--max-memory) too small for the work: a bad setting, reported briefly.
    `least`: a budget that works, when the raiser knows one (0 otherwise)."""

    def __init__(self, msg: str, least: int = 0):
        super().__init__(msg)
        self.least = least


class UndefinedMeasure(InputError):
    """A measure that has no value on these inputs (e.g. NC1 when all class means agree, or
    any measure when every class has a single sample)."""
