"""One writer per folder: a command that writes a folder holds its lock while it runs.

The lock is an flock on `.NAME.lock` beside the folder NAME (beside, so that it survives
the folder being moved aside or replaced by --overwrite). The kernel releases an flock when
its process ends, however it ends, so a killed command never leaves a folder locked: the
same command re-run takes the lock at once (and resumes). A second process asking for a
held lock is refused at once with `FolderBusy`, naming the folder and the holder's pid.

The lock file exists only while a lock is held: it is removed on release (a file a killed
process left behind holds no lock and is reused). A folder the lock's holder created and left
empty is removed with the lock. Within one process the lock is
re-entrant, so a command that calls another on the same folder does not lock itself out.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from dnnlab.errors import DnnlabError, InputError
from dnnlab.utils.distributed import share_from_rank0
from dnnlab.utils.outputs import MARKER
from dnnlab.utils.paths import check_out_folder, real

_HELD: dict[Path, int] = {}  # the folders this process holds, with the nesting depth


class FolderBusy(DnnlabError):
    """Another process is writing the folder."""


def lock_path(folder) -> Path:
    """`.NAME.lock` beside the folder NAME, symlinks resolved (one lock per real folder)."""
    f = real(folder)
    return f.parent / f".{f.name}.lock"


@contextmanager
def folder_lock(folder, flag: str = "--out") -> Iterator[None]:
    """Hold the folder's writer lock for the duration of the block; raise FolderBusy at
    once when another process holds it. `flag` names the folder in the message; a folder
    that is an existing file is refused (InputError) before anything is made."""
    key = real(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    check_out_folder(folder, flag)
    path = lock_path(folder)
    made = make_parents(path.parent)
    # A folder the command creates and leaves empty (it failed, or had nothing to write)
    # is removed with the lock: no empty output folder is left behind.
    if not os.path.lexists(key):
        made.append(key)
    try:
        fd = acquire(path, folder, flag)
    except BaseException:
        remove_empty(made)
        raise
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        drop_lone_marker(key)  # a folder left holding nothing but the marker is no output
        release(fd, path)
        remove_empty(made)


@contextmanager
def job_lock(folder, rank: int, world: int, flag: str = "--out") -> Iterator[None]:
    """folder_lock for a torchrun job of `world` processes: rank 0 holds the lock, and
    every rank learns whether it was granted, so a refused job ends on every rank at once
    with rank 0's message (none is left waiting at a barrier)."""
    with ExitStack() as stack:
        refused = None
        if rank == 0:
            try:
                stack.enter_context(folder_lock(folder, flag))
            except DnnlabError as e:
                refused = e
        why = share_from_rank0(
            None if refused is None else (isinstance(refused, FolderBusy), str(refused)), world
        )
        if refused is not None:
            raise refused
        if why is not None:
            raise (FolderBusy if why[0] else InputError)(why[1])
        yield


def acquire(path: Path, folder, flag: str) -> int:
    """The open, locked lock file at `path` (its content: this process's pid)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise FolderBusy(
                f"{flag} {folder}: another dnnlab process{who} is writing this folder; "
                "wait for it to finish, or choose another folder"
            ) from None
        if same_file(fd, path):
            break
        os.close(fd)  # removed by its last holder between our open and flock: try again
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release(fd: int, path: Path) -> None:
    """Remove the lock file while still holding it, then let go."""
    try:
        path.unlink()
    except OSError:
        pass
    os.close(fd)


def same_file(fd: int, path: Path) -> bool:
    """Whether the open file is still the one at `path`."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def read_pid(fd: int) -> int | None:
    """The pid recorded in a lock file, or None."""
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, deepest last."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def drop_lone_marker(folder: Path) -> None:
    """Remove the write gate's marker from a folder that holds nothing else (a command that
    failed or wrote nothing leaves a folder of the user's as it found it)."""
    try:
        if os.listdir(folder) == [MARKER]:
            (folder / MARKER).unlink()
    except OSError:
        pass


def remove_empty(made: list[Path]) -> None:
    """Remove the folders in `made` (make_parents's, and an output folder the lock's holder
    was to create), deepest first, while they are empty."""
    for d in reversed(made):
        try:
            d.rmdir()
        except FileNotFoundError:
            continue  # never made (the output folder, when the command wrote nothing)
        except OSError:
            return
