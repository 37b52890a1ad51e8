"""dnnlab's records: the one JSON reader for every record the tool writes and reads back
(config.json, summary.json, metrics.json, split.json, probe.json, study.json, stages.json,
eval records...), and the one hash.

Hashes. `content_hash` is every identity dnnlab records or keys a cache with (the data's
identity, a study's fingerprint, a probe row's provenance, a model's or a split's content,
proposal and feature caches): SHA-256 of the content's chunks in order, its first 16 hex
digits (64 bits: the chance of any collision among a million items is about 3e-8).
`file_sha256` is a file's whole SHA-256 as `sha256sum` prints it: the checksum a manifest or
a record of a checkpoint holds, which anyone can verify without dnnlab. Both go through
`_sha256`, the only call of hashlib.sha256.

One error policy: a record that is missing, unreadable, not JSON, not an object where one is
needed, or lacking a key it must hold is an error that names the file and what is wrong. A
caller whose record is optional asks first whether the file exists; a damaged one is never
read as absent. The caller chooses the error's class (`error`): a run's records raise
cifar.rundir.RunError, a study's StudyError, anything else RecordError, an InputError.
An editor's byte-order mark is accepted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
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


IDENTITY_DIGITS = 16
CHUNK = 1 << 20  # a file is hashed a MiB at a time


def _sha256(chunks: Iterable) -> str:
    """SHA-256 (64 hex digits) of the chunks in order: bytes as they are, a str as UTF-8,
    anything else as its JSON with sorted keys."""
    h = hashlib.sha256()
    for c in chunks:
        if isinstance(c, str):
            c = c.encode()
        elif not isinstance(c, bytes | bytearray | memoryview):
            c = json.dumps(c, sort_keys=True).encode()
        h.update(c)
    return h.hexdigest()


def content_hash(chunks: Iterable) -> str:
    """The identity of some content, given as chunks (see _sha256): 16 hex digits."""
    return _sha256(chunks)[:IDENTITY_DIGITS]


def file_sha256(path) -> str:
    """The file's SHA-256 as `sha256sum` prints it, read a MiB at a time."""
    with open(path, "rb") as fh:
        return _sha256(iter(lambda: fh.read(CHUNK), b""))
