"""A published folder's manifest: proof that its files are the ones the tool wrote.

`dnnlab study --publish` writes manifest.json last, into the folder it assembles: every
other file's sha256 and size, which command wrote it, the tool's commit and the date.
`verify(folder)` (and `dnnlab verify DIR`) checks the folder against it and refuses, naming
the file, one whose bytes changed, one that is missing, and one the manifest does not list.
A folder without a manifest is refused the same way: nothing in it is shown.

Something computed after a publication (a later CKA, a corrected commit) never goes into an
earlier record: it goes into a file of its own (an addendum with its own record of what
made it), and a new manifest lists that file beside the others.

    {"schema": 1, "tool": "dnnlab", "commit": "...", "date": "...",
     "files": {"study.json": {"sha256": "...", "bytes": 1234, "writer": "dnnlab study"}, ...}}
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from dnnlab.errors import InputError
from dnnlab.utils.atomic import atomic_write_json
from dnnlab.utils.records import file_sha256, read_json

MANIFEST = "manifest.json"
SCHEMA = 1


class ManifestError(InputError):
    """A published folder that does not match its manifest (or has none)."""


def listed_files(folder: Path) -> list[str]:
    """Every regular file under `folder` but the manifest, as sorted POSIX relative paths."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST
    )


def write_manifest(folder: Path, writers: dict[str, str], commit: str | None) -> dict:
    """Write folder/manifest.json over every file in `folder`; `writers` maps each relative
    path to the command that wrote it (a file it does not name is a ValueError: every file
    must say where it came from). Returns the manifest."""
    folder = Path(folder)
    files = {}
    for rel in listed_files(folder):
        if rel not in writers:
            raise ValueError(f"{folder / rel}: no writer named for the manifest")
        path = folder / rel
        files[rel] = {
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            "writer": writers[rel],
        }
    manifest = {
        "schema": SCHEMA,
        "tool": "dnnlab",
        "commit": commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "files": files,
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict:
    """folder/manifest.json, checked for shape; a ManifestError naming it otherwise."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{path}: missing; {folder} is not a folder dnnlab published (or it predates "
            "manifests), so nothing in it is shown"
        )
    d = read_json(path, error=ManifestError)
    files = d.get("files") if isinstance(d, dict) else None
    if (
        d.get("schema") != SCHEMA
        or not isinstance(files, dict)
        or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values())
    ):
        raise ManifestError(f"{path}: not a dnnlab manifest (schema {SCHEMA})")
    return d


def verify(folder) -> dict:
    """The folder's manifest when every file matches it; a ManifestError naming the first
    file that was changed, is missing or is not listed."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest["files"]
    present = set(listed_files(folder))
    for rel in sorted(files):
        path = folder / rel
        if rel not in present:
            raise ManifestError(f"{path}: listed in {folder / MANIFEST} but missing")
        entry = files[rel]
        if path.stat().st_size != entry.get("bytes") or file_sha256(path) != entry["sha256"]:
            raise ManifestError(
                f"{path}: changed since it was published (its sha256 is not the one "
                f"{folder / MANIFEST} records); restore it, or publish the study again"
            )
    extra = sorted(present - set(files))
    if extra:
        raise ManifestError(
            f"{folder / extra[0]}: not listed in {folder / MANIFEST}"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + "; a published folder holds only what was published"
        )
    return manifest


def main(args) -> int:
    """`dnnlab verify FOLDER...`: each folder against its manifest, one line each."""
    for folder in args.folders:
        m = verify(folder)
        print(
            f"{folder}: ok, {len(m['files'])} files match its manifest "
            f"(commit {m.get('commit') or 'unrecorded'}, {m.get('date')})"
        )
    return 0
