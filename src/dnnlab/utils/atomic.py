"""Atomic writes: write a temporary file beside the target, then rename over it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _atomic(path, write, mode: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text), "w")


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj, path) -> None:
    import torch

    _atomic(path, lambda fh: torch.save(obj, fh), "wb")


def atomic_savefig(fig, path, **kw) -> None:
    suffix = Path(path).suffix.lstrip(".") or "png"
    _atomic(path, lambda fh: fig.savefig(fh, format=suffix, **kw), "wb")
