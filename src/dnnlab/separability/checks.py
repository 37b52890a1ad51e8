"""Checks that a feature/label pair means something before it is measured.

As scikit-learn's `check_classification_targets` refuses continuous targets, these refuse
inputs whose separability would be a number without meaning: labels that are not classes
(non-integral floats), or features that cannot tell any two samples apart (every column
constant). Both raise InputError with the reason.
"""

from __future__ import annotations

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.utils.chunks import chunk_rows


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def check_labels(labels, where: str = "labels") -> None:
    """Refuse float labels that are not whole numbers (they look continuous)."""
    y = _as_numpy(labels)
    if y.dtype.kind not in "fc":
        return
    y = y.reshape(-1)
    bad = ~np.isfinite(y)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: value {y[i].item()} at position {i} is not a class label")
    frac = y != np.round(y)
    if frac.any():
        i = int(np.flatnonzero(frac)[0])
        n_unique = np.unique(y).size
        raise InputError(
            f"{where}: labels look continuous ({y[i].item()} at position {i}; {n_unique} distinct "
            "values); separability needs class labels. Integral floats such as 1.0 are fine"
        )


def check_features(features, where: str = "features") -> None:
    """Refuse features that are not real numbers, hold NaN/Inf, or whose every column is
    constant (no sample differs from another). Read by row chunks: a FeatureFile is never
    loaded whole, and an array gets no N x D temporaries."""
    if isinstance(features, FeatureFile):
        x = features
    else:
        if not isinstance(features, torch.Tensor):
            arr = _as_numpy(features)
            if arr.dtype.kind not in "biuf":
                raise InputError(f"{where}: features must be real numbers; got dtype {arr.dtype}")
            features = torch.from_numpy(np.ascontiguousarray(arr))
        x = features
        if x.is_complex():
            raise InputError(f"{where}: features must be real numbers; got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[0] < 2:
            return
        x = x.reshape(x.shape[0], -1)
    n, d = x.shape
    if n < 2:
        return
    if d == 0:
        raise InputError(f"{where}: features have 0 values per sample")
    first, bad, first_bad, varies = x[0:1], 0, None, False
    step = chunk_rows(d, 1 << 22)
    for s in range(0, n, step):
        c = x[s : s + step]
        if c.is_floating_point():
            finite = torch.isfinite(c).all(1)
            if not bool(finite.all()):
                rows = (~finite).nonzero().squeeze(1)
                bad += rows.numel()
                first_bad = int(rows[0]) + s if first_bad is None else first_bad
        varies = varies or not bool((c == first).all())
    if bad:
        raise InputError(
            f"{where}: {bad} samples hold NaN or Inf (first at position {first_bad}); "
            "remove or impute them first"
        )
    if not varies:
        raise InputError(
            f"{where}: every feature column is constant, so all {n} samples are "
            "identical and a separability value would mean nothing"
        )


def check_pair(features, labels, x_name: str = "features", y_name: str = "labels") -> None:
    """Features (N, ...) and labels (N,) or (N, 1) that belong together: N >= 2 each."""
    n = features.shape[0] if getattr(features, "ndim", 0) else 0
    y_shape = tuple(labels.shape) if hasattr(labels, "shape") else (len(labels),)
    if n < 2:
        raise InputError(
            f"{x_name}: need at least 2 samples in shape (N, ...); got "
            f"{tuple(getattr(features, 'shape', ()))}"
        )
    if len(y_shape) not in (1, 2) or (len(y_shape) == 2 and y_shape[1] != 1):
        raise InputError(f"{y_name}: labels must have shape (N,) or (N, 1); got {y_shape}")
    if y_shape[0] != n:
        raise InputError(
            f"{x_name} has N={n} samples but labels have {y_shape[0]} ({y_name}); they must match"
        )


def check_inputs(features, labels, x_name: str = "features", y_name: str = "labels") -> None:
    """Every check, for a command or a caller that wants them."""
    check_pair(features, labels, x_name, y_name)
    check_labels(labels, y_name)
    check_features(features, x_name)
