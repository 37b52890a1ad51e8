"""The torch.distributed path: two gloo processes on localhost give the one-process answer."""

import os
import socket

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dnnlab.separability import separability
from tests import oracle
from tests.test_separability import ALL, make_data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, x, y, block, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = separability(x, y, ALL, block=block)
        out[rank] = res.values
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("seed,block", [(0, 16), (1, 50), (2, 1000)])
def test_two_gloo_processes_match_oracle(seed, block):
    x, y = make_data(200 + seed, 140, d=9, n_classes=3, dup_frac=0.3)
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_worker, args=(2, _free_port(), x, y, block, out), nprocs=2, join=True)
        got = dict(out)
    single = separability(x, y, ALL, block=block).values
    assert got[0] == got[1] == single
    want = oracle.measures(x, y)
    for k, v in single.items():
        assert v == pytest.approx(want[k], abs=1e-12)
    assert np.isfinite(list(single.values())).all()
