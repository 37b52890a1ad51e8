"""Linear-classifier accuracy: a ridge classifier solved exactly, within a memory budget.

Estimator (scikit-learn's RidgeClassifier with fit_intercept=True): targets are +1 for the
sample's class and -1 for the others (one column per class), features are normalized with
the training split's statistics (the separability core's `normalize_method`), and

    W = argmin ||Y - (Z - mean(Z)) W - mean(Y)||^2 + alpha ||W||^2,   alpha = 1.0 by default,

predicting the class of the largest score (the first class among equal scores). The
minimizer is unique, so the fit is deterministic. It is solved in the dual when D > N,
W = Zc^T (Zc Zc^T + alpha I)^-1 Yc (an N x N system), and in the primal otherwise,
(Zc^T Zc + alpha I) W = Zc^T Yc (D x D); the matrix work is then min(N, D)^2 max(N, D) / 2.

Exactness: the Gram matrix is formed with float32 block products (the speed of the SI core)
and factored in float64; iterative refinement then corrects the solution with residuals of
the exact float64 system, each one a streamed pass over the features, until the correction
stops shrinking. If it does not converge (a Gram too ill-conditioned for its float32
rounding), the Gram is rebuilt in float64 and solved directly. Features are read in row
blocks and normalized on the fly; an N x D copy is kept only when the budget has room.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dnnlab.errors import BudgetError, InputError
from dnnlab.separability.inputs import (
    as_feature_source,
    check_finite,
    check_rows,
    encode_labels,
    resolve_device,
)
from dnnlab.separability.normalize import NORMALIZATIONS, feature_stats
from dnnlab.separability.ridge import RidgeSystem, Rows, form_gram, normalized_block
from dnnlab.utils.chunks import chunk_rows
from dnnlab.utils.precision import highest_matmul_precision
from dnnlab.utils.sizes import MEASURE_MEMORY, format_size, parse_size

DEFAULT_ALPHA = 1.0
# Refinement stops when a correction is below this fraction of the solution.
REFINE_RTOL = 1e-11
MAX_REFINE = 40
# Stagnated refinement is accepted when the residual is this small against the right-hand side.
RESIDUAL_RTOL = 1e-12
CHUNK_ELEMS = 1 << 22  # float64 elements per streamed row chunk (32 MiB)
# A streamed row chunk takes at most 1/CHUNK_SHARE of max_memory (and CHUNK_ELEMS).
CHUNK_SHARE = 32
# The features are cached on the device when they take at most 1/CACHE_SHARE of the
# workspace left beside the Gram and the chunks.
CACHE_SHARE = 2


@dataclass
class LinearClassifier:
    """A fitted ridge classifier; scores any features of the same width."""

    classes: list
    mean: torch.Tensor  # (D,) float64: training mean of the raw features
    scale: torch.Tensor  # (D,) float64: per-feature normalization scale
    coef: torch.Tensor  # (D, C) float64, for the normalized, centered features
    intercept: torch.Tensor  # (C,) float64
    alpha: float
    normalize: str
    form: str  # "dual" or "primal"
    n_train: int
    train_accuracy: float = float("nan")
    refine_steps: int = 0
    fallback: bool = False
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    compute_dtype: torch.dtype = torch.float32  # Zc's dtype: the features the fit is exact for
    shared_gram: bool = False  # the Gram came from the separability core's neighbour search

    @property
    def dim(self) -> int:
        return self.coef.shape[0]

    def decision_function(self, features) -> torch.Tensor:
        """(N, C) float64 scores of each class."""
        x = as_feature_source(features)
        if x.shape[1] != self.dim:
            raise InputError(
                f"features have D={x.shape[1]} per sample but the classifier was fitted on "
                f"D={self.dim}"
            )
        dev = self.coef.device
        out = torch.empty((x.shape[0], len(self.classes)), dtype=torch.float64, device=dev)
        step = chunk_rows(self.dim, CHUNK_ELEMS)
        for s in range(0, x.shape[0], step):
            z = normalized_block(x, s, s + step, self.mean, self.scale, self.compute_dtype, dev)
            z = z.to(torch.float64)
            out[s : s + step] = torch.addmm(self.intercept, z, self.coef)
        return out

    def predict_codes(self, features) -> torch.Tensor:
        return self.decision_function(features).argmax(1)  # the first class among ties

    def score(self, features, labels) -> tuple[float, dict[str, float], dict[str, int]]:
        """(accuracy, {class: accuracy}, {class: count}) on labelled features."""
        x = as_feature_source(features)
        check_finite(x)
        codes = self.encode(labels, x.shape[0])
        pred = self.predict_codes(x).cpu().numpy()
        hit = pred == codes
        per_class, counts = {}, {}
        for ci, c in enumerate(self.classes):
            rows = codes == ci
            if rows.any():
                per_class[str(c)] = float(hit[rows].mean())
                counts[str(c)] = int(rows.sum())
        return float(hit.mean()), per_class, counts

    def encode(self, labels, n: int) -> np.ndarray:
        """Labels -> class codes of this classifier; a label unseen in training raises."""
        arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        arr = arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr
        if arr.shape != (n,):
            raise InputError(
                f"labels must have shape ({n},) to match the features; got {tuple(arr.shape)}"
            )
        known = np.asarray(self.classes)
        pos = np.searchsorted(known, arr)
        pos_ok = np.minimum(pos, len(known) - 1)
        bad = (pos >= len(known)) | (known[pos_ok] != arr)
        if bad.any():
            raise InputError(
                f"labels hold {int(bad.sum())} values absent from the training labels "
                f"(first: {arr[bad][0]!r} at row {int(np.flatnonzero(bad)[0])})"
            )
        return pos


def _mean(x: torch.Tensor, dev) -> torch.Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=dev)
    step = chunk_rows(x.shape[1], CHUNK_ELEMS)
    for s in range(0, x.shape[0], step):
        total += x[s : s + step].to(dev).to(torch.float64).sum(0)
    return total / x.shape[0]


def _factor(g: torch.Tensor):
    """A solver r -> g^-1 r (float64 in and out) from g's Cholesky factor, or None if g is
    not numerically definite. g is factored in place. torch's (MKL/cuSOLVER)
    factorization: scipy's bundled OpenBLAS was 17x slower here, and its spinning threads
    slowed the torch work that followed."""
    info = torch.empty((), dtype=torch.int32, device=g.device)
    lf, info = torch.linalg.cholesky_ex(g, out=(g, info))
    if int(info) != 0:
        return None
    return lambda r: torch.cholesky_solve(r.to(lf.dtype), lf).to(torch.float64)


def _refine(system: RidgeSystem, solve, rhs: torch.Tensor):
    """Iterative refinement of solve(rhs) against the exact system; (solution, steps, ok).

    Stops when a correction is below REFINE_RTOL of the solution, or when the observed rate
    of convergence puts the remaining error a further 10x below it. In the dual form the
    solution has no component along the ones vector (1^T a = 0: Zc is centered, so its Gram
    has 1 in its null space, where (G + alpha I) has eigenvalue alpha): each correction is
    projected off it, else a tiny alpha would let the factor's rounding grow there without
    end though it changes no score. Stagnation is accepted as converged when the residual is
    at float64's rounding level (RESIDUAL_RTOL of the right-hand side): the rest of the
    correction then lies where the system cannot resolve it."""
    project = (lambda v: v - v.mean(0)) if system.dual else (lambda v: v)
    sol = project(solve(rhs))
    rhs_norm = max(float(rhs.norm()), 1e-300)
    prev = math.inf
    for step in range(1, MAX_REFINE + 1):
        res = rhs - system.apply(sol)
        corr = project(solve(res))
        size = float(corr.norm()) / max(float(sol.norm()), 1e-300)
        sol += corr
        if size <= REFINE_RTOL:
            return sol, step, True
        if size > 0.5 * prev:  # stagnation: the float64 rounding floor (or divergence)
            return sol, step, size <= 1e-8 or float(res.norm()) <= RESIDUAL_RTOL * rhs_norm
        # Geometric convergence at rate r leaves an error of about size * r / (1 - r): when
        # that is already below the tolerance, the next step would only confirm it.
        rate = size / prev  # no rate known after the first step (prev = inf gives 0)
        if prev < math.inf and size * rate / (1 - rate) <= REFINE_RTOL / 10:
            return sol, step, True
        prev = size
    return sol, MAX_REFINE, False


@dataclass
class SharedWork:
    """What the separability core hands the linear classifier when both measure the same features
    under zscore in the dual form: its normalized copy `rows` (N, D), bit-identical to the
    classifier's Zc (one formula, normalize.normalize_rows; zscore's shift is the mean), and the
    Gram rows rows^T (N, N) in rows' dtype, which its neighbour search forms block by block
    anyway (knn.GramBlocks, a reducer of its walk over block pairs). The fit takes the Gram
    over (and frees it)."""

    rows: torch.Tensor
    shift: torch.Tensor  # (D,) float64: feature_stats' zscore shift, the training mean
    scale: torch.Tensor  # (D,) float64
    gram: torch.Tensor | None


def linear_budget(n: int, d: int, max_memory) -> tuple[int, int]:
    """(chunk_elems, bytes the fit needs beside its features): its Gram (N^2 or D^2, counted
    in float64 for the fallback) and its streamed float64 row chunks (1/CHUNK_SHARE of the
    budget, 32 MiB at most; a few live at once)."""
    budget = parse_size(max_memory)
    chunk_elems = int(min(CHUNK_ELEMS, max(d, budget // CHUNK_SHARE // 8)))
    return chunk_elems, min(n, d) ** 2 * 8 + 4 * chunk_elems * 8


def linear_most(n: int) -> int:
    """The most linear_budget asks beside the features of n samples, whatever D and the
    budget: an n x n Gram and four row chunks of the largest size."""
    return linear_budget(n, n, CHUNK_ELEMS * CHUNK_SHARE * 8)[1]


def linear_least(n: int, d: int) -> int:
    """The smallest max_memory fit_linear accepts for N x D features: its share
    (linear_budget, which grows with the budget) and 64-row blocks."""
    least = 0
    while True:  # a fixed point: the share grows by at most 1/8 of the budget
        need = linear_budget(n, d, max(least, 1))[1] + 64 * 3 * d * 4
        if need <= least:
            return least
        least = need


def fit_linear(
    features,
    labels,
    *,
    alpha: float = DEFAULT_ALPHA,
    normalize_method: str = "zscore",
    device=None,
    max_memory=MEASURE_MEMORY,
    compute_dtype: torch.dtype = torch.float32,
) -> LinearClassifier:
    """Fit the ridge classifier (see the module docstring) on features (N, ...) and labels.

    features are never modified and may be on disk (a FeatureFile or a numpy memmap, read by
    row blocks); max_memory bounds the Gram matrix (N^2 or D^2 float64) and the blocks.
    """
    t0 = time.perf_counter()
    _check_fit_settings(alpha, normalize_method)
    x = as_feature_source(features)
    n, d = x.shape
    codes, classes = _check_fit_samples(x, labels)
    dev = resolve_device(x, device)
    dual = d > n
    chunk_elems, need = linear_budget(n, d, max_memory)
    workspace = parse_size(max_memory) - need
    if workspace < 64 * 3 * d * 4:
        raise BudgetError(
            f"max_memory {format_size(parse_size(max_memory))} is too small for the linear "
            f"classifier: its {'N x N' if dual else 'D x D'} Gram matrix and row blocks (N={n}, "
            f"D={d}) need at least {format_size(linear_least(n, d), up=True)}"
        )
    shift, scale = feature_stats(x, normalize_method)
    scale = scale.to(dev)
    # The intercept centers the features; the zscore shift is already the mean (or, for a
    # constant feature, its value, which scale 0 cancels).
    mean = shift.to(dev) if normalize_method == "zscore" else _mean(x, dev)
    item = torch.finfo(compute_dtype).bits // 8
    rows = Rows(x, mean, scale, compute_dtype, dev, n * d * item <= workspace // CACHE_SHARE)
    if rows.cache is not None:
        workspace -= n * d * item
    return _fit(rows, codes, classes, float(alpha), normalize_method, workspace, chunk_elems, t0)


def fit_linear_shared(
    work: SharedWork, labels, *, alpha: float = DEFAULT_ALPHA, max_memory=MEASURE_MEMORY
) -> LinearClassifier:
    """fit_linear(features, labels, normalize_method="zscore") from the separability core's
    SharedWork on those features (dual form, D > N): the same system, the same solution,
    without a second normalization pass or Gram. max_memory: what the fit may use beside
    work.rows (at least linear_budget's figure; the rest sizes the fallback's blocks). The
    features were checked by the core (finite, labels)."""
    t0 = time.perf_counter()
    _check_fit_settings(alpha, "zscore")
    a = work.rows
    n, d = a.shape
    if not d > n or work.gram is None or work.gram.shape != (n, n):
        raise ValueError("fit_linear_shared: needs the dual form's N x N Gram (D > N)")
    codes, classes = _check_fit_samples(a, labels, finite=False)
    chunk_elems, need = linear_budget(n, d, max_memory)
    workspace = max(0, parse_size(max_memory) - need)
    rows = Rows(a, work.shift.to(a.device), work.scale.to(a.device), a.dtype, a.device, False, a)
    gram, work.gram = work.gram, None  # taken over: the fallback frees it before its own
    return _fit(rows, codes, classes, float(alpha), "zscore", workspace, chunk_elems, t0, gram=gram)


def _check_fit_settings(alpha, normalize_method: str) -> None:
    real = isinstance(alpha, numbers.Real) and not isinstance(alpha, (bool, np.bool_))
    if not (real and math.isfinite(alpha) and alpha > 0):
        raise InputError(f"alpha must be a finite number > 0; got {alpha!r}")
    if normalize_method not in NORMALIZATIONS:
        raise InputError(f"unknown normalization {normalize_method!r}; choose {NORMALIZATIONS}")


def _check_fit_samples(x: torch.Tensor, labels, finite: bool = True) -> tuple[np.ndarray, list]:
    """(codes, classes) of the training labels; refuses what no classifier can be fitted on."""
    n, d = check_rows(x, "training samples", "linear: ")
    codes, classes = encode_labels(labels, n)
    if len(classes) < 2:
        raise InputError(
            f"linear: all {n} training samples have one label ({classes[0]!r}); a classifier "
            "needs at least 2 classes"
        )
    if finite:
        check_finite(x)
    return codes, classes


def _fit(
    rows: Rows, codes, classes, alpha, normalize_method, workspace, chunk_elems, t0, gram=None
):
    """Solve the ridge system on rows' Zc; gram: a ready Gram (the dual's, float32) to take
    over instead of forming one. Returns the LinearClassifier."""
    x, dev, compute_dtype = rows.x, rows.dev, rows.dtype
    gram_given = gram is not None
    n, d = x.shape
    dual = d > n
    k = len(classes)
    y = torch.full((n, k), -1.0, dtype=torch.float64, device=dev)
    y[torch.arange(n, device=dev), torch.as_tensor(codes, device=dev)] = 1.0
    y_mean = y.mean(0)
    yc = y - y_mean
    system = RidgeSystem(rows, alpha, dual, chunk_elems)
    rhs = yc if dual else system.zt(yc)
    with highest_matmul_precision():
        sol, steps, fallback, timings = _solve(system, rhs, gram, workspace, chunk_elems, t0)
        t4 = time.perf_counter()
        coef = system.zt(sol) if dual else sol
        timings["coef"] = time.perf_counter() - t4
    classifier = LinearClassifier(
        classes,
        rows.mean,
        rows.scale,
        coef,
        y_mean - system.m @ coef,  # scores (z - m) W + mean(Y) for normalized rows z
        alpha,
        normalize_method,
        "dual" if dual else "primal",
        n,
        refine_steps=steps,
        fallback=fallback,
        timings=timings,
        compute_dtype=compute_dtype,
        shared_gram=gram_given,
    )
    # Training scores from the rows (not Y - alpha A, which cancels for a large alpha).
    pred = torch.empty(n, dtype=torch.long, device=dev)
    for s, e, z in system.rows():
        pred[s:e] = torch.addmm(classifier.intercept, z, coef).argmax(1)
    classifier.train_accuracy = float((pred.cpu().numpy() == codes).mean())
    classifier.seconds = time.perf_counter() - t0
    return classifier


def _solve(system: RidgeSystem, rhs, gram, workspace: int, chunk_elems: int, t0: float):
    """(solution, refinement steps, whether it fell back to float64, seconds per stage) of
    the system; gram: a ready Gram in the compute dtype to take over, or None."""
    rows, alpha, dual = system.src, system.alpha, system.dual
    compute_dtype = rows.dtype
    fallback = False
    # 1. The Gram in the compute dtype, factored in that dtype, refined in float64.
    t1 = time.perf_counter()
    g = gram if gram is not None else form_gram(rows, dual, compute_dtype, workspace, chunk_elems)
    del gram
    system.center_gram(g)
    g.diagonal().add_(alpha)
    t2 = time.perf_counter()
    solve = _factor(g) if compute_dtype != torch.float64 else None
    t3 = time.perf_counter()
    ok = False
    if solve is not None:
        sol, steps, ok = _refine(system, solve, rhs)
    timings = {
        "stats": t1 - t0,
        "gram": t2 - t1,
        "factor": t3 - t2,
        "refine": time.perf_counter() - t3,
    }
    # 2. A float64 Gram of the same Zc (too ill-conditioned for float32 products).
    if not ok:
        fallback = compute_dtype != torch.float64
        del g, solve
        sol, steps = _solve_float64(system, rhs, workspace, chunk_elems)
    return sol, steps, fallback, timings


def _solve_float64(system: RidgeSystem, rhs, workspace: int, chunk_elems: int):
    """(solution, refinement steps) from a float64 Gram; refuses an alpha too small for it."""
    rows, alpha, dual = system.src, system.alpha, system.dual
    g = form_gram(rows, dual, torch.float64, workspace, chunk_elems)
    system.center_gram(g)
    g.diagonal().add_(alpha)
    solve = _factor(g)
    if solve is not None:
        sol, steps, ok = _refine(system, solve, rhs)
    if solve is None or not ok:
        n, d = rows.x.shape
        raise InputError(
            f"linear: alpha={alpha:g} is too small for these features: the ridge "
            f"system ({'N x N' if dual else 'D x D'}, N={n}, D={d}) is too "
            "ill-conditioned to solve exactly in float64; use a larger alpha"
        )
    return sol, steps


def linear_accuracy(train, evals: dict, **kw) -> tuple[LinearClassifier, dict[str, dict]]:
    """Fit on train = (features, labels); score on evals {name: (features, labels)}.

    Returns the fitted classifier and {name: {"accuracy", "per_class", "class_counts"}}.
    """
    classifier = fit_linear(*train, **kw)
    out = {}
    for name, (x, y) in evals.items():
        try:
            acc, per, counts = classifier.score(x, y)
        except ValueError as e:
            raise InputError(f"linear: eval set {name!r}: {e}") from None
        out[name] = {"accuracy": acc, "per_class": per, "class_counts": counts}
    return classifier, out
