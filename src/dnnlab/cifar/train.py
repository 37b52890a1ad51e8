"""Train one variant with the course's hyperparameters; write a complete, resumable run directory.

    dnnlab train --model bn --out runs/bn [--epochs 100 --batch-size 256 --lr 0.01 ...]

Run directory: config.json, split.json (train/val indices), metrics.csv + metrics.json,
best.pt + last.pt (model, optimizer, scheduler, epoch, RNG states), curves.png, summary.json.
The data set lives on the training device as uint8; batches are augmented there.

The settings are config.TrainConfig's; what a call will do is decided first (plan.py), the
run directory's records and lifecycle are rundir.py's, and the epochs epoch.py's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dnnlab.cifar import recipe as R
from dnnlab.cifar.config import TrainConfig
from dnnlab.cifar.data import default_root, load_cifar10
from dnnlab.cifar.epoch import (
    end_epoch,
    finish_run,
    run_epoch,
    start_training,
    track_best,
    wrap_model,
)
from dnnlab.cifar.plan import plan_run, test_positions, train_val_positions
from dnnlab.cifar.rundir import (
    RunError,
    check_run_data,
    load_model_checkpoint,
    prepare_run_dir,
    put_back_on_failure,
    read_run_config,
    read_split,
    recover_replaced,
    resumed_rows,
)
from dnnlab.errors import ConfigError
from dnnlab.utils.device import check_device
from dnnlab.utils.distributed import init_distributed
from dnnlab.utils.lock import job_lock
from dnnlab.utils.outputs import check_output
from dnnlab.utils.precision import training_precision

# What other modules import from here: train(), and the run's settings and records.
__all__ = [
    "RunError",
    "TrainConfig",
    "check_run_data",
    "load_model_checkpoint",
    "read_run_config",
    "read_split",
    "train",
]


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) one run; returns the summary dict.

    With `stop_after` K below the run's epochs, only the schedule's first K epochs are run
    (the learning rate follows the full schedule) and the run is left unfinished, as an
    interrupted one: `--resume` continues it. Returns {"model", "epochs", "stopped_after",
    "metrics"} then, the metrics being the rows of the epochs done.

    Every input (settings, run directory, checkpoint, data, split) is checked before
    anything is written or replaced. With --overwrite the old run is moved to a hidden
    sibling `.OUT.PID.old` and deleted once the new run's first epoch is saved. The run
    directory is never one holding the data, and one process at a time writes it (its
    lock, held by rank 0; a refusal ends every rank). A replacement stopped before its
    first epoch is saved (an error, Ctrl-C, or a kill noticed by the next run) puts the
    replaced run back."""
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one")
    check_output(out, "--out", "train", inputs=[cfg.data_root or default_root()], replace=True)
    rank, world = init_distributed(cfg.device)
    with job_lock(out, rank, world):
        dev = _rank_device(cfg.device, out, rank, world)
        plan = plan_run(cfg, out, resume, overwrite, dev)
        if isinstance(plan, dict):
            return plan  # finished, nothing asked beyond it
        data = load_cifar10(cfg.data_root)
        resumed = plan.saved is not None
        idx = train_val_positions(out, resumed, data, cfg.n_val, cfg.train_subset, cfg.seed)
        te = test_positions(data, cfg.test_subset, cfg.seed)
        rows = resumed_rows(out, plan.resume_from)
        precision, why = training_precision(cfg.bf16, dev)
        if rank == 0:
            print(f"[{cfg.model}] training in {precision}: {why}", flush=True)

        # Every input is good: only now change the run directory.
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        with put_back_on_failure(old, out, rank == 0 and plan.replace):
            if rank == 0:
                split_idx = {"train": idx[0], "val": idx[1]}
                prepare_run_dir(cfg, out, plan, data, split_idx, old, (precision, why))
            if world > 1:
                torch.distributed.barrier()
            split = _split_on(dev, data, *idx, te)
            n_train = split["train"][1].numel()
            st = start_training(cfg, out, dev, plan.resume_from, n_train, precision)
            net = wrap_model(st.model, cfg.compile, dev, world)
            keep_last = R.tests_last_weights(cfg.recipe)
            end = cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)
            for epoch in range(st.start, end):
                row = run_epoch(st, net, cfg, split, dev, epoch, rank, world, progress, out)
                rows.append(row)
                keep = track_best(st, keep_last, row)
                if rank == 0:
                    end_epoch(st, cfg, out, rows, keep, old if plan.replace else None)
        if end < cfg.epochs:
            return {"model": cfg.model, "epochs": cfg.epochs, "stopped_after": end, "metrics": rows}
        return finish_run(st, cfg, out, split, dev, rows, data, rank, te)


def _rank_device(device: str, out: Path, rank: int, world: int) -> torch.device:
    """This process's device (under torchrun, its own card); rank 0 first puts back a run
    that an interrupted replacement set aside, and the others wait for it."""
    dev = check_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", torch.cuda.current_device())
    if rank == 0:
        recover_replaced(out)
    if world > 1:
        torch.distributed.barrier()
    return dev


def _split_on(dev, data, tr_idx, val_idx, te) -> dict:
    """{split: (uint8 images, labels)} of the run's positions, on `dev`."""
    return {
        "train": (data.train_x[tr_idx].to(dev), data.train_y[tr_idx].to(dev)),
        "val": (data.train_x[val_idx].to(dev), data.train_y[val_idx].to(dev)),
        "test": (data.test_x[te].to(dev), data.test_y[te].to(dev)),
    }
