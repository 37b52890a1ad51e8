"""The torch.distributed path: two gloo processes on localhost give the one-process answer."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnnlab.separability import knn, separability
from dnnlab.separability.featurefile import FeatureFile
from tests import oracle
from tests.fakes import ALL, free_port, make_data


def _worker(rank, world, port, x, y, block, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = separability(x, y, ALL, block=block)
        out[rank] = res.values
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("seed,block", [(0, 16), (1, 50), (2, 1000)])
def test_two_gloo_processes_match_oracle(seed, block):
    x, y = make_data(200 + seed, 140, d=9, n_classes=3, dup_frac=0.3)
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_worker, args=(2, free_port(), x, y, block, out), nprocs=2, join=True)
        got = dict(out)
    single = separability(x, y, ALL, block=block).values
    assert got[0] == got[1] == single
    want = oracle.measures(x, y)
    for k, v in single.items():
        assert v == pytest.approx(want[k], abs=1e-12)
    assert np.isfinite(list(single.values())).all()


def _file_worker(rank, world, port, path, y, block, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = separability(FeatureFile.open_npy(path), y, ALL, block=block).values
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_on_a_feature_file(tmp_path):
    """Each process reads its block pairs from the file: the in-memory, one-process answer."""
    x, y = make_data(7, 150, d=9, n_classes=3, dup_frac=0.3)
    np.save(tmp_path / "x.npy", x)
    with mp.Manager() as m:
        out = m.dict()
        args = (2, free_port(), str(tmp_path / "x.npy"), y, 32, out)
        mp.spawn(_file_worker, args=args, nprocs=2, join=True)
        got = dict(out)
    assert got[0] == got[1] == separability(x, y, ALL, block=32).values


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_as_one(tree, tmp_path):
    """`dnnlab train` under torchrun (2 processes, gloo, CPU) ends with the weights of a
    one-process run with the same global batch: each process takes half of every batch and
    DDP averages the gradients. base has no batch norm, so the halves do not change the
    normalisation statistics. 120 training images in batches of 20: every half is 10."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import torch

    import dnnlab
    from dnnlab.cifar.models import build_model
    from dnnlab.cifar.train import TrainConfig, train

    args = [
        "--model",
        "base",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--lr",
        "0.05",
        "--val-size",
        "20",
        "--data-root",
        str(tree),
        # fp32: the comparison is of the distributed arithmetic; bf16 rounds each process's
        # half-batch differently from one full batch.
        "--no-bf16",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(dnnlab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    two = tmp_path / "two"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "dnnlab",
            "train",
            *args,
            "--out",
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # put back below: later tests in this process get every thread
    try:
        train(
            TrainConfig(
                model="base",
                epochs=1,
                batch_size=20,
                lr=0.05,
                n_val=20,
                data_root=str(tree),
                bf16=False,
            ),
            one,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads((two / "split.json").read_text())["train"]) == 120
    a = torch.load(one / "last.pt", weights_only=True)["model"]
    b = torch.load(two / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    # The weights moved in those 6 steps, so the comparison is not of two initialisations.
    first = json.loads((one / "metrics.json").read_text())[0]
    assert first["train_loss"] > 0
    init = TrainConfig(model="base")
    torch.manual_seed(init.seed)
    fresh = build_model("base").state_dict()
    assert max(float((a[k] - fresh[k]).abs().max()) for k in a) > 1e-3


def _linear_worker(rank, world, port, x, y, xt, yt, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = separability(x, y, "si,knn:3,linear", test=(xt, yt), block=16)
        g = torch.full((len(x), len(x)), float("nan"))
        knn.k_nearest(torch.from_numpy(x), 3, 16, reducers=(knn.GramBlocks(g),))
        out[rank] = (res.values, res.notes, g)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_share_the_linear_classifiers_gram():
    # D > N: each process forms its block pairs' products, their sum is the whole Gram, and
    # both fit the one-process probe from it.
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(3, 120))
    y, yt = rng.integers(0, 3, 90), rng.integers(0, 3, 40)
    x = (centers[y] + 2 * rng.normal(size=(90, 120))).astype(np.float32)
    xt = (centers[yt] + 2 * rng.normal(size=(40, 120))).astype(np.float32)
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_linear_worker, args=(2, free_port(), x, y, xt, yt, out), nprocs=2, join=True)
        got = dict(out)
    single = separability(x, y, "si,knn:3,linear", test=(xt, yt), block=16)
    assert got[0][0] == got[1][0] == single.values
    assert all("Gram from the neighbour search" in " ".join(r[1]) for r in got.values())
    g = torch.full((90, 90), float("nan"))
    # One process: every pair here.
    knn.k_nearest(torch.from_numpy(x), 3, 16, reducers=(knn.GramBlocks(g),))
    assert torch.equal(got[0][2], g) and torch.equal(got[1][2], g)
