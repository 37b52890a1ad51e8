"""The one JSON reader for every record dnnlab writes and reads back (config.json,
summary.json, metrics.json, split.json, probe.json, study.json, stages.json, eval records...).

One error policy: a record that is missing, unreadable, not JSON, not an object where one is
needed, or lacking a key it must hold is an error that names the file and what is wrong. A
caller whose record is optional asks first whether the file exists; a damaged one is never
read as absent. The caller chooses the error's class (`error`): a run's records raise
cifar.rundir.RunError, a study's StudyError, anything else RecordError, an InputError.
An editor's byte-order mark is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

from dnnlab.errors import InputError


class RecordError(InputError):
    """A record dnnlab wrote that cannot be read back as one."""


def read_json(path, keys=None, error: type[Exception] = RecordError):
    """The JSON in `path`; with `keys` (a sequence, possibly empty), an object holding
    each of them. Raises `error` naming the file otherwise."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: unreadable or not valid JSON ({e}); the record is damaged") from None
    if keys is None:
        return d
    if not isinstance(d, dict):
        raise error(f"{path}: expected a JSON object, found {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise error(f"{path}: lacks {missing}; the record is damaged or not dnnlab's")
    return d
