"""The measures' inputs made ready: features as an (N, D) tensor or a FeatureFile left on
disk, labels as class codes, NaN/Inf named by row, the device to compute on."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.utils.chunks import chunk_rows
from dnnlab.utils.device import check_device


def as_feature_tensor(features) -> torch.Tensor:
    """Any (N, ...) array or tensor -> (N, D) tensor view, without copying when possible."""
    if isinstance(features, torch.Tensor):
        x = features.detach()
    elif isinstance(features, np.ndarray):
        arr = features
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise TypeError(f"features must be numeric; got dtype {arr.dtype}")
        with warnings.catch_warnings():  # a read-only array: read only (see _writable)
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(arr) if not arr.flags.c_contiguous else arr)
    else:
        try:
            x = torch.as_tensor(np.asarray(features, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise TypeError(f"features must be a numeric array or tensor: {e}") from None
    if x.dim() == 0:
        raise ValueError("features must have a sample axis: shape (N, ...); got a scalar")
    if x.is_complex():
        raise TypeError("complex features are not supported")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    return x.reshape(x.shape[0], -1) if x.dim() != 2 else x


def as_feature_source(features, in_place: bool = False):
    """as_feature_tensor, except that features on disk stay there: a FeatureFile, or a
    numpy memmap (unless in_place may normalize a writable one where it lies), comes back
    as a FeatureFile read by row blocks."""
    if isinstance(features, FeatureFile):
        return features
    if isinstance(features, np.memmap) and not (in_place and features.flags.writeable):
        try:
            on_disk = FeatureFile.from_memmap(features)
        except InputError as e:
            raise TypeError(str(e)) from None
        if on_disk is not None:
            return on_disk
    return as_feature_tensor(features)


def check_rows(x, what: str = "samples", prefix: str = "") -> tuple[int, int]:
    """(N, D) of features x (N, D), refused with fewer than 2 rows or no column; the message
    names the rows as `what`, after `prefix` (the caller, e.g. "linear: ")."""
    n, d = x.shape
    if n < 2:
        raise InputError(f"{prefix}need at least 2 {what}; got N={n}")
    if d == 0:
        raise InputError("features have 0 dimensions per sample")
    return n, d


def encode_labels(labels, n: int) -> tuple[np.ndarray, list]:
    """Labels of any type -> (codes 0..C-1 in sorted label order, the sorted class values)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1); got shape {tuple(arr.shape)}")
    if arr.shape[0] != n:
        raise ValueError(
            f"features have N={n} samples but labels have {arr.shape[0]}; they must match"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(f"labels contain {bad.size} NaN/Inf values, first at rows {bad[:5]}")
    classes, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64), classes.tolist()


class NonFiniteError(InputError):
    """Features with NaN or Inf; `rows` counts them (callers that made the features, such as
    the probe, say where they came from)."""

    def __init__(self, msg: str, rows: int = 0):
        super().__init__(msg)
        self.rows = rows


def check_finite(x: torch.Tensor) -> None:
    step = chunk_rows(x.shape[1], 1 << 24)
    bad_rows: list[int] = []
    count = 0
    for s in range(0, x.shape[0], step):
        ok = torch.isfinite(x[s : s + step]).all(1)
        if not bool(ok.all()):
            rows = (~ok).nonzero().squeeze(1) + s
            count += rows.numel()
            bad_rows += rows[: 5 - len(bad_rows)].tolist() if len(bad_rows) < 5 else []
    if count:
        raise NonFiniteError(
            f"features contain NaN or Inf in {count} rows (first rows: {bad_rows}); "
            "remove or impute them first",
            count,
        )


def resolve_device(x: torch.Tensor, device) -> torch.device:
    """The features' own device when none is asked for; else the one asked for, checked."""
    if device in (None, "auto"):
        return x.device
    if isinstance(device, torch.device):
        device = str(device)
    return check_device(device, "device")
