"""The linear (ridge) classifier against scikit-learn and a float64 closed form."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeClassifier

from dnnlab.separability import separability
from dnnlab.separability.linear import fit_linear, linear_accuracy
from tests import oracle


def make_split(seed, n, d, n_classes, noise=1.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * 2
    y = rng.integers(0, n_classes, n)
    x = centers[y] + noise * rng.normal(size=(n, d)) * rng.uniform(0.2, 3, d) + 5
    return x, y


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("d", [6, 150])  # primal (D <= N) and dual (D > N)
@pytest.mark.parametrize("alpha", [1.0, 30.0])
def test_matches_scikit_learn_ridge_classifier(n_classes, d, alpha):
    x, y = make_split(n_classes * 7 + d, 100, d, n_classes)
    xt, yt = make_split(n_classes * 7 + d + 1, 80, d, n_classes)
    sk = RidgeClassifier(alpha=alpha, fit_intercept=True).fit(x, y)
    want = sk.coef_.T if n_classes > 2 else np.stack([-np.ravel(sk.coef_), np.ravel(sk.coef_)], 1)
    # float64: the same numbers; float32 (the default): exact for the float32-rounded
    # normalized features, so within their rounding of sklearn's float64 answer.
    for dtype, tol in ((torch.float64, 1e-7), (torch.float32, 1e-4)):
        classifier = fit_linear(x, y, alpha=alpha, normalize_method="none", compute_dtype=dtype)
        assert classifier.form == ("dual" if d > 100 else "primal")
        assert np.array_equal(classifier.predict_codes(xt).numpy(), sk.predict(xt))
        np.testing.assert_allclose(
            classifier.coef.numpy(), want, rtol=tol, atol=tol * np.abs(want).max()
        )
        acc, per, counts = classifier.score(xt, yt)
        assert acc == pytest.approx(sk.score(xt, yt), abs=1e-12)
        assert sum(counts.values()) == 80


@pytest.mark.parametrize("method", ["zscore", "minmax", "none"])
@pytest.mark.parametrize("d", [5, 300])
def test_matches_closed_form_oracle(method, d):
    x, y = make_split(d, 120, d, 4)
    x[:, 2] = 7.0  # a constant feature
    xt, _ = make_split(d + 1, 60, d, 4)
    want, w = oracle.ridge_classifier(x, y, xt, alpha=2.0, method=method)
    for dtype, tol in ((torch.float64, 1e-7), (torch.float32, 1e-4)):
        classifier = fit_linear(x, y, alpha=2.0, normalize_method=method, compute_dtype=dtype)
        codes = classifier.predict_codes(xt).numpy()
        assert np.array_equal(np.asarray(classifier.classes)[codes], want)
        np.testing.assert_allclose(classifier.coef.numpy(), w, rtol=tol, atol=tol * np.abs(w).max())


def test_refinement_reaches_float64_solution(monkeypatch):
    # Wide, correlated, offset features: the float32 Gram alone is off by far more than 1e-9.
    from dnnlab.separability import linear

    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 8))
    x = base @ rng.normal(size=(8, 2000)) + 0.05 * rng.normal(size=(60, 2000)) + 30
    y = rng.integers(0, 3, 60)
    classifier = fit_linear(x, y, alpha=1.0)
    assert classifier.form == "dual" and classifier.refine_steps >= 1 and not classifier.fallback
    # The same float32 features, float64 Gram and factor (the fallback tier): equal to 1e-9.
    real_factor = linear._factor
    monkeypatch.setattr(
        linear, "_factor", lambda g: None if g.dtype == torch.float32 else real_factor(g)
    )
    exact = fit_linear(x, y, alpha=1.0)
    assert exact.fallback
    scale = np.abs(exact.coef.numpy()).max()
    np.testing.assert_allclose(
        classifier.coef.numpy(), exact.coef.numpy(), rtol=1e-9, atol=1e-11 * scale
    )
    # Without refinement the float32 Gram's answer is visibly off.
    monkeypatch.setattr(linear, "_factor", real_factor)
    monkeypatch.setattr(linear, "_refine", lambda system, solve, rhs: (solve(rhs), 0, True))
    rough = fit_linear(x, y, alpha=1.0)
    assert np.abs(rough.coef.numpy() - exact.coef.numpy()).max() > 1e-6 * scale
    # And float64 throughout agrees with the float64 closed form.
    _, w = oracle.ridge_classifier(x, y, x[:2], alpha=1.0, method="zscore")
    p64 = fit_linear(x, y, alpha=1.0, compute_dtype=torch.float64)
    np.testing.assert_allclose(p64.coef.numpy(), w, rtol=1e-8, atol=1e-10 * np.abs(w).max())


def test_budget_blocks_and_memmap(tmp_path):
    # A memory-mapped float32 file, a budget that forces on-the-fly normalization in blocks.
    x, y = make_split(3, 300, 900, 3)
    path = tmp_path / "x.npy"
    np.save(path, x.astype(np.float32))
    mm = np.load(path, mmap_mode="r")
    small = fit_linear(mm, y, max_memory="2.2MB")
    big = fit_linear(x.astype(np.float32), y, max_memory="1GB")
    np.testing.assert_allclose(small.coef.numpy(), big.coef.numpy(), rtol=1e-9, atol=1e-12)
    assert np.array_equal(mm, x.astype(np.float32))  # never written


def test_linear_through_separability_and_probe_api():
    x, y = make_split(5, 90, 10, 3)
    xt, yt = make_split(6, 40, 10, 3)
    names = np.array(["cat", "dog", "eel"])
    res = separability(x, names[y], "si,linear,nc1", test=(xt, names[yt]))
    evals = {"test": (xt, names[yt]), "train": (x, names[y])}
    classifier, scores = linear_accuracy((x, names[y]), evals)
    assert res["linear"] == scores["test"]["accuracy"]
    assert scores["train"]["accuracy"] == classifier.train_accuracy
    assert set(res.per_class) == {"cat", "dog", "eel"}
    assert res.per_class["dog"]["linear"] == scores["test"]["per_class"]["dog"]
    only = separability(x, names[y], "linear", test=(xt, names[yt]))
    assert only.values == {"linear": res["linear"]}


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x, y: separability(x, y, "si,linear"), "linear needs a test set"),
        (lambda x, y: separability(x, y, "si", test=(x, y)), "only used by the measure linear"),
        (lambda x, y: fit_linear(x, np.zeros(len(x))), "needs at least 2 classes"),
        (lambda x, y: fit_linear(x, y, alpha=0), "alpha must be"),
        (lambda x, y: fit_linear(x, y).score(x[:, :3], y), "fitted on D=10"),
        (lambda x, y: fit_linear(x, y).score(x, y + 5), "absent from the training labels"),
        (lambda x, y: fit_linear(x, y, max_memory="1KB"), "too small for the linear classifier"),
    ],
)
def test_bad_input(call, match):
    x, y = make_split(1, 30, 10, 2)
    with pytest.raises((ValueError, MemoryError), match=match):
        call(x, y)
