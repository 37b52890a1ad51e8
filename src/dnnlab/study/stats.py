"""What a study's numbers can carry: means over seeds, intervals on differences, rank
correlations with exact p-values.

A variant's accuracy is the mean over its seeds (runs that differ only in --seed), with the
seed-to-seed standard deviation (n - 1 in the denominator). Every run of a study is tested
on the same images, so two sources of error sit in a difference of accuracies:

- **seeds** (the training's randomness: initialization, data order, augmentation): the
  variance of a variant's mean over k seeds is s^2 / k, s^2 the sample variance of its
  seeds' accuracies. It is unknown with one seed, and then no interval is given: an interval
  without it would claim the training is deterministic.
- **test images** (a finite test set): a paired bootstrap over the test images. Each
  resample draws N image indices with replacement, the same draw for every run, and the
  difference of the two variants' mean accuracies is recomputed on it; its variance over
  the resamples is this source's. For a mean of per-image scores that variance has a closed
  form (the plug-in variance of the per-image differences divided by N), which is what is
  computed: exact and deterministic; the oracle test resamples and agrees with it.

The two add: se^2 = s_a^2/k_a + s_b^2/k_b + v_boot. The 95 % interval is d +- t * se, t the
0.975 quantile of Student's t with Welch-Satterthwaite's degrees of freedom of the seed
part (the bootstrap part counts as known). A course conclusion ("bn is more accurate than
base") is **confirmed** when the interval lies on the course's side of zero,
**contradicted** when it lies on the other, and **undecided** when it holds zero.

Spearman's rho comes with its exact two-sided permutation p-value: the share of all n!
orderings of one list whose |rho| is at least the observed one (ties keep their mean
ranks); above nine pairs, the share of 200,000 seeded random orderings.

SI and CSI at one layer are means of a per-image indicator (its nearest neighbour, or its
nearest class centre, is of its own class), so their image-sampling interval is the same
bootstrap of a mean, computed from the count: with the neighbours found in the whole split
and held fixed, the bootstrap variance of a proportion p of N images is p (1 - p) / N.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

PERMUTATION_SEED = 0
LEVEL = 0.95


def seed_summary(values) -> dict:
    """{"mean", "sd" (None for one seed), "n"} of a variant's per-seed values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("seed_summary: no values")
    sd = float(v.std(ddof=1)) if v.size > 1 else None
    return {"mean": float(v.mean()), "sd": sd, "n": int(v.size)}


def paired_bootstrap_var(terms) -> float:
    """The paired bootstrap's variance over test images of a contrast sum(sign * mean), in
    closed form: the ideal bootstrap (every resample, not a Monte Carlo sample of them) of a
    mean of per-image values has variance sum((x_i - mean x)^2) / N^2, x_i image i's value of
    the contrast of the groups' seed-mean scores. tests/test_stats.py checks it against
    resampling.

    `terms`: (sign, scores) pairs, scores a (seeds, N) array of 0/1 (or any per-image score)
    on the same N images in the same order."""
    x = None
    for sign, scores in terms:
        m = sign * np.asarray(scores, dtype=np.float64).mean(axis=0)
        if m.ndim != 1 or m.size == 0 or (x is not None and m.shape != x.shape):
            raise ValueError(f"paired_bootstrap_var: images {m.shape} against the others")
        x = m if x is None else x + m
    return float(((x - x.mean()) ** 2).sum() / x.size**2)


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t with `df` degrees of freedom (normal's
    for infinite df)."""
    # Here, not at the top: scipy.stats adds 0.55-0.85 s to the import of every study command
    # (benchmarks/lazy_imports.py, docs/RESULTS.md §9), and only the report needs it.
    from scipy.stats import norm, t

    q = 0.5 + level / 2
    return float(norm.ppf(q) if math.isinf(df) else t.ppf(q, df))


def contrast(terms, course_diff: float | None = None) -> dict:
    """A contrast of mean accuracies, sum(sign * mean over seeds), in points, with its 95 %
    interval and the verdict on the course's value `course_diff` (None: no verdict).

    `terms`: (sign, correct) pairs, correct a (seeds, N) per-image 0/1 array on the same test
    images; a difference is [(+1, a), (-1, b)], an interaction four terms. Its variance is
    each term's seed variance over its seed count plus the paired bootstrap's over images;
    with one seed in any term the interval is None and the verdict "undecided (one seed)"."""
    arrays = [(sign, np.asarray(c, dtype=np.float64)) for sign, c in terms]
    accs = [(sign, 100 * c.mean(axis=1)) for sign, c in arrays]
    d = float(sum(sign * acc.mean() for sign, acc in accs))
    seeds = tuple(len(acc) for _, acc in accs)
    out = {"diff": d, "seeds": seeds, "low": None, "high": None}
    if min(seeds) < 2:
        out["verdict"] = "undecided (one seed)"
        return out
    parts = [acc.var(ddof=1) / len(acc) for _, acc in accs]
    v_seed = float(sum(parts))
    v_boot = 100**2 * paired_bootstrap_var(arrays)
    se = math.sqrt(v_seed + v_boot)
    seed_df = sum(p**2 / (len(acc) - 1) for p, (_, acc) in zip(parts, accs, strict=True))
    df = math.inf if seed_df == 0 else (v_seed + v_boot) ** 2 / seed_df
    half = t_quantile(df) * se
    out.update(low=d - half, high=d + half, se=se, df=df, seed_var=v_seed, image_var=v_boot)
    out["verdict"] = verdict(out["low"], out["high"], course_diff)
    return out


def difference(correct_a, correct_b, course_diff: float | None = None) -> dict:
    """Mean accuracy of a minus b in points (contrast [(+1, a), (-1, b)]): its 95 % interval
    and the verdict on the course's difference `course_diff`."""
    return contrast([(1, correct_a), (-1, correct_b)], course_diff)


def verdict(low: float, high: float, course_diff: float | None) -> str:
    """confirms / contradicts / undecided: where the interval [low, high] lies against zero,
    read on the side of the course's difference."""
    if course_diff is None or course_diff == 0:
        return "no course difference to check"
    if low <= 0 <= high:
        return "undecided"
    return "confirms" if (low > 0) == (course_diff > 0) else "contradicts"


def ranks(values) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(v.size)
    r[order] = np.arange(1, v.size + 1)
    for x in np.unique(v):
        tied = v == x
        r[tied] = r[tied].mean()
    return r


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


MAX_EXACT = 9  # 9! = 362,880 orderings (the course's table has 9 variants); beyond: sampled
PERMUTATION_SAMPLES = 200_000  # Monte Carlo error of p: at most 0.0011 (sd at p = 0.5)


def spearman_exact(a, b) -> dict:
    """{"rho", "p", "n", "p_method"}: Spearman's rho of `a` against `b` and its two-sided
    permutation p-value, exact (every ordering) up to MAX_EXACT pairs, else from
    PERMUTATION_SAMPLES seeded random orderings as (k + 1) / (N + 1), k of N at least as
    extreme: the observed ordering counts as one, so a sampled p is never 0 (Phipson and
    Smyth 2010); rho and p are None below three pairs or when a list is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman_exact: {a.size} values against {b.size}")
    n = a.size
    if n < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return {"rho": None, "p": None, "n": n, "p_method": None}
    ra, rb = ranks(a), ranks(b)
    rho = _pearson(ra, rb)
    if n <= MAX_EXACT:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
        method = "exact"
    else:
        rng = np.random.default_rng(PERMUTATION_SEED)
        perms = rng.permuted(np.tile(np.arange(n), (PERMUTATION_SAMPLES, 1)), axis=1)
        method = f"{PERMUTATION_SAMPLES} random orderings"
    x = ra - ra.mean()
    y = (rb - rb.mean())[perms]  # orderings of b's ranks against a's
    rhos = (y @ x) / math.sqrt((x * x).sum() * (y[0] * y[0]).sum())
    k = int(np.sum(np.abs(rhos) >= abs(rho) - 1e-12))
    p = k / len(perms) if method == "exact" else (k + 1) / (len(perms) + 1)
    return {"rho": rho, "p": p, "n": n, "p_method": method}


def p_text(p: float) -> str:
    """A p-value as the reports write it: three decimals, and "p < 0.001" below that (a
    sampled p of 1 / 200,001 is not 0.000)."""
    return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"


def proportion_interval(count: int, n: int) -> tuple[float, float, float]:
    """(p, low, high): a proportion of `n` (SI, CSI) and its 95 % image-sampling interval,
    p +- 1.96 sqrt(p (1 - p) / n), the bootstrap of a mean of 0/1 (module docstring),
    clipped to [0, 1]."""
    if n <= 0:
        raise ValueError("proportion_interval: no images")
    p = count / n
    half = t_quantile(math.inf) * math.sqrt(p * (1 - p) / n)
    return p, max(0.0, p - half), min(1.0, p + half)
