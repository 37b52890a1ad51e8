"""No command writes over one of its inputs, with or without --overwrite.

Every command that writes files calls `check_outputs_spare_inputs` before it writes or
removes anything, with the folder it writes into, the exact files it will write there (where
it knows them) and the paths it reads. Paths are compared with symlinks resolved, so a
folder or file reached through a link is the same as the one it points to. Refused:

- an output folder that is an input folder, or an input file itself;
- an output folder that holds an input file (its outputs would land beside or over it);
- an output file that is an input;
- with `owned` (the command may clear or replace the whole folder: --overwrite), an input
  anywhere inside the output folder.

`check_replaces_nothing` is the other half of the gate: an output file that already exists
(an earlier run's, or a file of the user's that happens to have the name) is replaced only
with --overwrite.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from dnnlab.errors import InputError
from dnnlab.utils.paths import check_out_folder, real

PathLike = str | os.PathLike


def output_clash(
    inputs: Iterable[PathLike],
    out_dir: PathLike | None = None,
    files: Iterable[PathLike] = (),
    owned: bool = False,
) -> str | None:
    """Why writing out_dir or files would write over one of the inputs, or None."""
    out = real(out_dir) if out_dir is not None else None
    written = [(f, real(f)) for f in files]
    for given in inputs:
        i = real(given)
        if out is not None and out == i:
            return f"{out_dir} is the input {given}"
        if out is not None and not i.is_dir() and i.parent == out:
            return f"{out_dir} is the folder of the input {given}, which its outputs could replace"
        if out is not None and owned and out in i.parents:
            return f"{out_dir} holds the input {given}, and may be replaced as a whole"
        for f, r in written:
            if r == i:
                return f"{f} would replace the input {given}"
    return None


def check_outputs_spare_inputs(
    inputs: Iterable[PathLike],
    out_dir: PathLike | None = None,
    files: Iterable[PathLike] = (),
    owned: bool = False,
    flag: str = "--out",
) -> None:
    """Raise InputError, naming the output (given by `flag`) and the input, when writing
    `out_dir` or `files` would write over one of `inputs` (see the module's rules), or when
    `out_dir` cannot be a folder (an existing file); inputs that are None or empty (a flag
    not given) are skipped."""
    check_out_folder(out_dir, flag)
    why = output_clash([i for i in inputs if i], out_dir, files, owned)
    if why is None:
        return
    raise InputError(
        f"{flag}: {why}; dnnlab never writes over its inputs, with or without --overwrite: "
        f"choose another {flag}"
    )


def check_replaces_nothing(files: Iterable[PathLike], overwrite: bool, flag: str) -> None:
    """Raise InputError, unless `overwrite`, when any of the output `files` (those a command
    writes into the folder given by `flag`) already exists: dnnlab cannot tell an earlier
    run's file from one of the user's with the same name, so it replaces neither unasked.
    Names the first three and how many more."""
    if overwrite:
        return
    old = [f for f in files if os.path.lexists(f)]
    if not old:
        return
    more = f" and {len(old) - 3} more" if len(old) > 3 else ""
    raise InputError(
        f"{', '.join(map(str, old[:3]))}{more}: already in {flag} (an earlier run's results, "
        f"or files of your own); pass --overwrite to replace them, or choose another {flag}"
    )
