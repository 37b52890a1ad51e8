"""Read feature and label arrays from .npy, .npz, .pt and .csv files.

A name after a colon picks one array: `feats.npz:X`, `data.pt:labels`, `table.csv:label`
(a CSV column by its header). Errors name the file and, for CSV, the row.
"""

from __future__ import annotations

import csv
import itertools
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.separability.featurefile import (
    FeatureFile,
    check_feature_dtype,
    npy_data_bytes,
    npy_header,
)
from dnnlab.utils.paths import missing_reason
from dnnlab.utils.safe_load import load_error_reason, load_plain
from dnnlab.utils.sizes import format_size
from dnnlab.utils.steady import check_regular, held_still

__all__ = ["InputError", "load_array", "open_features", "split_spec"]


def _split_existing(spec) -> tuple[Path, str | None]:
    """split_spec, refusing a path that cannot be opened (no such file, a broken link, a
    loop of links), one that is not a regular file (a folder; a named pipe or a device,
    which could make the command wait forever: utils/steady.py) or an empty file."""
    path, name = split_spec(str(spec))
    if not path.exists():
        why = missing_reason(path)
        raise InputError(f"{path}: {'no such file' if why == 'does not exist' else why}")
    check_regular(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: cannot read it: the file is empty (0 bytes)")
    return path, name


def split_spec(spec: str) -> tuple[Path, str | None]:
    """'path.npz:NAME' -> (path, NAME); a colon that is part of an existing path is kept."""
    if os.path.exists(spec):
        return Path(spec), None
    head, sep, name = spec.rpartition(":")
    if sep and head and name and not name.startswith(("/", "\\")):
        return Path(head), name
    return Path(spec), None


def _pick(named: dict, name: str | None, path: Path):
    if name is not None:
        if name not in named:
            raise InputError(f"{path}: no array named {name!r}; it holds {sorted(named)}")
        return named[name]
    if len(named) == 1:
        return next(iter(named.values()))
    raise InputError(f"{path} holds several arrays {sorted(named)}; choose one as {path}:NAME")


def _csv_rows(path: Path):
    """The file's rows that hold something (blank lines and rows of blank cells skipped),
    read one at a time. utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of
    the first cell."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for r in csv.reader(fh):
            if r and any(c.strip() for c in r):
                yield r


def _read_csv(path: Path, column: str | None, numeric: bool, max_bytes: int) -> np.ndarray:
    """A CSV's numbers (numeric) or labels, read in two passes so that nothing but the
    result is held: the first checks the rows' widths and counts them, the second parses
    each row into a float64 array made beforehand (its size checked against max_bytes).
    Rows are numbered among the rows that hold something, the header row included."""
    first, n, width = None, 0, 0
    for r in _csv_rows(path):
        if first is None:
            first, width = r, len(r)
        elif len(r) != width:
            raise InputError(f"{path}: row {n + 1} has {len(r)} fields, expected {width}")
        n += 1
    if first is None:
        raise InputError(f"{path}: the file is empty")
    first_numeric = all(_parses_as(float, c) for c in first)
    has_header = column is not None or (numeric and not first_numeric and n > 1)
    pick = None
    if column is not None:
        header = [c.strip() for c in first]
        if column not in header:
            raise InputError(f"{path}: no column {column!r}; the header has {header}")
        pick = header.index(column)
    n_data = n - has_header
    if n_data == 0:
        raise InputError(f"{path}: no data rows")
    rows = itertools.islice(_csv_rows(path), int(has_header), None)
    if pick is not None:
        rows = ([r[pick]] for r in rows)
        width = 1
    if not numeric:
        cells = [r[0].strip() for r in rows] if width == 1 else None
        return _csv_labels(path, cells, width, guess_header=not has_header)
    size = n_data * width * 8
    if size > max_bytes:
        raise InputError(
            f"{path}: {n_data:,} rows of {width:,} numbers take {format_size(size)} as "
            f"float64, more than the memory budget {format_size(max_bytes)}: save the "
            "features as .npy (numpy.save) to have them read by blocks, or raise --max-memory"
        )
    out = np.empty((n_data, width), dtype=np.float64)
    for i, r in enumerate(rows):
        try:
            out[i] = [float(c) for c in r]
        except ValueError:
            j = next(j for j, c in enumerate(r) if not _parses_as(float, c))
            raise InputError(
                f"{path}: row {i + 1 + has_header}, column {j + 1}: {r[j]!r} is not a number"
            ) from None
    return out


def _csv_labels(path: Path, cells: list[str] | None, width: int, guess_header: bool):
    """The labels of a one-column CSV (cells: its data rows' cells), as integers, floats
    (checked later: integral floats only) or strings; without a header already taken, one
    such as "label" above class values is not a class."""
    if cells is None:
        raise InputError(f"{path}: labels need one column; found {width}")
    if guess_header and _first_row_is_header(cells):
        cells = cells[1:]
        if not cells:
            raise InputError(f"{path}: no data rows")
    if all(_parses_as(int, c) for c in cells):
        return np.asarray([int(c) for c in cells])
    if all(_parses_as(float, c) for c in cells):
        return np.asarray([float(c) for c in cells])
    return np.asarray(cells)


def _plain_array(obj, path: Path, numeric: bool, max_bytes: int):
    """A .pt/.safetensors entry as an array: a dense tensor as it is; a sparse one made dense
    (its dense size counts in the command's budget like any input read whole); a list of
    numbers (or of strings, for labels) as a numpy array; anything else named."""
    if isinstance(obj, torch.Tensor):
        _check_tensor_kind(obj, path)
        if obj.is_floating_point() and obj.dtype not in _NUMPY_FLOATS:
            obj = obj.to(torch.float32)  # bfloat16, float8: every value exact in float32
        if obj.layout != torch.strided:
            dense = obj.numel() * obj.element_size()
            if dense > max_bytes:
                raise InputError(
                    f"{path}: a sparse tensor of shape {tuple(obj.shape)} would take "
                    f"{format_size(dense)} dense, more than {format_size(max_bytes)}; save "
                    "the features densely as .npy to have them read by blocks"
                )
            obj = obj.to_dense()
        return obj
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, (list, tuple)):
        try:
            arr = np.asarray(obj)
        except ValueError as e:  # ragged nesting
            raise InputError(
                f"{path}: holds a list that is not a rectangular array ({e})"
            ) from None
        if arr.dtype.kind not in ("biuf" if numeric else "biufU"):
            raise InputError(
                f"{path}: holds a list of {type(obj[0]).__name__ if len(obj) else 'nothing'}, "
                "not of numbers"
            )
        return arr
    raise InputError(f"{path}: expected a tensor, found {type(obj).__name__}")


# Floating-point types numpy holds; other ones (bfloat16, the float8 types) are read as float32.
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _check_tensor_kind(t: torch.Tensor, path: Path) -> None:
    """Refuse, naming the file, a tensor that is not an array of real numbers dnnlab can
    read: a meta tensor (a shape without values), a nested (ragged) one, a quantized one,
    complex numbers."""
    why = None
    if t.is_meta:
        why = "a meta tensor (a shape without values): the file holds no numbers"
    elif t.is_nested:
        why = "a nested (ragged) tensor, not an (N, ...) array"
    elif t.is_quantized:
        why = f"a quantized tensor ({t.dtype}); save it as floating point (.dequantize())"
    elif t.is_complex():
        why = f"complex numbers ({t.dtype}); features and labels must be real numbers"
    if why is not None:
        raise InputError(f"{path}: {why}")


# A sparse tensor is made dense only up to this size (the command's budget then counts it).
MAX_DENSE_BYTES = 1 << 34


HEADER_WORDS = {"label", "labels", "class", "classes", "target", "targets", "y", "category"}


def _first_row_is_header(cells: list[str]) -> bool:
    """A labels column's first cell is a header when it is text above numbers, or a usual
    column name ("label", "class", ...) that no other row repeats."""
    first, rest = cells[0].strip(), [c.strip() for c in cells[1:]]
    if not rest:
        return False

    if not _parses_as(float, first) and all(_parses_as(float, c) for c in rest):
        return True
    return first.lower() in HEADER_WORDS and first not in rest


def _parses_as(kind, cell: str) -> bool:
    """Whether `kind(cell)` (float or int) reads the cell."""
    try:
        kind(cell)
    except ValueError:
        return False
    return True


def load_array(spec: str, *, numeric: bool = True, max_bytes: int = MAX_DENSE_BYTES):
    """Load one array (numpy or torch) from a file spec; numeric=False allows string labels;
    max_bytes: the largest a sparse tensor may take once made dense. The file is checked to
    be the same version after the read as before (utils/steady.held_still)."""
    path, name = _split_existing(spec)
    with held_still(path):
        return _load_array(path, name, numeric, max_bytes)


def _load_array(path: Path, name: str | None, numeric: bool, max_bytes: int):
    """load_array of the file `path` (checked to exist) and member `name`."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if name:
                raise InputError(f"{path}: a .npy file holds one array; drop ':{name}'")
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:  # lists the members, reads none
                # Only the member named (or the only one) is read: z[NAME] inflates that
                # one zip entry, the other members are never touched.
                return np.asarray(z[_pick({k: k for k in z.files}, name, path)])
        if suffix in (".pt", ".pth", ".safetensors"):  # read by content (safe_load)
            obj = load_plain(path, dense_only=False)  # sparse features: made dense below
            if isinstance(obj, dict):
                obj = _pick(obj, name, path)
            return _plain_array(obj, path, numeric, max_bytes)
        if suffix in (".csv", ".txt"):
            return _read_csv(path, name, numeric, max_bytes)
    except InputError:
        raise
    except Exception as e:  # a truncated or foreign file: say which file and why
        torch_file = suffix in (".pt", ".pth")  # else the reason names the file's own format
        why = (
            load_error_reason(e)
            if torch_file
            else load_error_reason(e, f"a readable {suffix} file")
        )
        raise InputError(f"{path}: cannot read as {suffix or 'an array file'} ({why})") from None
    raise InputError(
        f"{path}: unsupported file type {suffix!r}; use .npy, .npz, .pt, .safetensors or .csv"
    )


def open_features(spec: str, budget: int):
    """Features for the separability core: a .npy file or an uncompressed .npz member as a
    FeatureFile (read by row blocks, its header and size checked, nothing loaded); a
    compressed .npz member inflated only when its header says it fits in `budget` bytes;
    any other file through load_array, refused first when the file alone is larger than
    the budget (loading it would hold at least that much)."""
    path, name = _split_existing(spec)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if name:
            raise InputError(f"{path}: a .npy file holds one array; drop ':{name}'")
        return FeatureFile.open_npy(path)
    if suffix == ".npz":
        name = name if name is not None else _only_member(path)
        stored = FeatureFile.open_npz_member(path, name)
        if stored is not None:
            return stored
        _check_inflated_size(path, name, budget)
        return load_array(f"{path}:{name}", max_bytes=budget)
    if path.stat().st_size > budget:
        raise InputError(
            f"{path}: the file is {format_size(path.stat().st_size)}, more than the memory "
            f"budget {format_size(budget)}, and a {suffix} file is read whole: save the "
            "features as .npy (numpy.save) to have them read by blocks, or raise --max-memory"
        )
    return load_array(spec, max_bytes=budget)


def _only_member(path: Path) -> str:
    """The one array of a .npz file (else the error asks for a name)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
    except Exception as e:
        why = load_error_reason(e, "a readable .npz file")
        raise InputError(f"{path}: not a readable .npz file ({why})") from None
    return _pick({n: n for n in names}, None, path)


def _check_inflated_size(path: Path, name: str, budget: int) -> None:
    """Refuse a compressed .npz member whose array (from its header, read without inflating
    the rest) is larger than the budget, or that is not numbers. The member exists
    (FeatureFile.open_npz_member looked it up)."""
    where = f"{path}:{name}"
    try:
        with zipfile.ZipFile(path) as zf, zf.open(name + ".npy") as fh:
            shape, _, dtype, _ = npy_header(fh, where)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"{where}: cannot read it ({e})") from None
    check_feature_dtype(dtype, shape, where)
    size = npy_data_bytes(shape, dtype)
    if size > budget:
        raise InputError(
            f"{where}: a compressed member of {format_size(size)} once inflated (shape "
            f"{shape}, {dtype}), more than the memory budget {format_size(budget)}: save it "
            "with numpy.save or numpy.savez (not savez_compressed) to have it read by blocks, "
            "or raise --max-memory"
        )
