"""CKA (linear and unbiased) against float64 brute force; invariances; many layers; errors."""

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from dnnlab.separability.cka import CkaMatrix, centered_gram, linear_cka, unbiased_cka
from tests import oracle


def pair(seed, n=40, dx=7, dy=30):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) * rng.uniform(0.1, 4, dx) + rng.normal(size=dx) * 5
    y = np.tanh(x @ rng.normal(size=(dx, dy))) + 0.3 * rng.normal(size=(n, dy)) + 2
    return x, y


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(seed):
    x, y = pair(seed, n=[5, 12, 40, 80, 33][seed])
    assert linear_cka(x, y) == pytest.approx(oracle.linear_cka(x, y), rel=1e-11)
    assert unbiased_cka(x, y) == pytest.approx(oracle.unbiased_cka(x, y), rel=1e-9)


def test_self_is_exactly_one_and_symmetric():
    x, y = pair(1)
    for fn in (linear_cka, unbiased_cka):
        assert fn(x, x) == 1.0
        assert fn(y, y) == 1.0
        assert fn(x, y) == fn(y, x)


def test_invariant_to_orthogonal_transform_scaling_and_shift():
    x, y = pair(2, n=50, dx=6, dy=9)
    q = ortho_group.rvs(9, random_state=3)
    y2 = 7.5 * y @ q + 3.0
    for fn in (linear_cka, unbiased_cka):
        assert fn(x, y2) == pytest.approx(fn(x, y), rel=1e-11)
    # Not invariant to a general (anisotropic) linear map: the test can tell them apart.
    y3 = y * np.linspace(0.1, 10, 9)
    assert abs(linear_cka(x, y3) - linear_cka(x, y)) > 1e-3


def test_matrix_with_spill_and_blocks_equals_pairs(tmp_path):
    rng = np.random.default_rng(4)
    n = 60
    layers = {
        f"l{i}": rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + i
        for i, d in enumerate([3, 50, 8, 200, 1])
    }
    layers["copy"] = layers["l1"] * -2.0
    # Budget: two Grams in memory (half the budget), the rest spilled; row blocks of 4 rows.
    budget = 2 * n * n * 8 * 2 + 8
    ids = np.arange(n) * 3
    with CkaMatrix(max_memory=budget, spill_dir=tmp_path) as m:
        for name, f in layers.items():
            m.add(name, torch.tensor(f, dtype=torch.float32), ids=ids)
        assert list(tmp_path.glob("dnnlab-cka-*/gram*.npy"))
        res = m.result()
    assert not list(tmp_path.glob("dnnlab-cka-*"))  # the spill files are removed
    names = list(layers)
    for i, a in enumerate(names):
        assert res.linear[i][i] == 1.0 and res.unbiased[i][i] == 1.0
        for j, b in enumerate(names):
            fa, fb = (np.float64(np.float32(layers[k])) for k in (a, b))
            assert res.linear[i][j] == pytest.approx(oracle.linear_cka(fa, fb), rel=1e-10)
            assert res.unbiased[i][j] == pytest.approx(oracle.unbiased_cka(fa, fb), rel=1e-8)
    assert res.value("l1", "copy") == pytest.approx(1.0, rel=1e-12)


def test_gram_by_panels_equals_direct():
    x = np.random.default_rng(5).normal(size=(37, 101)) + 4
    g = centered_gram(x, panel_elems=37 * 10)  # 10 columns per panel
    xc = x - x.mean(0)
    np.testing.assert_allclose(g.numpy(), xc @ xc.T, rtol=1e-12, atol=1e-10)
    assert torch.equal(g, g.T)


def test_constant_layer_is_named_not_measured():
    x, _ = pair(6)
    with CkaMatrix() as m:
        m.add("a", x)
        m.add("dead", np.ones((len(x), 5)))
        res = m.result()
    assert res.linear[0][1] is None and res.linear[0][0] == 1.0
    assert "'dead'" in res.notes[0]
    with pytest.raises(ValueError, match="constant"):
        linear_cka(x, np.zeros((len(x), 3)))


@pytest.mark.parametrize(
    "ids_a,ids_b,n_b,match",
    [
        (None, None, 39, "'b' has 39 samples but 'a' has 40"),
        (np.arange(40), np.arange(40)[::-1], 40, "not those of 'a' in the same order"),
        (np.arange(40), None, 40, "'b' has no sample ids"),
        (None, np.arange(40), 40, "'b' has sample ids but 'a' has none"),
    ],
)
def test_mismatched_samples(ids_a, ids_b, n_b, match):
    x, y = pair(7)
    with CkaMatrix() as m:
        m.add("a", x, ids=ids_a)
        with pytest.raises(ValueError, match=match):
            m.add("b", y[:n_b], ids=ids_b)


def test_too_few_samples():
    with pytest.raises(ValueError, match="N >= 4"):
        linear_cka(np.ones((3, 2)), np.ones((3, 2)))
