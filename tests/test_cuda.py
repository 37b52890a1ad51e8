"""CUDA paths; skipped where no GPU is present (run on a GPU machine: pytest tests/test_cuda.py)."""

import numpy as np
import pytest
import torch

from dnnlab.separability import separability
from tests import oracle
from tests.fakes import ALL, make_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("seed", range(4))
def test_cuda_matches_cpu_and_oracle_with_ties(seed):
    x, y = make_data(300 + seed, 300, d=7, n_classes=3, dup_frac=0.4)
    cpu = separability(x, y, ALL, block=64).values
    gpu = separability(torch.tensor(x, device="cuda"), y, ALL, block=64).values
    assert gpu == cpu
    want = oracle.measures(x, y)
    for k, v in gpu.items():
        assert v == pytest.approx(want[k], abs=1e-12)


def test_cuda_lattice_ties_same_as_cpu():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(400, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=400)
    cpu = separability(x, y, ALL, normalize_method="none", block=100).values
    gpu = separability(x, y, ALL, normalize_method="none", device="cuda", block=100).values
    assert gpu == cpu


def test_tf32_setting_restored(monkeypatch):
    # monkeypatch puts the global setting back whatever happens here
    for before in (True, False):
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", before)
        separability(torch.randn(50, 4, device="cuda"), np.arange(50) % 2)
        assert torch.backends.cuda.matmul.allow_tf32 is before


def test_cuda_training_step(tmp_path, monkeypatch):
    from dnnlab.cifar.train import TrainConfig, train
    from tests.fakes import assert_summary_matches_best, make_image_tree

    monkeypatch.setenv("DNNLAB_CACHE", str(tmp_path / "cache"))
    tree = make_image_tree(tmp_path / "t", n_train=6, n_test=2)
    cfg = TrainConfig(
        model="bn", epochs=1, batch_size=16, n_val=10, data_root=str(tree), device="cuda"
    )
    s = train(cfg, tmp_path / "run", progress=False)
    assert 0 <= s["test_acc"] <= 1
    # summary.json's test numbers are best.pt's re-evaluated on the run's test images (to one
    # image and a small loss tolerance: bf16/TF32 kernels), its counts the config's and split's
    assert assert_summary_matches_best(tmp_path / "run", cfg, "cuda", exact=False) == s


def test_cuda_measures_beyond_si_match_cpu():
    # knn, nc1 and the linear classifier (with the Gram shared from the search, D > N) on CUDA
    # against the CPU: neighbour measures equal, nc1 and the probe's coefficients to
    # rounding (the two devices' feature statistics differ in the last bits, so their
    # float32 normalized features do too), the predictions equal; CKA to rounding.
    from dnnlab.separability import linear_cka, unbiased_cka
    from dnnlab.separability.measures import separability_fitting

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 500))
    y = rng.integers(0, 4, 200)
    x = (centers[y] + 1.5 * rng.normal(size=(200, 500)) + 5).astype(np.float32)
    m = "si,knn:5,nc1,linear"
    cpu, p_cpu = separability_fitting(x, y, m)
    gpu, p_gpu = separability_fitting(torch.tensor(x, device="cuda"), y, m)
    assert p_gpu.shared_gram and p_cpu.shared_gram
    assert gpu["si"] == cpu["si"] and gpu["knn:5"] == cpu["knn:5"]
    assert gpu["linear"] == cpu["linear"]
    assert gpu["nc1"] == pytest.approx(cpu["nc1"], rel=1e-5)
    scale = p_cpu.coef.abs().max().item()
    np.testing.assert_allclose(
        p_gpu.coef.cpu().numpy(), p_cpu.coef.numpy(), rtol=1e-4, atol=1e-4 * scale
    )
    xt = torch.tensor(x[:50])
    assert torch.equal(p_gpu.predict_codes(xt.cuda()).cpu(), p_cpu.predict_codes(xt))
    x2 = x[:, :100] ** 2
    for f in (linear_cka, unbiased_cka):
        want = f(x, x2)
        assert f(torch.tensor(x, device="cuda"), torch.tensor(x2, device="cuda")) == (
            pytest.approx(want, rel=1e-6)
        )
