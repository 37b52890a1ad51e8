"""The Separation Index family, computed from one neighbour search.

SI      fraction of samples whose nearest neighbour (itself excluded) shares its label
CSI     fraction of samples whose nearest class mean is their own class's
hsi:r   fraction whose r nearest neighbours all share the label (high-order SI)
soft:r  mean fraction of the r nearest neighbours that share the label
anti:r  fraction whose r nearest neighbours include none with the label
knn:k   leave-one-out k-nearest-neighbour accuracy: majority vote of the k nearest; a tie
        between labels goes to the tied label met first in distance order
nc1     neural collapse NC1 (Papyan, Han and Donoho 2020): trace(Sigma_W Sigma_B^+) / C
linear  linear-probe accuracy on a test set of a ridge classifier fitted on these samples
        (separability.linear)
For r = 1: hsi = soft = knn = si and anti = 1 - si, exactly.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

import dnnlab.separability.knn as knn
from dnnlab.errors import BudgetError, InputError, UndefinedMeasure
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.separability.inputs import (
    as_feature_source,
    check_finite,
    encode_labels,
    resolve_device,
)
from dnnlab.separability.knn import class_centers
from dnnlab.separability.linear import (
    DEFAULT_ALPHA,
    SharedWork,
    fit_linear,
    fit_linear_shared,
    linear_budget,
)
from dnnlab.separability.nc1 import check_nc1_classes, nc1_values
from dnnlab.separability.normalize import (
    NORMALIZATIONS,
    NormalizedRows,
    feature_stats,
    normalize_with_norms,
)
from dnnlab.utils.chunks import chunk_rows
from dnnlab.utils.precision import highest_matmul_precision
from dnnlab.utils.sizes import MEASURE_MEMORY, format_size, parse_size

KINDS = ("si", "csi", "hsi", "soft", "anti", "knn", "nc1", "linear")
# Measures that need no neighbour search.
NO_SEARCH = ("csi", "nc1", "linear")
# Measures with a per-sample tally (the others are computed whole).
ROW_KINDS = ("si", "csi", "hsi", "soft", "anti", "knn")
ORDERLESS = ("si", "csi", "nc1", "linear")
DEFAULT_MEASURES = ("si", "csi")
# Elements per tile of the passes that stream rows after the search (refinement, NC1's
# float64 projections): 64 MiB of float64.
STREAM_ELEMS = 1 << 23


@dataclass(frozen=True)
class Measure:
    kind: str
    order: int = 1

    @property
    def name(self) -> str:
        return self.kind if self.kind in ORDERLESS else f"{self.kind}:{self.order}"


def parse_measures(spec) -> list[Measure]:
    """'si,csi,hsi:3' (or a list of such names) -> [Measure, ...]."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Measure] = []
    for raw in items:
        text = str(raw).strip().lower()
        if not text:
            continue
        m = re.fullmatch(r"([a-z][a-z0-9]*?)(?::(\d+))?", text)
        if not m or m.group(1) not in KINDS:
            raise ValueError(
                f"unknown measure {raw!r}; known: si, csi, hsi:R, soft:R, anti:R, knn:K, nc1, "
                "linear (R, K >= 1)"
            )
        kind, order = m.group(1), int(m.group(2) or 1)
        if kind in ORDERLESS and m.group(2) and order != 1:
            raise ValueError(f"measure {raw!r}: {kind} takes no order; use hsi:{order}")
        if order < 1:
            raise ValueError(f"measure {raw!r}: the order must be >= 1")
        meas = Measure(kind, order)
        if meas not in out:
            out.append(meas)
    if not out:
        raise ValueError("no measure requested")
    return out


@dataclass
class SeparabilityResult:
    """Values of the requested measures, per class too; prints as a table, saves as JSON."""

    values: dict[str, float]
    per_class: dict[str, dict[str, float]]
    class_counts: dict[str, int]
    n: int
    dim: int
    normalize: str
    device: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    # The fitted separability.linear.LinearProbe when "linear" was measured (not saved).
    linear_probe: object = field(default=None, repr=False, compare=False)

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def to_dict(self) -> dict:
        return {
            **self.values,
            "per_class": self.per_class,
            "class_counts": self.class_counts,
            "n": self.n,
            "dim": self.dim,
            "normalize": self.normalize,
            "device": self.device,
            "seconds": round(self.seconds, 4),
            "notes": self.notes,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        names = list(self.values)
        head = f"N={self.n}  D={self.dim}  normalize={self.normalize}  device={self.device}"
        lines = [head, f"{'measure':<10}{'value':>9}"]
        lines += [f"{k:<10}{v:>9.4f}" for k, v in self.values.items()]
        if self.per_class:
            w = max(8, *(len(c) for c in self.per_class)) + 2
            lines.append("")
            lines.append(f"{'class':<{w}}{'n':>7}" + "".join(f"{k:>9}" for k in names))
            for c, vals in self.per_class.items():
                row = f"{c:<{w}}{self.class_counts[c]:>7}"
                lines.append(row + "".join(f"{vals[k]:>9.4f}" for k in names))
        lines.append(f"({self.seconds:.2f} s)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- compute


def plan_memory(n: int, copy_d: int, d: int, kk: int, itemsize: int, budget: int):
    """Split the budget: the normalized copy (copy_d columns; 0 when normalizing in place)
    and the search state first, the rest for blocks."""
    fixed = n * copy_d * itemsize + n * kk * (itemsize + 8) * 3 + n * 64
    workspace = budget - fixed
    # The blocks get 3/4 of the workspace and need four 64 x 64 buffers (knn.choose_block).
    least_workspace = -(-4 * 64 * 64 * itemsize * 4 // 3) + 4
    if workspace < least_workspace:
        need = fixed + least_workspace
        raise BudgetError(
            f"max_memory {format_size(budget)} is too small: the normalized features "
            f"alone take {format_size(n * copy_d * itemsize)} (N={n}, D={d}); "
            f"allow at least {format_size(need, up=True)}"
        )
    # Refinement gathers (rows x candidates x D) tiles: give it a quarter, up to
    # STREAM_ELEMS (larger tiles are no faster, only more memory).
    mem_elems = max(d * (kk + 1), min(STREAM_ELEMS, workspace // 4 // 8))
    return workspace * 3 // 4, int(mem_elems)


def separability(
    features,
    labels,
    measures=DEFAULT_MEASURES,
    *,
    normalize_method: str = "zscore",
    device=None,
    max_memory=MEASURE_MEMORY,
    progress: bool = False,
    group=None,
    compute_dtype: torch.dtype = torch.float32,
    stats: knn.SearchStats | None = None,
    block: int | None = None,
    overwrite_input: bool = False,
    test=None,
    alpha: float | None = None,
    undefined: str = "raise",
    _training_scores: bool = False,
) -> SeparabilityResult:
    """Compute several separability measures from one exact neighbour search.

    features: (N, ...) numpy array or torch tensor (float16/32/64, CPU or CUDA), flattened
        per sample; never modified.
    labels: N values of any sortable type (ints need not be contiguous; strings allowed).
    measures: names such as "si", "csi", "hsi:3", "soft:3", "anti:3", "knn:5", "nc1" (list
        or comma string); see the module docstring and docs/separability.md.
    normalize_method: "zscore" (per feature, (x - mean) / (unbiased std + 1e-10)), "minmax"
        or "none".
    device: where to compute; default: where the features are.
    max_memory: budget for the normalized copy and the blocks ("2GB", or bytes).
    group: a torch.distributed process group to share the work (default: the world group
        when torch.distributed is initialized).
    block: rows per block; default: the largest the memory budget allows.
    overwrite_input: allow normalizing `features` in place (float32, contiguous, already on
        the device) instead of copying them: the caller's contents are lost, and the memory
        budget no longer has to hold an N x D copy.
    test: (features, labels) on which "linear" is scored; it is fitted on `features`.
    alpha: the ridge regularization of "linear" (default separability.linear.DEFAULT_ALPHA).
    undefined: "raise" (default) refuses a measure with no value on these features (NC1 when
        every class has the same mean); "nan" gives NaN and says why in `notes`.
    _training_scores: score "linear" on these samples, without a test set (see
        separability_fitting).
    The fitted linear probe, when "linear" is measured, is the result's `linear_probe`.
    """
    t0 = time.perf_counter()
    wanted = parse_measures(measures)
    linear = any(m.kind == "linear" for m in wanted)
    if linear and test is None and not _training_scores:
        raise InputError(
            "measure linear needs a test set to score on: pass test=(features, labels) "
            "(dnnlab si: --test FEATURES LABELS)"
        )
    s = _check_samples(features, labels, wanted, normalize_method, overwrite_input)
    dev = resolve_device(s.x, device)
    nc1_undefined = _check_measure_inputs(wanted, s, test, undefined)
    lone = _lone_samples(s)
    overwrite_input = overwrite_input and s.writable
    run = _Run(s, normalize_method, dev, t0, notes=[])
    k = _search_order(wanted)
    budget = parse_size(max_memory)
    fit = dict(alpha=DEFAULT_ALPHA if alpha is None else alpha)
    lin = None
    if lone is not None and len(s.names) > 1 and all(c == 1 for c in s.counts):
        return _all_alone_result(wanted, run, lone, undefined)
    if lone is not None:
        run.notes.append(lone)
    if linear and all(m.kind == "linear" for m in wanted):  # no normalized copy needed
        lin = _linear_probe(s.x, labels, test, normalize_method, device, budget, **fit)
        run.notes.append(_linear_note(lin, s.n, test))
        return run.result({"linear": lin.accuracy}, _linear_per_class(lin, s.names), lin.probe)
    # The linear probe shares the search's normalized copy and block products when it can
    # (linear.SharedWork); the search then plans without the fit's share of the budget.
    # A test set scored after the search must not be what it normalized in place.
    share = linear and _can_share(s, k, normalize_method, compute_dtype)
    share = share and not (overwrite_input and test is not None)
    plan, search_budget = None, budget - (_linear_need(s, budget) if share else 0)
    if share and search_budget > 0:
        try:
            plan = _plan_search(
                s.x, k, compute_dtype, overwrite_input, device, search_budget, block, dev
            )
        except BudgetError:
            pass
    share = plan is not None
    if plan is None and len(s.names) > 1:
        plan = _plan_search(s.x, k, compute_dtype, overwrite_input, device, budget, block, dev)
    if linear and not share:
        lin = _linear_probe(s.x, labels, test, normalize_method, device, budget, **fit)
        run.notes.append(_linear_note(lin, s.n, test))
    if len(s.names) == 1:
        return _one_class_result(wanted, run)

    in_place, block, mem_elems = plan
    search = _Search(k, block, mem_elems, group, progress, stats)
    with highest_matmul_precision():
        a, sq, work = _normalize_on_device(
            s.x, dev, normalize_method, compute_dtype, in_place, share
        )
        codes = torch.as_tensor(s.codes, device=dev)
        hits = _row_tallies(a, sq, codes, wanted, search, len(s.names), work)
        if work is not None:  # the fit may use the budget but for the normalized copy
            fit_memory = budget - (0 if in_place else s.n * s.d * 4)
            lin = _score(fit_linear_shared(work, labels, max_memory=fit_memory, **fit), test)
            run.notes.append(_linear_note(lin, s.n, test))
            del work
        nc1, nc1_notes = _nc1_step(a, codes, wanted, s.names, search, undefined, nc1_undefined)
    run.notes += nc1_notes
    return run.result(*_assemble(wanted, hits, codes, s, nc1, lin), lin and lin.probe)


def separability_fitting(features, labels, measures=DEFAULT_MEASURES, **kw):
    """separability() on a linear probe's training split: `linear` is fitted on these
    features and its value is the training accuracy (no test set). Returns (result, the
    fitted LinearProbe or None), the probe for scoring other splits later."""
    r = separability(features, labels, measures, _training_scores=True, **kw)
    return r, r.linear_probe


def _can_share(s: _Samples, k: int, normalize_method: str, compute_dtype) -> bool:
    """Whether the linear probe can take the search's normalized copy and Gram: a search
    runs, zscore (its shift is the probe's centering), the dual form (D > N), float32 (the
    probe's compute dtype) and two classes at least (else the fit refuses before any work).
    Under torch.distributed the processes sum their blocks (knn.k_nearest)."""
    if not (k and normalize_method == "zscore" and s.d > s.n and len(s.names) >= 2):
        return False
    if isinstance(s.x, FeatureFile):  # the fit needs the rows in memory: it reads on its own
        return False
    return compute_dtype == torch.float32


def _linear_need(s: _Samples, budget: int) -> int:
    """Bytes the dual fit needs beside the normalized copy: its N x N Gram (counted in
    float64 for the fallback) and its float64 row chunks (linear.linear_budget)."""
    return linear_budget(s.n, s.d, budget)[1]


# ------------------------------------------------------------------ separability's steps


@dataclass(frozen=True)
class _Samples:
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


@dataclass
class _Run:
    """What every SeparabilityResult of one call shares; notes grow as the work goes."""

    samples: _Samples
    normalize_method: str
    dev: torch.device
    t0: float
    notes: list[str]

    def result(self, values: dict, per_class: dict, probe=None) -> SeparabilityResult:
        s = self.samples
        return SeparabilityResult(
            values,
            per_class,
            {c: int(s.counts[i]) for i, c in enumerate(s.names)},
            s.n,
            s.d,
            self.normalize_method,
            str(self.dev),
            time.perf_counter() - self.t0,
            self.notes,
            probe,
        )


@dataclass(frozen=True)
class _Search:
    """Settings of the neighbour search: order k, rows per block, refinement memory (elements)."""

    k: int
    block: int
    mem_elems: int
    group: object
    progress: bool
    stats: knn.SearchStats | None


@dataclass(frozen=True)
class _LinearScore:
    """The fitted ridge probe and its score on the test set."""

    probe: object  # separability.linear.LinearProbe
    accuracy: float
    per_class: dict[str, float]  # classes absent from the test set are missing
    test_counts: dict[str, int]


def _search_order(wanted: list[Measure]) -> int:
    """The number of nearest neighbours the measures need (0: no neighbour search)."""
    return max((m.order for m in wanted if m.kind not in NO_SEARCH), default=0)


def _check_samples(
    features, labels, wanted: list[Measure], normalize_method: str, in_place: bool = False
) -> _Samples:
    """Validate features (N, ...) and labels (N,) before any work; errors name the problem.
    in_place: the caller allows normalizing its features where they lie (overwrite_input)."""
    if normalize_method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalize_method!r}; choose {NORMALIZATIONS}")
    x = as_feature_source(features, in_place)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples; got N={n}")
    if d == 0:
        raise ValueError("features have 0 dimensions per sample")
    codes, classes = encode_labels(labels, n)
    k = _search_order(wanted)
    if k >= n:
        worst = max((m for m in wanted if m.kind not in NO_SEARCH), key=lambda m: m.order)
        raise InputError(
            f"measure {worst.name}: order r={k} needs r < N = {n} (a sample has only N-1 "
            "neighbours)"
        )
    counts = np.bincount(codes, minlength=len(classes))
    return _Samples(x, codes, [str(c) for c in classes], counts, _writable(features))


def _writable(features) -> bool:
    """Whether normalizing in place may write into the caller's memory: not a read-only
    numpy array (a memory-mapped file opened "r" would crash the process), nor a file."""
    if isinstance(features, FeatureFile):
        return False
    return not (isinstance(features, np.ndarray) and not features.flags.writeable)


def _check_measure_inputs(wanted: list[Measure], s: _Samples, test, undefined: str):
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


def _linear_probe(x, labels, test, normalize_method, device, max_memory, alpha) -> _LinearScore:
    """Fit the ridge probe on (x, labels) on its own and score it (_score)."""
    probe = fit_linear(
        x,
        labels,
        alpha=alpha,
        normalize_method=normalize_method,
        device=device,
        max_memory=max_memory,
    )
    return _score(probe, test)


def _score(probe, test) -> _LinearScore:
    """The fitted probe's accuracy on test = (features, labels); test=None: on its training
    samples (per class unknown)."""
    if test is None:
        return _LinearScore(probe, probe.train_accuracy, {}, {})
    try:
        accuracy, per_class, test_counts = probe.score(*test)
    except (ValueError, TypeError) as e:
        raise type(e)(f"linear: the test set: {e}") from None
    return _LinearScore(probe, accuracy, per_class, test_counts)


def _linear_note(lin: _LinearScore, n: int, test) -> str:
    p = lin.probe
    scored = "" if test is None else f", scored on {sum(lin.test_counts.values())} test samples"
    shared = ", its Gram from the neighbour search" if p.shared_gram else ""
    return (
        f"linear: ridge classifier, alpha={p.alpha:g}, {p.form} form{shared}, fitted on "
        f"these {n} samples (train accuracy {p.train_accuracy:.4f}){scored}"
    )


def _linear_per_class(lin: _LinearScore, names: list[str]) -> dict[str, dict[str, float]]:
    """{class: {"linear": accuracy}}; NaN for a class absent from the test set."""
    return {c: {"linear": lin.per_class.get(c, float("nan"))} for c in names}


def _lone_samples(s: _Samples) -> str | None:
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


def _all_alone_result(wanted, run: _Run, reason: str, undefined: str) -> SeparabilityResult:
    """Every class has one sample: refused (undefined="raise"), or NaN for every measure
    with the reason in the notes (undefined="nan"); linear is refused too (one sample per
    class is no training set)."""
    if undefined != "nan":
        raise UndefinedMeasure(reason)
    run.notes.append(reason)
    vals = {m.name: float("nan") for m in wanted}
    return run.result(vals, {c: dict(vals) for c in run.samples.names})


def _one_class_result(wanted: list[Measure], run: _Run) -> SeparabilityResult:
    """All samples share one label: every measure is trivial (anti 0, the others 1)."""
    s = run.samples
    msg = f"all {s.n} samples have one label ({s.names[0]!r}); every measure is trivial"
    warnings.warn(msg, TrivialMeasure, stacklevel=3)  # points at separability()'s caller
    run.notes.append(msg)
    vals = {m.name: (0.0 if m.kind == "anti" else 1.0) for m in wanted}
    return run.result(vals, {s.names[0]: dict(vals)})


def _plan_search(x, k, compute_dtype, overwrite_input, device, max_memory, block, dev):
    """Memory plan of the search: (normalize in place?, rows per block, refinement elements)."""
    n, d = x.shape
    itemsize = torch.finfo(compute_dtype).bits // 8
    kk = min(n - 1, k + knn.EXTRA_CANDIDATES) if k else 1
    streamed = isinstance(x, FeatureFile)
    in_place = (  # never for a FeatureFile: separability() made overwrite_input False
        overwrite_input
        and x.dtype == compute_dtype
        and x.is_contiguous()
        and (device in (None, "auto") or x.device == torch.device(device))
    )
    copy_d = 0 if in_place or streamed else d
    workspace, mem_elems = plan_memory(n, copy_d, d, kk, itemsize, parse_size(max_memory))
    if block is None:
        block = knn.choose_block(n, d, workspace, itemsize, dev, _streamed_row_bytes(x, itemsize))
    elif block < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    return in_place, block, mem_elems


def _streamed_row_bytes(x, itemsize: int) -> int:
    """Bytes a block row of a FeatureFile takes while the search reads it (0 in memory):
    the two kept normalized blocks (NormalizedRows), the raw rows as read, their
    conversion and the normalization's temporary."""
    if not isinstance(x, FeatureFile):
        return 0
    raw = max(x.file_dtype.itemsize, 4)
    return x.shape[1] * (2 * itemsize + 2 * raw + max(raw, itemsize))


def _normalize_on_device(x, dev, normalize_method, compute_dtype, in_place, share=False):
    """x (N, D) -> (a (N, D) normalized in compute_dtype on dev, squared row norms sq (N,),
    and with share a linear.SharedWork holding a, its statistics and an empty N x N Gram for
    the search to fill; else None). A FeatureFile gives a NormalizedRows view: its rows
    are read and normalized block by block, never all at once."""
    streamed = isinstance(x, FeatureFile)
    xd = x.to(dev, non_blocking=True) if not streamed and x.device != dev else x
    stats = feature_stats(xd, normalize_method) if share or in_place or streamed else None
    if stats is not None and not all(bool(torch.isfinite(t).all()) for t in stats):
        check_finite(x)  # before normalizing in place spreads a NaN over every row
    if streamed:
        a = NormalizedRows(x, *stats, compute_dtype, dev)
        sq = knn.sq_norms(a)
    elif normalize_method == "none" and xd.dtype == compute_dtype and xd.is_contiguous():
        a, sq = xd, knn.sq_norms(xd)  # a is only read afterwards, so no copy is needed
    else:
        a, sq = normalize_with_norms(
            xd, normalize_method, compute_dtype, inplace=in_place, stats=stats
        )
    if not bool(torch.isfinite(sq).all()):
        check_finite(x)  # names the offending rows
        if normalize_method == "zscore":  # a spread beyond float64 (|x| near 1e154 or more)
            raise InputError(
                "features overflow once normalized: a feature's spread is too large for "
                "float64 (values near 1e154 or larger); rescale them"
            )
        raise InputError(
            f"features overflow {str(compute_dtype).removeprefix('torch.')} once normalized "
            "(squared row norms beyond its range); rescale them or use normalize='zscore'"
        )
    if not share:
        return a, sq, None
    n = a.shape[0]
    return a, sq, SharedWork(a, *stats, torch.empty((n, n), dtype=a.dtype, device=dev))


def _neighbour_tallies(a, sq, codes, wanted: list[Measure], search: _Search, work=None):
    """One k-nearest search over a (N, D) -> (same, votes).

    same[r] (N,) int64: how many of each sample's r nearest share its label, for each order
    r a measure needs; votes[k] (N,) bool: the k nearest's majority label is the sample's own.
    """
    stats = search.stats if search.stats is not None else knn.SearchStats()
    bar = _progress_bar(a.shape[0], search.block, search.group, search.progress)
    nbr = knn.k_nearest(
        a,
        search.k,
        search.block,
        sq=sq,
        mem_elems=search.mem_elems,
        progress=bar.update if bar else None,
        group=search.group,
        stats=stats,
        gram=None if work is None else work.gram,
    )
    if bar:
        bar.close()
    eq = codes[nbr] == codes[:, None]
    cum = eq.to(torch.int64).cumsum(1)  # cum[:, r-1] = neighbours among the r nearest
    same = {r: cum[:, r - 1] for r in sorted({m.order for m in wanted if m.kind not in NO_SEARCH})}
    votes = {
        m.order: knn_vote(codes[nbr[:, : m.order]]) == codes for m in wanted if m.kind == "knn"
    }
    return same, votes


def _nc1_step(a, codes, wanted, names, search: _Search, undefined: str, reason: str | None):
    """(None, []) when nc1 is not asked for; else ((nc1, [per class]), []), or NaNs and
    [the reason NC1 is undefined] when undefined="nan"."""
    if not any(m.kind == "nc1" for m in wanted):
        return None, []
    if reason is None:
        try:
            return nc1_values(a, codes, len(names), names, search.mem_elems), []
        except UndefinedMeasure as e:
            if undefined != "nan":
                raise
            # Named, not measured: NaN with the reason (the probe goes on to other layers).
            reason = str(e)
    return (float("nan"), [float("nan")] * len(names)), [reason]


def _row_tallies(
    a, sq, codes, wanted, search: _Search, n_classes: int, work=None
) -> dict[str, torch.Tensor]:
    """{measure name: (N,) int64 per-sample tally} for the measures that have one; the
    search fills work.gram (linear.SharedWork) on the way when given."""
    same, votes, own_center = {}, {}, None
    if search.k:
        same, votes = _neighbour_tallies(a, sq, codes, wanted, search, work)
    if any(m.kind == "csi" for m in wanted):
        centers = class_centers(a, codes, n_classes)
        own_center = knn.nearest_center(a, centers, search.block, search.mem_elems, sq=sq) == codes
    return {m.name: _row_hits(m, same, votes, own_center) for m in wanted if m.kind in ROW_KINDS}


def _row_hits(m: Measure, same: dict, votes: dict, own_center) -> torch.Tensor:
    """(N,) int64 tally of measure m per sample: 1/0 hits; for soft, same-label neighbours."""
    if m.kind == "csi":
        return own_center.to(torch.int64)
    if m.kind == "soft":
        return same[m.order]  # numerator; denominator r in _assemble
    if m.kind == "anti":
        return (same[m.order] == 0).to(torch.int64)
    if m.kind == "knn":
        return votes[m.order].to(torch.int64)
    return (same[m.order] == m.order).to(torch.int64)  # si, hsi


def _assemble(wanted, hits, codes, s: _Samples, nc1, lin: _LinearScore | None):
    """Per-sample tallies and whole values -> ({measure: value}, {class: {measure: value}})."""
    values: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {c: {} for c in s.names}
    for m in wanted:
        if m.kind == "nc1":
            total, by_class = nc1
        elif m.kind == "linear":  # NaN for a class absent from the test set
            total, by_class = lin.accuracy, [lin.per_class.get(c, float("nan")) for c in s.names]
        else:
            total, by_class = _rates(hits[m.name], codes, s, m.order if m.kind == "soft" else 1)
        values[m.name] = total
        for c, v in zip(s.names, by_class, strict=True):
            per_class[c][m.name] = v
    for name, v in values.items():
        assert name == "nc1" or not math.isnan(v)
    return values, per_class


def _rates(hits: torch.Tensor, codes: torch.Tensor, s: _Samples, denom: int):
    """hits (N,) int64 -> (sum / (N * denom), [class c's sum / (n_c * denom) for each c])."""
    total = int(hits.sum()) / (s.n * denom)
    by_class = torch.zeros(len(s.names), dtype=torch.int64, device=hits.device)
    by_class.index_add_(0, codes, hits)
    return total, [int(by_class[ci]) / (int(s.counts[ci]) * denom) for ci in range(len(s.names))]


def knn_vote(lab: torch.Tensor, rows_per_step: int = 1 << 16) -> torch.Tensor:
    """Majority label of each row of `lab` (N, K), neighbours' labels in distance order.

    A tie between labels goes to the tied label met first in the row: each position's label
    is counted over the row, and the first position whose label has the top count wins.
    Memory O(rows_per_step * K^2), whatever the number of classes.
    """
    n, k = lab.shape
    out = torch.empty(n, dtype=lab.dtype, device=lab.device)
    step = chunk_rows(k * k, rows_per_step)
    for s in range(0, n, step):
        c = lab[s : s + step]
        counts = (c[:, :, None] == c[:, None, :]).sum(2)  # counts[i, j]: votes for c[i, j]
        top = counts == counts.max(1, keepdim=True).values
        first = top.to(torch.int8).argmax(1)  # argmax returns the first of equal maxima
        out[s : s + step] = c.gather(1, first[:, None])[:, 0]
    return out


class TrivialMeasure(UserWarning):
    """Measures whose value the input alone decides (all samples share one label)."""


def _progress_bar(n: int, block: int, group, progress: bool):
    if not progress:
        return None
    rank, world = knn._dist_info(group)
    nb = math.ceil(n / block)
    total = len(knn.pair_schedule(nb, rank, world))
    return tqdm(total=total, desc="neighbour search", unit="block", disable=rank != 0)
