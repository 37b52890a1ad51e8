"""A feature matrix on disk, read a block of rows at a time.

`FeatureFile` stands for an (N, D) float matrix kept in a .npy file, an uncompressed .npz
member, or a read-only numpy memmap: it checks the header against the file's size before
any work, then hands out rows as CPU tensors (`f[i0:i1]`, `f.index_select(0, rows)`), read
with `os.preadv` into fresh buffers. Nothing is memory-mapped (a column-major file neither:
each column's rows are one read), so the process holds only the rows asked for; the
operating system's page cache keeps the file warm between passes.

The file is opened once, and every read goes through that one descriptor; its identity
(utils/steady.py) is taken then, and `check_unchanged()` (called when the measures are done)
refuses a file rewritten or replaced meanwhile, naming it.
The separability core (measures.separability) and the linear classifier take it wherever they
take an in-memory tensor: every pass over the features is by row blocks.

Values are returned as the in-memory path would hold them (inputs.as_feature_tensor):
float16/32/64 as they are, integers and booleans as float32, in native byte order.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.utils.steady import check_unchanged, identity, open_regular

# A numpy dtype kind -> whether rows come back as that float type (else float32).
_FLOAT_TYPES = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}


def npy_header(fh, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of the .npy stream at fh's position;
    where: how to name it in errors."""
    start = fh.tell()
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except ValueError as e:
        raise InputError(f"{where}: cannot read as .npy ({e})") from None
    return tuple(shape), bool(fortran), np.dtype(dtype), fh.tell() - start


def npy_data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of the data an .npy header describes."""
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def check_feature_dtype(dtype: np.dtype, shape: tuple[int, ...], where: str) -> None:
    """Refuse arrays that are not (N, ...) real numbers: object (pickled) and structured
    arrays, strings, complex numbers, a scalar."""
    if dtype.hasobject:
        raise InputError(f"{where}: an object array (Python objects), not numbers")
    if dtype.names is not None or dtype.kind not in "biuf":
        raise InputError(f"{where}: features must be real numbers; got dtype {dtype}")
    if len(shape) < 1:
        raise InputError(f"{where}: features need a sample axis, shape (N, ...); got a scalar")


class FeatureFile:
    """Rows of an (N, ...) array stored at `offset` in `path` (flattened to (N, D)).

    shape: torch.Size (N, D); dtype: the torch dtype rows come back in; device: cpu.
    `fh`: the file, open (open_regular); every read goes through it.
    """

    def __init__(self, path, offset: int, dtype: np.dtype, shape, fortran=False, fh=None):
        self.path = Path(path)
        self.fh = fh if fh is not None else open_regular(self.path)
        self.identity = identity(self.fh)
        self.offset = int(offset)
        self.file_dtype = np.dtype(dtype)
        self.file_shape = tuple(int(s) for s in shape)
        n = self.file_shape[0]
        d = int(np.prod(self.file_shape[1:], dtype=np.int64)) if len(self.file_shape) > 1 else 1
        self.shape = torch.Size((n, d))
        self.fortran = fortran and len(self.file_shape) > 1
        native = self.file_dtype.newbyteorder("=")
        self.out_dtype = native if native in _FLOAT_TYPES else np.dtype(np.float32)
        self.dtype = torch.from_numpy(np.empty(0, self.out_dtype)).dtype
        self.device = torch.device("cpu")
        self.ndim = 2

    # ------------------------------------------------------------------ opening

    @classmethod
    def open_npy(cls, path) -> FeatureFile:
        """A .npy file, its header and size checked."""
        path = Path(path)
        fh = open_regular(path)
        try:
            shape, fortran, dtype, header = npy_header(fh, str(path))
            check_feature_dtype(dtype, shape, str(path))
            data = npy_data_bytes(shape, dtype)
            size = os.fstat(fh.fileno()).st_size
            if size != header + data:
                raise InputError(
                    f"{path}: the file is {size} bytes but its header describes "
                    f"{header + data} (shape {shape}, {dtype}): it is truncated or damaged"
                )
            return cls(path, header, dtype, shape, fortran, fh)
        except BaseException:
            fh.close()
            raise

    @classmethod
    def open_npz_member(cls, path, name: str) -> FeatureFile | None:
        """An uncompressed (np.savez) member NAME of a .npz file, checked; None when the
        member is compressed (it must be inflated to be read)."""
        path = Path(path)
        fh = open_regular(path)
        try:
            return cls._npz_member(path, name, fh)
        except BaseException:
            fh.close()
            raise

    @classmethod
    def _npz_member(cls, path: Path, name: str, fh) -> FeatureFile | None:
        """open_npz_member with the file open as `fh` (closed here when None is returned)."""
        info = _npz_info(fh, path, name)
        if info.compress_type != zipfile.ZIP_STORED:
            fh.close()
            return None
        fh.seek(info.header_offset)
        local = fh.read(30)  # the local file header: its name and extra field lengths
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise InputError(f"{path}: member {name!r}: damaged zip header")
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
        start += int.from_bytes(local[28:30], "little")
        fh.seek(start)
        shape, fortran, dtype, header = npy_header(fh, f"{path}:{name}")
        where = f"{path}:{name}"
        check_feature_dtype(dtype, shape, where)
        data = npy_data_bytes(shape, dtype)
        size = os.fstat(fh.fileno()).st_size
        if info.file_size != header + data or start + info.file_size > size:
            raise InputError(
                f"{where}: the member holds {info.file_size} bytes but its header describes "
                f"{header + data} (shape {shape}, {dtype}): it is truncated or damaged"
            )
        return cls(path, start + header, dtype, shape, fortran, fh)

    @classmethod
    def from_memmap(cls, mm: np.memmap) -> FeatureFile | None:
        """The file behind a numpy memmap (C or Fortran order), or None when it has none."""
        if getattr(mm, "filename", None) is None or mm.base is None:
            return None
        fortran = not mm.flags.c_contiguous and mm.flags.f_contiguous
        if not (mm.flags.c_contiguous or fortran):
            return None  # a strided view: read it as an array
        check_feature_dtype(mm.dtype, mm.shape, str(mm.filename))
        # mm.offset is the memmap's own start; a view into it starts further on.
        start = mm.offset + (mm.__array_interface__["data"][0] - _base_address(mm))
        return cls(mm.filename, start, mm.dtype, mm.shape, fortran)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FeatureFile({str(self.path)!r}, shape={tuple(self.file_shape)})"

    def check_unchanged(self) -> None:
        """Refuse (InputError naming the file) a file rewritten, or replaced under its name,
        since it was opened: the rows read would belong to neither version."""
        check_unchanged(self.path, self.fh, self.identity)

    def close(self) -> None:
        self.fh.close()

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self.index_select(0, torch.arange(start, stop, step))
            return self._read(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {key} out of range for {self.shape[0]} rows")
            return self._read(i, i + 1)[0]
        return self.index_select(0, torch.as_tensor(key))

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` (any order, repeats allowed) as an (len(index), D) tensor."""
        if dim != 0:
            raise ValueError("a FeatureFile is read by rows (dim 0) only")
        idx = torch.as_tensor(index).reshape(-1).cpu().to(torch.long)
        out = torch.empty((idx.numel(), self.shape[1]), dtype=self.dtype)
        if idx.numel() == 0:
            return out
        rows, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        got = torch.empty((rows.numel(), self.shape[1]), dtype=self.dtype)
        # Runs of consecutive rows are one read each.
        r = rows.numpy()
        breaks = np.flatnonzero(np.diff(r) != 1) + 1
        for run in np.split(np.arange(r.size), breaks):
            a, b = int(r[run[0]]), int(r[run[-1]]) + 1
            got[run[0] : run[-1] + 1] = self._read(a, b)
        return out.copy_(got[inverse])

    def _read(self, i0: int, i1: int) -> torch.Tensor:
        """Rows i0:i1 as a fresh (i1 - i0, D) tensor in self.dtype."""
        n_rows, d = i1 - i0, self.shape[1]
        if self.fortran:
            return self._read_fortran(i0, i1)
        raw = np.empty((n_rows, d), dtype=self.file_dtype)
        self._pread(raw.reshape(-1), self.offset + i0 * d * raw.itemsize)
        return torch.from_numpy(_native(raw, self.out_dtype))

    def _read_fortran(self, i0: int, i1: int) -> torch.Tensor:
        """Rows of a column-major file: rows i0:i1 of each column are one read (element
        (i, c) of the trailing axes' column c, counted in Fortran order, is at c * N + i)."""
        n, n_rows, trailing = self.shape[0], i1 - i0, self.file_shape[1:]
        cols = np.empty((self.shape[1], n_rows), dtype=self.file_dtype)
        for c in range(self.shape[1]):
            self._pread(cols[c], self.offset + (c * n + i0) * cols.itemsize)
        # cols[c] in Fortran order of the trailing axes is C order of them reversed.
        rows = cols.reshape(*reversed(trailing), n_rows).transpose()
        return torch.from_numpy(
            _native(np.ascontiguousarray(rows).reshape(n_rows, -1), self.out_dtype)
        )

    def _pread(self, out: np.ndarray, at: int) -> None:
        """Fill the contiguous array `out` with the file's bytes from offset `at`."""
        view, done, want = memoryview(out.view(np.uint8)), 0, out.nbytes
        while done < want:
            got = os.preadv(self.fh.fileno(), [view[done:]], at + done)
            if got == 0:
                raise InputError(f"{self.path}: the file ended early (was it truncated?)")
            done += got


def _native(raw: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """raw in out_dtype and native byte order (a copy only when it has to change)."""
    if raw.dtype == out_dtype:
        return raw
    return raw.astype(out_dtype)


def _base_address(mm: np.memmap) -> int:
    """Address of the first byte of the memmap object that owns the mapping."""
    base = mm
    while isinstance(base.base, np.memmap):
        base = base.base
    return base.__array_interface__["data"][0]


def _npz_info(fh, path: Path, name: str) -> zipfile.ZipInfo:
    """The zip entry of member NAME of the .npz file open as `fh` (named `path`)."""
    try:
        with zipfile.ZipFile(fh) as zf:
            return zf.getinfo(name + ".npy")
    except KeyError:
        raise InputError(f"{path}: no array named {name!r}") from None
    except zipfile.BadZipFile as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from None
