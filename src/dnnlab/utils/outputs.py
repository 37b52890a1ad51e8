"""The write gate: every folder a command writes goes through here, before any work.

Its promises (docs/inputs-and-outputs.md, "The write gate"):

- **Only into its own folders.** An output folder is new, empty, or one dnnlab made: it
  carries the marker `.dnnlab-output` (written into every output folder a command creates:
  a small JSON naming the command and the date), or, for a folder made by a version before
  the marker, the command's own record (`RECORDS`: e.g. a run's config.json holding "model").
  Any other existing folder is refused, with or without --overwrite, in one line naming the
  flag and the folder. So `detect run --out` and `detect eval --draw` never write into a
  folder of the user's, not even new names.
- **Nothing replaced unasked.** A file of an output's name already in the folder is replaced
  only with --overwrite (spare_inputs.check_replaces_nothing), and only in a folder of ours.
- **Inputs spared.** No output folder or file is an input, holds one, or lies over one, with
  or without --overwrite (spare_inputs.check_outputs_spare_inputs, called from here).
- **Deleted only when ours, and only after its replacement is complete:** a folder is
  replaced by building the new one beside it, then swapping (`swap_in`); `remove_ours`
  refuses anything that does not carry the marker or the record.
- **Atomic, with the user's umask:** files through utils/atomic.py (a temporary renamed into
  place, 0666 minus the umask), folders 0777 minus the umask.

`WRITING_FLAGS` lists every flag (or argument) of every command that names a folder written;
tests/test_write_gate.py walks the parsers and fails on a path flag missing from it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from dnnlab.errors import InputError
from dnnlab.utils.atomic import atomic_write_json, temp_folder_beside
from dnnlab.utils.records import RecordError, read_json
from dnnlab.utils.spare_inputs import check_outputs_spare_inputs, check_replaces_nothing

MARKER = ".dnnlab-output"

# The record that proves a folder made before the marker existed is dnnlab's: the file the
# command writes there, a JSON object holding every one of these keys (several, so that a
# user's config.json with a "model" key is not taken for a run: an outside test found that
# one key was not enough); None for the keys: the file itself, for the probe's spill folders
# (`.probe-spill-*` holding the pid of their probe). None: no such folder is recognised.
RECORDS: dict[str, tuple[str, tuple[str, ...] | None] | None] = {
    "train": ("config.json", ("model", "seed", "recipe", "data_identity")),
    "probe": ("probe.json", ("rows", "config")),
    "study": ("study.json", ("models", "fingerprint")),
    "study --publish": ("manifest.json", ("files", "schema", "tool")),  # and verified
    "detect build": ("build.json", ("target", "proposals")),
    "reproduce": ("reproduction.json", ("verdict", "published_run")),
    "detect run": None,
    "detect eval --draw": None,
    "scratch": ("pid", None),
}

# Every command-line flag or argument that names a folder a command writes, with the kind of
# folder (a RECORDS key) it is. --spill-dir is a scratch parent: the probe makes one new
# marked folder inside it and removes only that.
WRITING_FLAGS: dict[tuple[str, str], str] = {
    ("train", "--out"): "train",
    ("probe", "RUN"): "train",  # the probe writes into the run directory it probes
    ("probe", "--out"): "probe",
    ("probe", "--spill-dir"): "scratch",
    ("study", "--out"): "study",
    ("study", "--publish"): "study --publish",
    ("detect build", "--out"): "detect build",
    ("detect train", "DIR"): "detect build",
    ("detect show", "DIR"): "detect build",
    ("detect run", "--out"): "detect run",
    ("detect eval", "--draw"): "detect eval --draw",
    ("detect eval", "--model"): "detect build",  # its records go into MODEL/evals/
    ("reproduce", "--out"): "reproduce",
}


def is_ours(folder, kind: str) -> bool:
    """Whether `folder` is dnnlab's folder of `kind`: its marker names that command, or, a
    folder made before the marker, it holds the record RECORDS names for `kind`. A folder
    another command made is not ours for this one (a reproduce folder is no run)."""
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file() and not marker.is_symlink():
        return _marker_command(folder) == kind
    record = RECORDS.get(kind)
    if record is None:
        return False
    name, keys = record
    if keys is None:
        return (folder / name).is_file()
    try:
        read_json(folder / name, keys)
    except RecordError:
        return False
    return True


def _marker_command(folder: Path) -> str | None:
    """The command the folder's marker names, or None (no marker, or not a readable one)."""
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink():
        return None
    try:
        command = read_json(marker, ("command",))["command"]
    except RecordError:
        return None
    return command if isinstance(command, str) else None


def _entries(folder: Path) -> list[str]:
    """The names in `folder` other than the marker (empty when it is not a folder)."""
    try:
        return sorted(n for n in os.listdir(folder) if n != MARKER)
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_output(
    folder,
    flag: str,
    kind: str,
    *,
    inputs: Iterable = (),
    files: Iterable = (),
    overwrite: bool = False,
    replace: bool = False,
) -> Path:
    """The gate, before any work: refuse (InputError naming `flag` and the folder) writing
    into `folder` when it is an existing file, an input, holds or lies over one of `inputs`
    (with `replace`: anywhere inside it, as a folder replaced whole), is an existing folder
    that is neither empty nor dnnlab's (`is_ours` for `kind`), or holds one of `files`
    (those the command will write there) without `overwrite`. Returns the folder."""
    files = list(files)
    check_outputs_spare_inputs(inputs, folder, files, owned=replace, flag=flag)
    path = Path(folder).expanduser()
    names = _entries(path)
    if names and not is_ours(path, kind):
        other = _marker_command(path)
        if other is not None:  # ours, but another command's: say whose
            raise InputError(
                f"{flag} {folder}: a folder `dnnlab {other}` made, not `dnnlab {kind}`; "
                f"choose another {flag}"
            )
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        raise InputError(
            f"{flag} {folder}: a folder dnnlab did not make (it holds {names[0]}{more}, and no "
            f"{MARKER}); dnnlab writes only into a new or empty folder or one it made, with or "
            f"without --overwrite: choose another {flag}"
        )
    check_replaces_nothing(files, overwrite, flag)
    return path


def mark(folder, kind: str) -> Path:
    """Make `folder` (and its parents, 0777 minus the umask) and write the marker into it,
    unless it has one; returns the folder. Call it only after check_output."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        atomic_write_json(folder / MARKER, {"tool": "dnnlab", "command": kind, "date": date})
    return folder


@contextmanager
def replacing(dest, kind: str, marked: bool = True) -> Iterator[Path]:
    """A new empty folder beside `dest` (the user's umask; with `marked`, the marker in it)
    for the block to fill; when the block ends it replaces `dest` (absent, or a folder of
    ours: `swap_in`), and when the block fails it is deleted and `dest` left as it was. A
    publication is not marked: its verified manifest is its proof."""
    tmp = temp_folder_beside(dest)
    try:
        if marked:
            mark(tmp, kind)
        yield tmp
        swap_in(tmp, dest, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # made here, a moment ago: nobody else's
        raise


def remove_ours(path, kind: str, within=None) -> None:
    """Delete `path`, a folder of ours (or, with `within`, a file or folder inside the folder
    `within`, which must be ours); an InputError, deleting nothing, when it is not ours."""
    path = Path(path)
    owner = Path(within) if within is not None else path
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink() and not os.listdir(path):
        path.rmdir()  # an empty folder holds nothing to lose
        return
    inside = Path(os.path.abspath(owner)) in Path(os.path.abspath(path)).parents
    if not is_ours(owner, kind) or (within is not None and not inside):
        raise InputError(f"{path}: not a folder dnnlab made (no {MARKER}); left as it is")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def swap_in(tmp, dest, kind: str) -> None:
    """Replace `dest` (absent, or a folder of ours for `kind`) by the complete folder `tmp`:
    the old one is renamed aside, `tmp` renamed into place, and only then is the old one
    deleted. If the swap fails, the old folder is put back."""
    tmp, dest = Path(tmp), Path(dest)
    old = None
    if os.path.lexists(dest):
        if not is_ours(dest, kind):
            raise InputError(f"{dest}: not a folder dnnlab made (no {MARKER}); left as it is")
        old = temp_folder_beside(dest.with_name(f"{dest.name}.old"))
        old.rmdir()  # only its unique name is wanted: dest is renamed to it
        dest.rename(old)
    try:
        tmp.rename(dest)
    except BaseException:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "MARKER",
    "RECORDS",
    "WRITING_FLAGS",
    "check_output",
    "is_ours",
    "mark",
    "remove_ours",
    "replacing",
    "swap_in",
]
