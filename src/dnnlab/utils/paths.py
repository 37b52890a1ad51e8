"""What a path on the command line is, said in dnnlab's words, before any work.

One place for the checks every command makes of the folders it writes and the files and
folders it reads: an output folder that is an existing file (or lies under one), an input
folder that is a file, and a path that is missing, a broken symbolic link or a loop of them
(which `Path.exists()` calls "missing" and `Path.resolve()` turns into a RuntimeError).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from dnnlab.errors import InputError
from dnnlab.utils.steady import check_regular


def real(path) -> Path:
    """The path with ~ expanded and every symlink resolved; it need not exist, and a loop of
    links is left as it is (os.path.realpath never raises, unlike Path.resolve)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def missing_reason(path) -> str:
    """Why `path` cannot be opened: "does not exist", "a broken symbolic link to
    TARGET", "a loop of symbolic links", or the system's reason."""
    p = Path(path).expanduser()
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a loop of symbolic links (it leads back to itself)"
        if e.errno == errno.ENOENT and os.path.islink(p):
            return f"a broken symbolic link (to {os.readlink(p)}, which does not exist)"
        if e.errno == errno.ENOENT:
            return "does not exist"
        return e.strerror or type(e).__name__
    return "it exists"


def check_out_folder(folder, flag: str = "--out") -> None:
    """Refuse, naming the flag and the path, an output folder that is an existing file, or
    one that lies under a file or that a broken link or a loop of links stands for."""
    if folder is None or str(folder) == "":
        return
    p = Path(folder).expanduser()
    for q in (p, *p.parents):
        if os.path.islink(q) and not q.exists():
            raise InputError(f"{flag} {folder}: {missing_reason(q)}; choose another {flag}")
        if q.exists():
            if not q.is_dir():
                what = "is a file" if q == p else f"lies under {q}, which is a file"
                raise InputError(f"{flag} {folder}: {what}, not a folder; choose another {flag}")
            return


def check_in_folder(folder, flag: str) -> Path:
    """The input folder as a Path; refused, naming the flag and the path, when it is
    missing (or a broken link or a loop of links) or not a folder."""
    p = Path(folder).expanduser()
    if not p.exists():
        raise InputError(f"{flag} {folder}: {missing_reason(p)}")
    if not p.is_dir():
        raise InputError(f"{flag} {folder}: a file, not a folder")
    return p


def check_in_file(path, flag: str) -> Path:
    """The input file as a Path; refused, naming the flag and the path, when it is missing
    (or a broken link or a loop of links), a folder, or a named pipe, device or socket
    (reading one could wait forever: utils/steady.py)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{flag} {path}: {missing_reason(p)}")
    check_regular(p, flag)
    return p
