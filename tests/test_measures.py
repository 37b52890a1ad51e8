"""knn:K and nc1 against the float64 brute force in tests/oracle.py (and scikit-learn)."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from dnnlab.separability import parse_measures, separability
from tests import oracle
from tests.fakes import make_data


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block", [7, 64])
def test_knn_matches_oracle_with_ties(seed, block):
    # Duplicates and integer lattices give distance ties; 4 classes and even K give vote ties.
    if seed % 2:
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 3, size=(90, 3)).astype(np.float64)
        y = rng.integers(0, 4, size=90)
        method = "none"
    else:
        x, y = make_data(seed, 110, d=5, n_classes=4, dup_frac=0.3)
        method = "zscore"
    ks = [1, 2, 4, 5, 10]
    res = separability(x, y, [f"knn:{k}" for k in ks], normalize_method=method, block=block)
    for k in ks:
        want, want_class = oracle.knn_accuracy(x, y, k, method)
        assert res[f"knn:{k}"] == pytest.approx(want, abs=1e-12), k
        for c, v in want_class.items():
            assert res.per_class[str(c)][f"knn:{k}"] == pytest.approx(v, abs=1e-12)


def test_knn_vote_tie_goes_to_label_met_first():
    # 1-D points; sample 0 at 0 has neighbours 1 (label b), -2 (label a), 3 (b), -4 (a):
    # knn:4 votes 2-2, and b is met first, so sample 0 (label a) is misclassified; knn:2 too.
    x = np.array([[0.0], [1.0], [-2.0], [3.0], [-4.0]])
    y = np.array(["a", "b", "a", "b", "a"])
    res = separability(x, y, "knn:2,knn:4", normalize_method="none", block=2)
    for k in (2, 4):
        assert res[f"knn:{k}"] == pytest.approx(oracle.knn_accuracy(x, y, k, "none")[0])
    # Sample 0's two nearest are 1 (b) and -2 (a): a tie that b, the nearer, wins.
    assert res.per_class["a"]["knn:2"] < 1


def test_knn1_equals_si_exactly():
    x, y = make_data(11, 300, d=6, n_classes=3, dup_frac=0.4)
    r = separability(x, y, "si,knn:1,knn:3", block=64)
    assert r["knn:1"] == r["si"]
    for c in r.per_class:
        assert r.per_class[c]["knn:1"] == r.per_class[c]["si"]


def test_knn_matches_scikit_learn_without_ties():
    # Continuous data (no distance ties), 2 classes and odd K (no vote ties): sklearn's
    # leave-one-out prediction (kneighbors without X excludes each point itself) must agree.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + 0.8 * rng.normal(size=200) > 0).astype(int)
    for k in (1, 3, 7):
        clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(x, y)
        idx = clf.kneighbors(n_neighbors=k, return_distance=False)
        pred = (y[idx].mean(1) > 0.5).astype(int)
        res = separability(x, y, f"knn:{k}", normalize_method="none")
        assert res[f"knn:{k}"] == pytest.approx((pred == y).mean(), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_nc1_matches_pinv_oracle(seed):
    rng = np.random.default_rng(seed)
    n_classes = [2, 3, 5][seed % 3]
    d = [3, 8, 20][seed % 3] if seed < 3 else [2, 4, 40][seed % 3]  # D < C and D > C
    balanced = seed % 2 == 0
    y = np.arange(60) % n_classes if balanced else rng.integers(0, n_classes, 60)
    y[: 2 * n_classes] = np.repeat(np.arange(n_classes), 2)  # every class has 2+ samples
    x = rng.normal(size=(60, d)) + rng.normal(size=(n_classes, d))[y] * 2
    for method in ("zscore", "none"):
        want, per = oracle.nc1(x, y, method)
        # float64 normalized copy: agreement to rounding; float32 (the default): to its eps.
        for dtype, rel in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
            res = separability(x, y, "nc1", normalize_method=method, compute_dtype=dtype)
            assert res["nc1"] == pytest.approx(want, rel=rel)
            for c, v in per.items():
                assert res.per_class[str(c)]["nc1"] == pytest.approx(v, rel=rel)


def test_nc1_streamed_over_row_chunks():
    from dnnlab.separability.nc1 import nc1_values

    x, y = make_data(8, 150, d=12, n_classes=4, dup_frac=0.0)
    a = torch.tensor(x, dtype=torch.float64)
    codes = torch.as_tensor(np.searchsorted([-7, 3, 11, 40], y))
    whole = nc1_values(a, codes, 4, list("abcd"), mem_elems=1 << 20)
    chunked = nc1_values(a, codes, 4, list("abcd"), mem_elems=12 * 7)  # 7 rows per step
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)
    want = oracle.nc1(a.double().numpy(), codes.numpy(), "none")[0]
    assert whole[0] == pytest.approx(want, rel=1e-9)


def test_nc1_collapsed_is_zero_and_scale_free():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 5))
    y = np.arange(30) % 3
    collapsed = separability(means[y], y, "nc1", normalize_method="none")["nc1"]
    assert collapsed == pytest.approx(0.0, abs=1e-12)  # float32 copy: means round slightly
    x = means[y] + 0.1 * rng.normal(size=(30, 5))
    v = separability(x, y, "nc1", normalize_method="none")["nc1"]
    assert v > 0
    assert separability(7 * x, y, "nc1", normalize_method="none")["nc1"] == pytest.approx(v)


def test_all_measures_in_one_result():
    x, y = make_data(2, 80, d=4, n_classes=3)
    res = separability(x, y, "si,csi,knn:5,nc1")
    assert list(res.values) == ["si", "csi", "knn:5", "nc1"]
    assert set(res.to_dict()) >= {"knn:5", "nc1"}
    assert "knn:5" in str(res) and "nc1" in str(res)


def test_parse_new_measures():
    assert [m.name for m in parse_measures("knn:5,nc1,knn")] == ["knn:5", "nc1", "knn:1"]
    with pytest.raises(ValueError, match="nc1 takes no order"):
        parse_measures("nc1:2")


@pytest.mark.parametrize(
    "y,spec,match",
    [
        (np.arange(6) % 2, "knn:6", r"knn:6: order r=6 needs r < N = 6"),
        (np.array([0, 0, 1, 1, 2, 0]), "nc1", "class '2' has one sample"),
        (np.array(["x", "x", "y", "y", "z", "w"]), "si,nc1", "class 'w' has one sample"),
        (np.zeros(6), "nc1", "nc1 needs at least 2 classes"),
    ],
)
def test_bad_input(y, spec, match):
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(ValueError, match=match):
        separability(x, y, spec)


def test_nc1_equal_class_means_is_named():
    x = np.array([[0.0, 1], [0, -1], [1, 0], [-1, 0]])
    with pytest.raises(ValueError, match="same mean"):
        separability(x, [0, 0, 1, 1], "nc1", normalize_method="none")
