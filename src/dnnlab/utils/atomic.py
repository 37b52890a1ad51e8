"""Atomic writes: write a temporary file beside the target, then rename over it.

The temporary is named `.<target name>.<writer pid>.<random>.tmp`. A process killed while
writing leaves one behind; the next write into the same folder removes such leftovers (only
names of this form, and only when their writer process is gone or the file is more than an
hour old); each folder is swept once per process. Outputs get the permissions of any other
tool's: 0666 minus the user's umask for a file, 0777 minus it for a folder made whole and
then renamed into place (`temp_folder_beside`; mkdtemp alone would leave it 0700).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

STALE_SECONDS = 3600  # a temporary this old is stale even if its pid is alive (pid reuse)
# Ours: ".NAME.PID.RANDOM.tmp" (mkstemp's random part is 8 characters of [a-z0-9_]); the
# pid-less ".NAME.RANDOM.tmp" of older versions counts only by age.
_TMP = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?\.[a-z0-9_]{8}\.tmp$")


def umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete dnnlab's own leftover temporaries in `folder`; returns what was removed."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP.match(e.name)
        if not m or not e.is_file(follow_symlinks=False):
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = m.group("pid")
        dead = pid is not None and int(pid) != os.getpid() and not pid_alive(int(pid))
        if dead or age > STALE_SECONDS:
            try:
                os.unlink(e.path)
                removed.append(Path(e.path))
            except OSError:
                pass
    return removed


_cleaned: set[str] = set()  # folders this process has already swept (once is enough)


@contextmanager
def atomic_file(path, mode: str = "w") -> Iterator[IO]:
    """An open temporary beside `path` (mode "w", UTF-8 text, or "wb"): what the block writes
    replaces `path` when the block ends; an exception leaves `path` as it was. The content
    is synced before the rename, so a killed process leaves the old file or the new one,
    never part of one (the folder itself is not synced: a power loss may undo the rename)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode {mode!r} is not 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.realpath(path.parent)
    if folder not in _cleaned:
        remove_stale_temporaries(folder)
        _cleaned.add(folder)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_folder_beside(dest) -> Path:
    """A new empty folder `.NAME.RANDOM` beside `dest` (its parent made as needed), to fill
    and then rename to `dest`: its mode is what `mkdir` gives any folder (0777 minus the
    umask), not mkdtemp's private 0700, so the output keeps the user's umask."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def atomic_write_text(path, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path, obj, indent: int | None = 2) -> None:
    """`obj` as JSON (indented by `indent`; None: one line, for long lists of numbers)."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj, path) -> None:
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def atomic_savefig(fig, path, **kw) -> None:
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format=suffix, **kw)
