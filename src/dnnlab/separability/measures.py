"""separability(): the measures of the vocabulary (separability.vocabulary) from one exact
neighbour search. The function reads top to bottom in five numbered steps: the inputs
checked (samples.py), what the input alone decides, the memory plan (search_plan.py), the
search with its tallies (tallies.py, knn.py) and the linear classifier that shares its work,
and the values per class. The helpers below it only score and assemble."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch

import dnnlab.separability.knn as knn
from dnnlab.errors import BudgetError, InputError, UndefinedMeasure
from dnnlab.separability.inputs import resolve_device
from dnnlab.separability.linear import DEFAULT_ALPHA, fit_linear, fit_linear_shared
from dnnlab.separability.result import SeparabilityResult
from dnnlab.separability.samples import (
    Samples,
    check_measure_inputs,
    check_samples,
    lone_samples,
    small_classes_for_knn,
)
from dnnlab.separability.search_plan import can_share, linear_need, plan_search
from dnnlab.separability.tallies import nc1_step, normalize_on_device, row_tallies
from dnnlab.separability.vocabulary import DEFAULT_MEASURES, parse_measures, search_order
from dnnlab.utils.precision import highest_matmul_precision
from dnnlab.utils.sizes import MEASURE_MEMORY, parse_size


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
        or comma string); see separability.vocabulary and docs/separability.md.
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
    The fitted linear classifier, when "linear" is measured, is the result's `linear_classifier`.
    """
    t0 = time.perf_counter()
    notes: list[str] = []  # grow as the work goes; every result carries them

    # 1. The inputs, checked once (samples.py); below, everything is known to be valid.
    wanted = parse_measures(measures)
    linear = any(m.kind == "linear" for m in wanted)
    if linear and test is None and not _training_scores:
        raise InputError(
            "measure linear needs a test set to score on: pass test=(features, labels) "
            "(dnnlab si: --test FEATURES LABELS)"
        )
    s = check_samples(features, labels, wanted, normalize_method, overwrite_input)
    dev = resolve_device(s.x, device)
    nc1_undefined = check_measure_inputs(wanted, s, test, undefined)
    budget = parse_size(max_memory)
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    overwrite_input = overwrite_input and s.writable

    def result(values: dict, per_class: dict, classifier=None) -> SeparabilityResult:
        counts = {c: int(s.counts[i]) for i, c in enumerate(s.names)}
        seconds = time.perf_counter() - t0
        return SeparabilityResult(
            values, per_class, counts, s.n, s.d, normalize_method, str(dev), seconds, notes,
            classifier,
        )  # fmt: skip

    def fit_alone() -> _LinearScore:
        """The linear classifier fitted on its own (not sharing the search's work), scored."""
        classifier = fit_linear(
            s.x, labels, alpha=alpha, normalize_method=normalize_method, device=device,
            max_memory=budget,
        )  # fmt: skip
        lin = _score(classifier, test)
        notes.append(_linear_note(lin, s.n, test))
        return lin

    # 2. What the input alone decides: every class a single sample; linear alone.
    lone = lone_samples(s)
    if lone is not None and len(s.names) > 1 and all(c == 1 for c in s.counts):
        # Refused (undefined="raise"), or NaN for every measure with the reason in the
        # notes; linear too (one sample per class is no training set).
        if undefined != "nan":
            raise UndefinedMeasure(lone)
        notes.append(lone)
        vals = {m.name: float("nan") for m in wanted}
        return result(vals, {c: dict(vals) for c in s.names})
    if lone is not None:
        notes.append(lone)
    notes.extend(small_classes_for_knn(s, wanted))
    if linear and all(m.kind == "linear" for m in wanted):  # no normalized copy needed
        lin = fit_alone()
        return result({"linear": lin.accuracy}, _linear_per_class(lin, s.names), lin.classifier)

    # 3. The memory plan (search_plan.py). The linear classifier shares the search's
    # normalized copy and block products when it can (linear.SharedWork); the search then
    # plans without the fit's share of the budget. A test set scored after the search must
    # not be what it normalized in place. No search when all samples share one label.
    k = search_order(wanted)
    share = linear and can_share(s, k, normalize_method, compute_dtype)
    share = share and not (overwrite_input and test is not None)
    plan, search_budget = None, budget - (linear_need(s, budget) if share else 0)
    how = (s.x, k, compute_dtype, overwrite_input, device)
    if share and search_budget > 0:
        try:
            plan = plan_search(*how, search_budget, block, dev)
        except BudgetError:
            pass
    share = plan is not None
    if plan is None and len(s.names) > 1:
        plan = plan_search(*how, budget, block, dev)
    lin = fit_alone() if linear and not share else None
    if len(s.names) == 1:  # every measure is trivial (anti 0, the others 1)
        msg = f"all {s.n} samples have one label ({s.names[0]!r}); every measure is trivial"
        warnings.warn(msg, TrivialMeasure, stacklevel=2)  # points at separability()'s caller
        notes.append(msg)
        vals = {m.name: (0.0 if m.kind == "anti" else 1.0) for m in wanted}
        return result(vals, {s.names[0]: dict(vals)})
    in_place, rows, mem_elems = plan

    # 4. The neighbour search and its tallies (tallies.py, knn.py), the linear fit that
    # shares its work, NC1.
    with highest_matmul_precision():
        a, sq, work = normalize_on_device(
            s.x, dev, normalize_method, compute_dtype, in_place, share
        )
        codes = torch.as_tensor(s.codes, device=dev)
        hits = row_tallies(
            a, sq, codes, wanted, len(s.names), k, rows, mem_elems,
            group=group, progress=progress, stats=stats, work=work,
        )  # fmt: skip
        if work is not None:  # the fit may use the budget but for the normalized copy
            fit_memory = budget - (0 if in_place else s.n * s.d * 4)
            shared = fit_linear_shared(work, labels, max_memory=fit_memory, alpha=alpha)
            lin = _score(shared, test)
            notes.append(_linear_note(lin, s.n, test))
            del work
        nc1, nc1_notes = nc1_step(a, codes, wanted, s.names, mem_elems, undefined, nc1_undefined)
    notes += nc1_notes

    # 5. The values, whole and per class.
    return result(*_assemble(wanted, hits, codes, s, nc1, lin), lin and lin.classifier)


def separability_fitting(features, labels, measures=DEFAULT_MEASURES, **kw):
    """separability() on a linear classifier's training split: `linear` is fitted on these
    features and its value is the training accuracy (no test set). Returns (result, the
    fitted LinearClassifier or None), the classifier for scoring other splits later."""
    r = separability(features, labels, measures, _training_scores=True, **kw)
    return r, r.linear_classifier


@dataclass(frozen=True)
class _LinearScore:
    """The fitted ridge classifier and its score on the test set."""

    classifier: object  # separability.linear.LinearClassifier
    accuracy: float
    per_class: dict[str, float]  # classes absent from the test set are missing
    test_counts: dict[str, int]


def _score(classifier, test) -> _LinearScore:
    """The fitted classifier's accuracy on test = (features, labels); test=None: on its training
    samples (per class unknown)."""
    if test is None:
        return _LinearScore(classifier, classifier.train_accuracy, {}, {})
    try:
        accuracy, per_class, test_counts = classifier.score(*test)
    except (ValueError, TypeError) as e:
        raise type(e)(f"linear: the test set: {e}") from None
    return _LinearScore(classifier, accuracy, per_class, test_counts)


def _linear_note(lin: _LinearScore, n: int, test) -> str:
    p = lin.classifier
    scored = "" if test is None else f", scored on {sum(lin.test_counts.values())} test samples"
    shared = ", its Gram from the neighbour search" if p.shared_gram else ""
    return (
        f"linear: ridge classifier, alpha={p.alpha:g}, {p.form} form{shared}, fitted on "
        f"these {n} samples (train accuracy {p.train_accuracy:.4f}){scored}"
    )


def _linear_per_class(lin: _LinearScore, names: list[str]) -> dict[str, dict[str, float]]:
    """{class: {"linear": accuracy}}; NaN for a class absent from the test set."""
    return {c: {"linear": lin.per_class.get(c, float("nan"))} for c in names}


def _assemble(wanted, hits, codes, s: Samples, nc1, lin: _LinearScore | None):
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


def _rates(hits: torch.Tensor, codes: torch.Tensor, s: Samples, denom: int):
    """hits (N,) int64 -> (sum / (N * denom), [class c's sum / (n_c * denom) for each c])."""
    total = int(hits.sum()) / (s.n * denom)
    by_class = torch.zeros(len(s.names), dtype=torch.int64, device=hits.device)
    by_class.index_add_(0, codes, hits)
    return total, [int(by_class[ci]) / (int(s.counts[ci]) * denom) for ci in range(len(s.names))]


class TrivialMeasure(UserWarning):
    """Measures whose value the input alone decides (all samples share one label)."""
