"""separability()'s inputs checked before any work: the samples (features, label codes,
classes), the measures' needs on them, the test set, and classes of a single sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dnnlab.errors import InputError, UndefinedMeasure
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.separability.inputs import as_feature_source, check_rows, encode_labels
from dnnlab.separability.nc1 import check_nc1_classes
from dnnlab.separability.normalize import NORMALIZATIONS
from dnnlab.separability.vocabulary import NO_SEARCH, Measure, search_order


@dataclass(frozen=True)
class Samples:
    """Checked inputs: features x (N, D), label codes (N,) int64 in 0..C-1, the C class names
    (str, in sorted label order), the C class sizes, and whether the caller's features may be
    written (overwrite_input)."""

    x: torch.Tensor
    codes: np.ndarray
    names: list[str]
    counts: np.ndarray
    writable: bool = True

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]


def check_samples(
    features, labels, wanted: list[Measure], normalize_method: str, in_place: bool = False
) -> Samples:
    """Validate features (N, ...) and labels (N,) before any work; errors name the problem.
    in_place: the caller allows normalizing its features where they lie (overwrite_input)."""
    if normalize_method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalize_method!r}; choose {NORMALIZATIONS}")
    x = as_feature_source(features, in_place)
    n, d = check_rows(x)
    codes, classes = encode_labels(labels, n)
    k = search_order(wanted)
    if k >= n:
        worst = max((m for m in wanted if m.kind not in NO_SEARCH), key=lambda m: m.order)
        raise InputError(
            f"measure {worst.name}: order r={k} needs r < N = {n} (a sample has only N-1 "
            "neighbours)"
        )
    counts = np.bincount(codes, minlength=len(classes))
    return Samples(x, codes, [str(c) for c in classes], counts, _writable(features))


def _writable(features) -> bool:
    """Whether normalizing in place may write into the caller's memory: not a read-only
    numpy array (a memory-mapped file opened "r" would crash the process), nor a file."""
    if isinstance(features, FeatureFile):
        return False
    return not (isinstance(features, np.ndarray) and not features.flags.writeable)


def check_measure_inputs(wanted: list[Measure], s: Samples, test, undefined: str):
    """Refuse a test set nothing uses and NC1 on classes it cannot measure.

    Returns the reason NC1 has no value on these classes when undefined="nan", else None.
    """
    kinds = {m.kind for m in wanted}
    if test is not None and "linear" not in kinds:
        raise InputError("a test set is only used by the measure linear; add it to measures")
    if test is not None:
        if not (isinstance(test, (tuple, list)) and len(test) == 2):
            raise InputError(
                f"test must be a pair (features, labels); got {type(test).__name__}"
                + (f" of length {len(test)}" if isinstance(test, (tuple, list)) else "")
            )
        if hasattr(test[0], "__len__") and len(test[0]) == 0:
            raise InputError("linear: the test set has no samples")
        shape = tuple(test[0].shape) if hasattr(test[0], "shape") else np.shape(test[0])
        if len(shape) == 1 and s.d > 1:
            raise InputError(
                f"test features have shape {shape}: give them as (samples, features); one "
                f"sample of D={s.d} is features[None]"
            )
    if "nc1" in kinds:
        try:
            check_nc1_classes(s.names, s.counts)
        except UndefinedMeasure as e:
            if undefined != "nan":
                raise
            return str(e)
    return None


def lone_samples(s: Samples) -> str | None:
    """What classes of a single sample do to the measures, or None when there are none."""
    lone = [c for c, k in zip(s.names, s.counts, strict=True) if k == 1]
    if not lone or len(s.names) < 2:
        return None
    if len(lone) == len(s.names):
        return (
            f"every one of the {len(lone)} classes has a single sample: no sample has a "
            "neighbour of its own class (SI, hsi, soft and knn would be 0, anti 1) and each is "
            "its own class's mean (CSI would be 1), whatever the features; these numbers would "
            "mean nothing"
        )
    return (
        f"{len(lone)} of the {len(s.names)} classes "
        f"{'has' if len(lone) == 1 else 'have'} a single sample (first: {lone[0]!r}): "
        "such a sample never has a neighbour of its own class (it counts against SI, hsi, "
        "soft and knn) and is its own class's mean (it counts for CSI)"
    )


def small_classes_for_knn(s: Samples, wanted) -> list[str]:
    """For each knn:k whose k is too large for the smallest class (of 2 or more samples): a
    sample of a class of n has at most n - 1 neighbours of its own class, so when
    2(n - 1) <= k its class can never hold a majority of its k neighbours, and knn:k counts
    it right only where its class wins a plurality or a tie (low, whatever the features)."""
    sizes = [(int(k), c) for c, k in zip(s.names, s.counts, strict=True) if k >= 2]
    if not sizes:
        return []
    n, name = min(sizes)
    return [
        f"{m.name}: the smallest class ({name!r}) has {n} samples, so each of them has at most "
        f"{n - 1} of its own class among its {m.order} nearest neighbours, never a majority: "
        f"{m.name} says little here; read it beside a smaller k"
        for m in wanted
        if m.kind == "knn" and 2 * (n - 1) <= m.order
    ]
