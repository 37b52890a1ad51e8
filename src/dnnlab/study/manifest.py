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

import sys
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
    """The folder's manifest when every file matches it; else a ManifestError naming every
    file that was changed, is missing or is not listed (the first ten of each kind)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest["files"]
    present = set(listed_files(folder))
    missing, changed = [], []
    for rel in sorted(files):
        path = folder / rel
        entry = files[rel]
        if rel not in present:
            missing.append(rel)
        elif path.stat().st_size != entry.get("bytes") or file_sha256(path) != entry["sha256"]:
            changed.append(rel)
    extra = sorted(present - set(files))
    problems = [
        (missing, f"listed in {folder / MANIFEST} but missing"),
        (changed, "changed since it was published (its sha256 is not the one recorded)"),
        (extra, "not listed (a published folder holds only what was published)"),
    ]
    lines = [
        f"{len(rels)} {'file' if len(rels) == 1 else 'files'} {why}: "
        + ", ".join(rels[:10])
        + (f" and {len(rels) - 10} more" if len(rels) > 10 else "")
        for rels, why in problems
        if rels
    ]
    if lines:
        raise ManifestError(
            f"{folder}: does not match {MANIFEST}: "
            + "; ".join(lines)
            + "; restore those files, or publish the study again"
        )
    return manifest


def main(args) -> int:
    """`dnnlab verify FOLDER...`: every folder against its manifest, one line each (a
    folder that fails does not stop the others); exit status 1 when any failed."""
    failed = 0
    for folder in args.folders:
        try:
            m = verify(folder)
        except ManifestError as e:
            print(f"dnnlab verify: {e}", file=sys.stderr)
            failed += 1
            continue
        print(
            f"{folder}: ok, {len(m['files'])} files match its manifest "
            f"(commit {m.get('commit') or 'unrecorded'}, {m.get('date')})"
        )
    if failed:
        print(f"dnnlab verify: {failed} of {len(args.folders)} folders failed", file=sys.stderr)
    return 1 if failed else 0
