"""The error bound that certifies the fast pass, checked against float64."""

import math

import pytest
import torch

from dnnlab.separability.knn import TOL_FACTOR, k_nearest, sq_norms


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
