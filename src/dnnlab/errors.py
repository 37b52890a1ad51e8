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
