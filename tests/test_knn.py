"""The error bound that certifies the fast pass, checked against float64."""

import math

import pytest
import torch

from dnnlab.separability.knn import TOL_FACTOR, SearchStats, k_nearest, sq_norms


@pytest.mark.slow
@pytest.mark.parametrize("d", [1, 16, 256, 4096])
def test_expanded_form_error_within_bound(d):
    g = torch.Generator().manual_seed(d)
    a = torch.randn(300, d, generator=g) * 3 + 1  # an offset makes cancellation worse
    sq = sq_norms(a)
    fast = (sq[:, None] + sq[None, :] - 2 * a @ a.T).double()
    a64 = a.double()
    exact = ((a64[:, None, :] - a64[None, :, :]) ** 2).sum(2)
    u = torch.finfo(torch.float32).eps / 2
    bound = TOL_FACTOR * u * math.sqrt(d) * (sq[:, None] + sq.max()).double()
    ratio = ((fast - exact).abs() / bound).max().item()
    assert ratio < 0.5, f"rounding error reached {ratio:.2f} of the certified bound"


def test_k_nearest_validates_k():
    with pytest.raises(ValueError, match="between 1 and N-1"):
        k_nearest(torch.zeros(3, 2), 3, block=2)


def brute_force(a: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k nearest other rows by (float64 distance, index)."""
    a64 = a.double()
    d = ((a64[:, None, :] - a64[None, :, :]) ** 2).sum(2)
    d.fill_diagonal_(float("inf"))
    return torch.sort(d, dim=1, stable=True).indices[:, :k]  # stable: the lower index first


@pytest.mark.parametrize("k", [1, 3])
def test_groups_of_copies_give_the_exact_order(k):
    # Five rows repeated (one feature 0.0, written -0.0 in some copies: the same value) among
    # distinct rows: the copies past a group's first k+1 are answered by the group.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5, 6, generator=g)
    base[:, 2] = 0.0
    which = torch.randint(0, 5, (300,), generator=g)
    a = torch.cat([base[which], torch.randn(100, 6, generator=g)])
    a[:300:7, 2] = -0.0
    a = a[torch.randperm(400, generator=g)]
    st = SearchStats()
    got = k_nearest(a, k, block=64, stats=st)
    assert torch.equal(got, brute_force(a, k))
    counts = torch.bincount(which)
    assert st.duplicate_rows == int((counts - (k + 1)).clamp(min=0).sum())
