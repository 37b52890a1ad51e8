"""init_distributed: one way for every command to join torchrun's process group."""

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from dnnlab.utils.distributed import init_distributed


def test_single_process_joins_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == (0, 1)
    assert not dist.is_initialized()


def _worker(rank, world, port, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    try:
        out[rank] = init_distributed("cpu")
        out[f"backend{rank}"] = dist.get_backend()
    finally:
        dist.destroy_process_group()


def test_torchrun_environment_joins_the_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
        got = dict(out)
    assert got[0] == (0, 2) and got[1] == (1, 2) and got["backend0"] == "gloo"
