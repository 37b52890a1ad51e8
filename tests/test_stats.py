"""The study's statistics against written-out cases and brute-force oracles (float64,
plain loops)."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from dnnlab.study import stats as S


def test_seed_summary_written_out():
    assert S.seed_summary([70.0, 72.0, 74.0]) == {"mean": 72.0, "sd": 2.0, "n": 3}
    assert S.seed_summary([81.5]) == {"mean": 81.5, "sd": None, "n": 1}
    with pytest.raises(ValueError):
        S.seed_summary([])


def brute_bootstrap_var(a, b, resamples, seed):
    """Resample the images with replacement, the same draw for both variants, and take the
    variance of the difference of seed-mean accuracies: the bootstrap, spelled out."""
    rng = np.random.default_rng(seed)
    n = len(a[0])
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        mean_a = sum(sum(run[i] for i in idx) / n for run in a) / len(a)
        mean_b = sum(sum(run[i] for i in idx) / n for run in b) / len(b)
        diffs.append(mean_a - mean_b)
    m = sum(diffs) / len(diffs)
    return sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1)


@pytest.mark.slow
def test_paired_bootstrap_closed_form_matches_resampling():
    rng = np.random.default_rng(3)
    n = 300
    a = (rng.random((2, n)) < 0.8).astype(int)
    b = ((rng.random((3, n)) < 0.7) | a[0].astype(bool)[None]).astype(int)  # paired: correlated
    closed = S.paired_bootstrap_var([(1, a), (-1, b)])
    oracle = brute_bootstrap_var(a.tolist(), b.tolist(), resamples=4000, seed=1)
    # The resampled variance's relative Monte Carlo sd is sqrt(2 / 3999) = 2.2 %.
    assert closed == pytest.approx(oracle, rel=0.08)
    # Pairing matters: the unpaired variance (each variant resampled on its own) is larger.
    unpaired = S.paired_bootstrap_var([(1, a)]) + S.paired_bootstrap_var([(-1, b)])
    assert closed < unpaired


def test_difference_written_out():
    # 4 images; a: seeds at 75 % and 50 %, b: both 25 %.
    a = [[1, 1, 1, 0], [1, 1, 0, 0]]
    b = [[1, 0, 0, 0], [1, 0, 0, 0]]
    r = S.difference(a, b, course_diff=10.0)
    assert r["diff"] == pytest.approx(37.5)
    seed_var = (75 - 62.5) ** 2 * 2 / 1 / 2  # sample variance 312.5, over 2 seeds
    x = np.array([0, 1, 0.5, 0])  # per-image differences of seed means
    image_var = 100**2 * ((x - x.mean()) ** 2).sum() / 16
    assert r["seed_var"] == pytest.approx(seed_var)
    assert r["image_var"] == pytest.approx(image_var)
    se = math.sqrt(seed_var + image_var)
    df = (seed_var + image_var) ** 2 / (seed_var**2 / 1)
    half = sps.t.ppf(0.975, df) * se
    assert (r["low"], r["high"]) == pytest.approx((37.5 - half, 37.5 + half))
    assert r["verdict"] == ("confirms" if r["low"] > 0 else "undecided")


def test_verdicts():
    assert S.verdict(0.5, 2.0, 12.0) == "confirms"
    assert S.verdict(-3.0, -0.2, 12.0) == "contradicts"
    assert S.verdict(-3.0, -0.2, -12.0) == "confirms"
    assert S.verdict(-1.0, 2.0, 12.0) == "undecided"
    assert S.verdict(-1.0, 2.0, None) == "no course difference to check"


def test_one_seed_gives_no_interval():
    r = S.difference([[1, 0, 1, 1]], [[1, 0, 0, 1], [0, 0, 1, 1]], course_diff=5.0)
    assert r["low"] is None and r["high"] is None
    assert r["verdict"] == "undecided (one seed)"
    assert r["diff"] == pytest.approx(25.0)


def test_identical_seeds_use_the_normal_quantile():
    # No seed-to-seed spread at all: the interval is the image bootstrap's alone.
    a = [[1, 1, 0, 1] * 50] * 2
    b = [[1, 0, 0, 1] * 50] * 2
    r = S.difference(a, b, course_diff=1.0)
    assert math.isinf(r["df"])
    half = 1.959963984540054 * math.sqrt(r["image_var"])
    assert r["high"] - r["diff"] == pytest.approx(half)


def brute_spearman(a, b):
    """Ranks by counting (ties: mean rank), Pearson of the ranks, every ordering enumerated."""

    def rank(v):
        return [sum(1 for w in v if w < x) + (sum(1 for w in v if w == x) + 1) / 2 for x in v]

    def pearson(x, y):
        mx, my = sum(x) / len(x), sum(y) / len(y)
        sxy = sum((p - mx) * (q - my) for p, q in zip(x, y, strict=True))
        sxx = sum((p - mx) ** 2 for p in x)
        syy = sum((q - my) ** 2 for q in y)
        return sxy / math.sqrt(sxx * syy)

    ra, rb = rank(a), rank(b)
    rho = pearson(ra, rb)
    perms = list(itertools.permutations(rb))
    hits = sum(1 for p in perms if abs(pearson(ra, list(p))) >= abs(rho) - 1e-12)
    return rho, hits / len(perms)


@pytest.mark.parametrize(
    "a,b",
    [
        ([1, 2, 3], [1, 2, 3]),
        ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
        ([77.1, 77.0, 73.4, 69.1, 72.7, 74.9, 76.5], [73.3, 85.7, 84.9, 85.2, 59.8, 72.2, 85.4]),
        ([1, 1, 2, 3, 5, 8], [3, 1, 4, 1, 5, 9]),  # ties on both sides
    ],
)
def test_spearman_exact_against_brute_force(a, b):
    r = S.spearman_exact(a, b)
    rho, p = brute_spearman(a, b)
    assert r["rho"] == pytest.approx(rho)
    assert r["p"] == pytest.approx(p)
    assert r["p_method"] == "exact"
    assert r["rho"] == pytest.approx(sps.spearmanr(a, b).statistic)


def test_spearman_written_out_and_refusals():
    # n = 3, identical order: rho 1; of the 6 orderings only the same and the reverse reach
    # |rho| = 1, so p = 2/6.
    assert S.spearman_exact([1, 2, 3], [10, 20, 30])["p"] == pytest.approx(1 / 3)
    assert S.spearman_exact([1, 2], [1, 2])["rho"] is None
    assert S.spearman_exact([1, 1, 1], [1, 2, 3])["rho"] is None
    with pytest.raises(ValueError):
        S.spearman_exact([1, 2, 3], [1, 2])


@pytest.mark.slow
def test_spearman_sampled_beyond_nine_pairs():
    a = list(range(11))
    b = [0, 2, 1, 3, 5, 4, 6, 8, 7, 10, 9]
    r = S.spearman_exact(a, b)
    assert r["p_method"].endswith("random orderings")
    assert r["rho"] == pytest.approx(sps.spearmanr(a, b).statistic)
    # The same order: no sampled ordering beats it, yet p is 1 / (N + 1), never 0.
    same = S.spearman_exact(a, a)["p"]
    assert 0 < same <= 2 / (S.PERMUTATION_SAMPLES + 1)
    # scipy's own permutation test (same statistic) as the reference, within sampling error.
    ref = sps.permutation_test(
        (b,),
        lambda y: sps.spearmanr(a, y).statistic,
        permutation_type="pairings",
        n_resamples=20_000,
        random_state=0,
    ).pvalue
    assert r["p"] == pytest.approx(ref, abs=0.003)


def test_proportion_interval():
    p, lo, hi = S.proportion_interval(883, 1000)
    assert p == 0.883
    half = 1.959963984540054 * math.sqrt(0.883 * 0.117 / 1000)
    assert (lo, hi) == pytest.approx((0.883 - half, 0.883 + half))
    assert S.proportion_interval(10, 10)[1:] == (1.0, 1.0)
    with pytest.raises(ValueError):
        S.proportion_interval(0, 0)


@pytest.mark.slow
def test_interaction_is_the_four_term_contrast():
    rng = np.random.default_rng(5)
    bn_c, base_c, bn_s, base_s = (
        (rng.random((2, 400)) < p).astype(int) for p in (0.8, 0.6, 0.85, 0.84)
    )
    r = S.contrast([(1, bn_c), (-1, base_c), (-1, bn_s), (1, base_s)], course_diff=12.0)
    acc = lambda c: 100 * c.mean(axis=1)  # noqa: E731
    want = (acc(bn_c).mean() - acc(base_c).mean()) - (acc(bn_s).mean() - acc(base_s).mean())
    assert r["diff"] == pytest.approx(want)
    seed_var = sum(acc(c).var(ddof=1) / 2 for c in (bn_c, base_c, bn_s, base_s))
    assert r["seed_var"] == pytest.approx(seed_var)
    x = (bn_c.mean(0) - base_c.mean(0)) - (bn_s.mean(0) - base_s.mean(0))
    assert r["image_var"] == pytest.approx(100**2 * x.var() / 400)
    oracle = brute_bootstrap_var(
        np.vstack([bn_c, base_s]).tolist(), np.vstack([base_c, bn_s]).tolist(), 3000, 2
    )
    # The brute force pools the + and - terms' seeds into one mean each: twice the contrast's
    # per-image value over 2 (it averages 4 rows where the contrast sums two 2-row means).
    assert r["image_var"] == pytest.approx(100**2 * 4 * oracle, rel=0.1)


def test_p_text_never_writes_a_sampled_p_as_zero():
    assert S.p_text(0.0012) == "p = 0.001" and S.p_text(0.5) == "p = 0.500"
    assert S.p_text(1 / (S.PERMUTATION_SAMPLES + 1)) == "p < 0.001"
