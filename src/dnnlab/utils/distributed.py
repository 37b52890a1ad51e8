"""Joining torchrun's process group: one function for every command."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str | None = None) -> tuple[int, int]:
    """(rank, world size): joins the process group when torchrun launched several processes
    (WORLD_SIZE > 1), else (0, 1). NCCL when `device` is CUDA (or, with no device given,
    when CUDA is available), else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda") if device else torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def share_from_rank0(value, world: int):
    """Rank 0's `value` (any picklable object), as every rank of the job sees it: how a
    decision only rank 0 makes, such as a refused folder lock, reaches the others."""
    if world <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
