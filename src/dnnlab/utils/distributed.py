"""Joining torchrun's process group: one function for every command."""

from __future__ import annotations

import os


def init_distributed(device: str | None = None) -> tuple[int, int]:
    """(rank, world size): joins the process group when torchrun launched several processes
    (WORLD_SIZE > 1), else (0, 1). NCCL when `device` is CUDA (or, with no device given,
    when CUDA is available), else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = str(device).startswith("cuda") if device else torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()
