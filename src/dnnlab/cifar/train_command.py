"""What `dnnlab train` does with its flags: the TrainConfig they ask for (over the defaults,
or over a resumed run's saved settings) and the run itself. The flags are parsed by
dnnlab.cli, which passes only those given on the command line."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from dnnlab.cifar.config import TrainConfig
from dnnlab.cifar.data import default_root, load_cifar10
from dnnlab.cifar.plan import check_resumed_settings
from dnnlab.cifar.recipe import check_recipe_flag
from dnnlab.cifar.rundir import left_replaced, read_run_config, recover_replaced
from dnnlab.cifar.train import train
from dnnlab.errors import ConfigError
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import check_output


def requested_config(given: dict, out, resume: bool) -> TrainConfig:
    """The given settings over the defaults, or, with resume on an existing run in `out`,
    over the run's saved settings. Every given setting is checked before anything else."""
    check_recipe_flag(given)
    cfg = TrainConfig(**given)
    if not (resume and (Path(out) / "config.json").exists()):
        return cfg
    base = read_run_config(out)
    check_resumed_settings(Path(out), base, cfg, given)  # only the flags given are named
    names = [f.name for f in fields(TrainConfig)]
    return TrainConfig(**{**{k: getattr(base, k) for k in names}, **given})


def train_command(
    given: dict,
    out,
    resume: bool,
    overwrite: bool,
    download: bool,
    progress: bool,
    stop_after: int | None = None,
) -> None:
    """Check the flags, fetch CIFAR-10 if asked (download), then train (or resume) in out,
    for the first `stop_after` epochs only when given."""
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one")
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after: {stop_after}; give a number of epochs, at least 1")
    # Before the run's settings are read (they must be its own): a replaced run a killed
    # --overwrite left is put back, under the lock, by one process (rank 0 of a torchrun job).
    if os.environ.get("RANK", "0") == "0" and left_replaced(out):
        with folder_lock(out):
            recover_replaced(out)
    cfg = requested_config(given, out, resume)
    if stop_after is not None and stop_after >= cfg.epochs:
        raise ConfigError(
            f"--stop-after {stop_after}: not below the run's {cfg.epochs} epochs, so it would stop "
            "nothing; give fewer, or leave it out"
        )
    check_output(out, "--out", "train", inputs=[cfg.data_root or default_root()], replace=True)
    if download:
        load_cifar10(cfg.data_root, download=True)
    train(cfg, out, resume=resume, overwrite=overwrite, progress=progress, stop_after=stop_after)


__all__ = ["requested_config", "train_command"]
