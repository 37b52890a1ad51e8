import json

import numpy as np
import pytest
import torch

from dnnlab.errors import InputError
from dnnlab.separability import separability
from tests import oracle
from tests.fakes import ALL, make_data


def check(x, y, res, method="zscore", orders=(1, 2, 3)):
    want = oracle.measures(x, y, orders=orders, method=method)
    for name, got in res.values.items():
        assert got == pytest.approx(want[name], abs=1e-12), name


@pytest.mark.parametrize("seed", range(12))
def test_matches_oracle_single_block(seed):
    n = [2, 3, 5, 17, 60, 150][seed % 6]
    x, y = make_data(seed, n, d=[1, 4, 30][seed % 3], n_classes=2 + seed % 3)
    measures = [m for m in ALL if int(m.split(":")[1] if ":" in m else 1) < n]
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) > 1 and (counts == 1).all():  # one sample per class: named, not measured
        with pytest.raises(InputError, match="single sample"):
            separability(x, y, measures)
        return
    res = separability(x, y, measures)
    check(x, y, res, orders=[r for r in (1, 2, 3) if r < n])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("block", [1, 7, 64])
def test_matches_oracle_multi_block(seed, block):
    x, y = make_data(100 + seed, 130, d=12, n_classes=3)
    res = separability(x, y, ALL, block=block)
    check(x, y, res)


@pytest.mark.parametrize("method", ["zscore", "minmax", "none"])
def test_normalizations(method):
    x, y = make_data(5, 120, d=8, n_classes=4)
    x[:, 3] = 2.5  # a constant feature
    x[:, 5] *= 1000
    res = separability(x, y, ALL, normalize_method=method, block=32)
    check(x, y, res, method=method)


def test_exact_ties_lowest_index_wins():
    # Integer lattice: many exact ties in float32 and float64 alike (normalize='none').
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.integers(0, 3, size=(90, 3)).astype(np.float32)
        y = rng.integers(0, 3, size=90)
        res = separability(x, y, ALL, normalize_method="none", block=16)
        check(x, y, res, method="none")


def test_large_duplicate_groups_are_answered_by_their_copies():
    # 40 copies of one point with mixed labels: more tied points than candidates. The copies
    # past the group's first k+1 take its first k (knn.py, step 0), the rest are searched.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 5))
    x[:40] = x[0]
    y = rng.integers(0, 2, 120)
    from dnnlab.separability.knn import SearchStats

    st = SearchStats()
    res = separability(x, y, ALL, block=32, stats=st)
    check(x, y, res)
    assert st.duplicate_rows > 0


def test_large_groups_of_equidistant_points_use_fallback():
    # 40 distinct points all at one distance from each other (one-hot rows: sqrt(2) apart)
    # with mixed labels: more tied points than candidates, and none of them a copy.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 40)) + 6  # the other points far away
    x[:40] = np.eye(40)
    y = rng.integers(0, 2, 120)
    from dnnlab.separability.knn import SearchStats

    st = SearchStats()
    res = separability(x, y, ALL, normalize_method="none", block=32, stats=st)
    check(x, y, res, method="none")
    assert st.fallback_rows > 0 and st.duplicate_rows == 0


def test_r1_identities_with_duplicates():
    x, y = make_data(3, 200, d=6, n_classes=3, dup_frac=0.5)
    r = separability(x, y, ["si", "hsi:1", "soft:1", "anti:1"], block=50).values
    assert r["si"] == r["hsi:1"] == r["soft:1"]
    assert r["anti:1"] == 1 - r["si"]


def test_string_labels_and_per_class():
    x, y = make_data(4, 80, d=5, n_classes=3)
    names = np.array(["cat", "dog", "eel", "fox"])[np.searchsorted([-7, 3, 11, 40], y)]
    res = separability(x, names, ["si", "csi"])
    check(x, y, res)
    assert set(res.per_class) == set(names.tolist())
    total = sum(res.per_class[c]["si"] * res.class_counts[c] for c in res.per_class)
    assert total / len(x) == pytest.approx(res["si"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtypes_and_trailing_shape(dtype):
    rng = np.random.default_rng(9)
    x = rng.integers(-4, 5, size=(70, 2, 3, 2)) / 2  # exact in float16 too: ties stay ties
    y = rng.integers(0, 3, 70)
    xt = torch.tensor(x, dtype=dtype)
    before = xt.clone()
    res = separability(xt, torch.tensor(y), ALL, normalize_method="none")
    check(xt.double().numpy(), y, res, method="none")
    assert torch.equal(xt, before)  # the caller's tensor is untouched


def test_numpy_input_not_modified():
    x, y = make_data(2, 50, d=4, n_classes=2)
    before = x.copy()
    separability(x, y)
    assert np.array_equal(x, before)


def test_single_class_warns():
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.warns(UserWarning, match="one label"):
        res = separability(x, np.zeros(10), ["si", "csi", "anti:2", "soft:2"])
    assert res.values == {"si": 1.0, "csi": 1.0, "anti:2": 0.0, "soft:2": 1.0}


def test_result_prints_and_serializes():
    x, y = make_data(6, 40, d=3, n_classes=2)
    res = separability(x, y, "si,csi,hsi:3")
    d = json.loads(res.to_json())
    assert set(d) >= {"si", "csi", "hsi:3", "per_class"}
    text = str(res)
    assert "hsi:3" in text and "csi" in text


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": np.zeros((5, 2)), "y": np.zeros(4)}, "N=5 samples but labels have 4"),
        ({"x": np.zeros((1, 2)), "y": np.zeros(1)}, "at least 2 samples"),
        ({"x": np.zeros((4, 2)), "y": np.zeros((4, 2))}, r"shape \(N,\) or \(N, 1\)"),
        ({"x": np.zeros((4, 2)), "y": np.arange(4), "m": "hsi:4"}, "r=4 needs r < N = 4"),
        ({"x": np.zeros((4, 2)), "y": np.arange(4), "m": "foo"}, "unknown measure 'foo'"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        separability(kwargs["x"], kwargs["y"], kwargs.get("m", "si"))


def test_nan_rows_are_named():
    x = np.random.default_rng(0).normal(size=(10, 3))
    x[4, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 rows \(first rows: \[4, 7\]\)"):
        separability(x, np.arange(10) % 2)


def test_memory_budget_too_small():
    with pytest.raises(MemoryError, match="too small"):
        separability(np.zeros((1000, 1000)), np.arange(1000) % 2, max_memory="1MB")


def test_block_from_budget_stays_bounded():
    from dnnlab.separability.knn import SearchStats

    x, y = make_data(7, 3000, d=16, n_classes=3, dup_frac=0.0)
    st = SearchStats()
    separability(x, y, max_memory="3MB", stats=st)
    assert st.block < 3000 and 4 * st.block**2 * 4 <= 3e6
