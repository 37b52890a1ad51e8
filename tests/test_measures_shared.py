"""The linear classifier sharing the separability core's work: the search's Gram, the one
normalization formula, and the same answers as a fit of its own."""

import numpy as np
import pytest
import torch

from dnnlab.separability import knn, linear, separability
from dnnlab.separability.linear import fit_linear
from dnnlab.separability.measures import separability_fitting
from dnnlab.separability.normalize import feature_stats, normalize_with_norms
from dnnlab.separability.ridge import normalized_block
from tests import oracle


def make_split(seed, n, d, n_classes):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d))
    y = rng.integers(0, n_classes, n)
    x = centers[y] + 1.5 * rng.normal(size=(n, d)) * rng.uniform(0.2, 3, d) + 5
    return x.astype(np.float32), y


@pytest.mark.parametrize("block", [7, 64, 500])  # blocks that do not divide N, and one block
def test_search_fills_the_gram(block):
    a = torch.from_numpy(make_split(0, 130, 40, 3)[0])
    g = torch.full((130, 130), float("nan"))
    knn.k_nearest(a, 3, block, reducers=(knn.GramBlocks(g),))
    assert not g.isnan().any()  # every entry written
    want = (a.double() @ a.double().T).numpy()
    np.testing.assert_allclose(g.double().numpy(), want, rtol=1e-5, atol=1e-4)


def test_one_normalization_formula():
    # The core's normalized copy and the linear classifier's rows are the same numbers, so the
    # probe may take the core's copy as its Zc.
    x, _ = make_split(1, 90, 300, 3)
    for xin in (torch.from_numpy(x), torch.from_numpy(x).double()):
        shift, scale = feature_stats(xin, "zscore")
        core = normalize_with_norms(xin, "zscore", torch.float32)[0]
        rows = normalized_block(xin, 0, 90, shift, scale, torch.float32, xin.device)
        assert torch.equal(core, rows)


def test_shared_fit_equals_own_fit():
    x, y = make_split(3, 150, 400, 4)
    xt, yt = make_split(4, 70, 400, 4)
    res, probe = separability_fitting(x, y, "si,knn:3,nc1,linear")
    assert probe.shared_gram and probe.form == "dual"
    assert "Gram from the neighbour search" in " ".join(res.notes)
    own = fit_linear(x, y)
    assert not own.shared_gram
    scale = np.abs(own.coef.numpy()).max()
    np.testing.assert_allclose(probe.coef.numpy(), own.coef.numpy(), rtol=1e-9, atol=1e-11 * scale)
    assert torch.equal(probe.predict_codes(xt), own.predict_codes(xt))
    assert res["linear"] == own.train_accuracy
    # The other measures are those of a run without linear.
    alone = separability(x, y, "si,knn:3,nc1")
    assert all(res[m] == alone[m] for m in ("si", "knn:3", "nc1"))
    # Through separability() with a test set: the same answer.
    scored = separability(x, y, "si,linear", test=(xt, yt))
    assert scored["linear"] == own.score(xt, yt)[0]
    assert "Gram from the neighbour search" in " ".join(scored.notes)


def test_in_place_with_a_test_set_fits_before_the_search():
    # The test set is scored after the search; normalized in place, the caller's features
    # are gone by then, and a test set that is a view of them with them (an outside tester's
    # case: 0.3 instead of 1.0). So overwrite_input with a test set fits first, on its own.
    x, y = make_split(8, 80, 200, 3)
    want = separability(x, y, "si,linear", test=(x[:40], y[:40]), alpha=300.0)
    xc = torch.from_numpy(x.copy())
    got = separability(
        xc, y, "si,linear", test=(xc[:40], y[:40]), alpha=300.0, overwrite_input=True
    )
    assert got.values == want.values
    assert "Gram from the neighbour search" not in " ".join(got.notes)


def test_shared_fit_against_oracle_and_its_fallback(monkeypatch):
    # Wide, correlated, offset features; then with the float32 factor refused, the float64
    # fallback from the shared rows: both equal the float64 closed form's predictions and
    # agree with each other to refinement precision.
    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 8))
    x = base @ rng.normal(size=(8, 900)) + 0.05 * rng.normal(size=(60, 900)) + 30
    y = rng.integers(0, 3, 60)
    xt = base[:20] @ rng.normal(size=(8, 900)) + 30
    want, w = oracle.ridge_classifier(x, y, xt, alpha=1.0, method="zscore")
    _, probe = separability_fitting(x, y, "si,linear")
    assert probe.shared_gram and not probe.fallback
    assert np.array_equal(probe.predict_codes(xt).numpy(), want)
    real_factor = linear._factor
    monkeypatch.setattr(
        linear, "_factor", lambda g: None if g.dtype == torch.float32 else real_factor(g)
    )
    _, exact = separability_fitting(x, y, "si,linear")
    assert exact.shared_gram and exact.fallback
    assert np.array_equal(exact.predict_codes(xt).numpy(), want)
    s = np.abs(exact.coef.numpy()).max()
    np.testing.assert_allclose(probe.coef.numpy(), exact.coef.numpy(), rtol=1e-9, atol=1e-11 * s)


@pytest.mark.parametrize(
    "kw,measures",
    [
        ({"normalize_method": "minmax"}, "si,linear"),  # the shift is not the mean
        ({}, "csi,linear"),  # no neighbour search forms a Gram
        ({"compute_dtype": torch.float64}, "si,linear"),  # the probe fits in float32
    ],
)
def test_fits_its_own_where_it_cannot_share(kw, measures):
    x, y = make_split(6, 80, 200, 3)
    res, probe = separability_fitting(x, y, measures, **kw)
    assert not probe.shared_gram
    norm = kw.get("normalize_method", "zscore")
    assert res["linear"] == fit_linear(x, y, normalize_method=norm).train_accuracy


def test_primal_form_does_not_share():
    x, y = make_split(7, 200, 30, 3)  # D < N: the primal D x D system
    _, probe = separability_fitting(x, y, "si,linear")
    assert probe.form == "primal" and not probe.shared_gram


def test_features_with_a_large_offset_match_scikit_learn():
    # float32 features 1e6 + noise: the rounded shift leaves the normalized rows off centre
    # by some hundredths of a standard deviation; the fit centres them exactly (an outside
    # tester's case: 0.325 against scikit-learn's 0.35 before).
    from sklearn.linear_model import RidgeClassifier

    x, y = make_split(0, 80, 200, 3)
    xt, yt = make_split(1, 40, 200, 3)
    x, xt = ((a.astype(np.float64) + 1e6).astype(np.float32) for a in (x, xt))
    x64, xt64 = x.astype(np.float64), xt.astype(np.float64)
    mu, sd = x64.mean(0), x64.std(0, ddof=1) + 1e-10
    sk = RidgeClassifier(alpha=1.0).fit((x64 - mu) / sd, y)
    want = sk.decision_function((xt64 - mu) / sd)
    for measures in ("si,linear", "linear"):  # shared Gram, and a fit of its own
        _, probe = separability_fitting(x, y, measures)
        got = probe.decision_function(xt).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
        assert np.array_equal(got.argmax(1), want.argmax(1))
    assert separability(x, y, "si,linear", test=(xt, yt))["linear"] == sk.score(
        (xt64 - mu) / sd, yt
    )


def test_bad_inputs_beside_the_search(tmp_path):
    from dnnlab.errors import InputError

    x, y = make_split(9, 60, 200, 3)
    xt, yt = make_split(10, 30, 200, 3)
    # alpha=1e-20 with N < D: whether float64's Cholesky factors the centered Gram depends on
    # the machine's LAPACK (AMD's refused it, this Intel's MKL factors it). Either way the
    # promise holds: a named refusal, or the exact answer, here the ridge limit alpha -> 0,
    # the minimum-norm least-squares fit (pinv, float64).
    try:
        r = separability(x, y, "si,linear", test=(xt, yt), alpha=1e-20)
    except InputError as e:
        assert "alpha=1e-20 is too small" in str(e)
    else:
        x64, xt64 = x.astype(np.float64), xt.astype(np.float64)
        std = x64.std(0, ddof=1)
        mu = x64.mean(0)
        t = np.where(y[:, None] == np.arange(3)[None, :], 1.0, -1.0)
        w = np.linalg.pinv((x64 - mu) / std) @ (t - t.mean(0))
        pred = (((xt64 - mu) / std) @ w + t.mean(0)).argmax(1)
        assert r["linear"] == pytest.approx(float((pred == yt).mean()))
    with pytest.raises(InputError, match="test set has no samples"):
        separability(x, y, "si,linear", test=(xt[:0], yt[:0]))
    with pytest.raises(InputError, match="test must be a pair"):
        separability(x, y, "si,linear", test=xt)
    with pytest.raises(InputError, match="alpha must be"):
        separability(x, y, "si,linear", test=(xt, yt), alpha=True)
    r = separability(x, y, "si,linear", test=(xt, yt), alpha=np.float32(2))
    assert r["linear"] == fit_linear(x, y, alpha=2.0).score(xt, yt)[0]
    # A budget below the fit's share: the search's own plan says what it needs.
    with pytest.raises(InputError, match="too small"):
        separability(x, y, "si,linear", test=(xt, yt), max_memory="1KB")
    # A read-only memory-mapped file is read, never normalized in place (it crashed).
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    got = separability(mm, y, "si,linear", test=(xt, yt), overwrite_input=True)
    assert got.values == separability(x, y, "si,linear", test=(xt, yt)).values
    assert np.array_equal(np.load(tmp_path / "x.npy"), x)


def test_linear_least_budget_is_the_smallest_that_works():
    from dnnlab.errors import InputError
    from dnnlab.separability.linear import linear_least

    x, y = make_split(11, 60, 200, 3)
    least = linear_least(60, 200)
    with pytest.raises(InputError, match="need at least"):
        fit_linear(x, y, max_memory=least - 1)
    assert fit_linear(x, y, max_memory=least).train_accuracy == fit_linear(x, y).train_accuracy


def test_second_outside_check_findings(tmp_path):
    from sklearn.linear_model import RidgeClassifier

    from dnnlab.errors import InputError
    from dnnlab.utils.sizes import format_size, parse_size

    rng = np.random.default_rng(12)
    # A float32 spread near 1e19 squared overflows float32: it was taken for constant.
    base = rng.normal(size=(60, 8))
    y = np.arange(60) % 3
    base[:, 0] += 3 * y
    want = separability(base.astype(np.float32), y, "si,csi").values
    assert separability((base * 1e25).astype(np.float32), y, "si,csi").values == want
    # In place, a NaN is counted before normalization spreads it over every row.
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[7, 2] = np.nan
    with pytest.raises(InputError, match=r"in 1 rows \(first rows: \[7\]\)"):
        separability(x, np.arange(50) % 2, "si", overwrite_input=True)
    # A small alpha in the dual form: the ones vector (null space of the centred Gram) no
    # longer stalls the refinement; the scores match scikit-learn.
    x, y = make_split(13, 40, 300, 4)
    xt, _ = make_split(14, 20, 300, 4)
    for alpha in (1e-6, 1e-9):
        p = fit_linear(x, y, alpha=alpha)
        mu, sd = x.astype(np.float64).mean(0), x.astype(np.float64).std(0, ddof=1) + 1e-10
        sk = RidgeClassifier(alpha=alpha).fit((x - mu) / sd, y)
        want = sk.decision_function((xt - mu) / sd)
        np.testing.assert_allclose(
            p.decision_function(xt).numpy(), want, atol=1e-3 * np.abs(want).max()
        )
    # A huge alpha: the training accuracy is that of the scores, not of Y - alpha A.
    p = fit_linear(x, y, alpha=1e300)  # reported 1.0 against scores at 0.35 before
    scores = p.decision_function(x).numpy()
    assert p.train_accuracy == float((scores.argmax(1) == y).mean())
    # Least figures are rounded up, so giving one back works.
    least = 1_763_648
    assert parse_size(format_size(least, up=True)) >= least
    # One test sample as a 1-D vector is named.
    with pytest.raises(InputError, match=r"features\[None\]"):
        separability(x, y, "si,linear", test=(xt[0], y[:1]))
