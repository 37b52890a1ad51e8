"""Probe a `dnnlab train` run directory: its best weights on train20, val and test."""

from __future__ import annotations

from pathlib import Path

import torch

from dnnlab.cifar.augment import to_input
from dnnlab.cifar.data import load_cifar10, stratified_subset
from dnnlab.cifar.models import build_model
from dnnlab.cifar.recipe import softmax_head, train20_pool
from dnnlab.cifar.train import (
    RunError,
    TrainConfig,
    check_run_data,
    load_model_checkpoint,
    read_run_config,
    read_split,
)
from dnnlab.errors import InputError
from dnnlab.probe.config import SPLITS, ProbeConfig
from dnnlab.probe.layers import trace
from dnnlab.probe.probe import ProbeResult, plot_probe, probe_model


def run_splits(
    run: Path, cfg: TrainConfig, wanted, data_root=None, max_per_split=None, seed: int = 0
):
    """{split: (uint8 images, labels)} for a run, from its recorded split indices."""
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise InputError(f"--splits: unknown split {unknown}; a run has {list(SPLITS)}")
    split_file = run / "split.json"
    if not split_file.exists():
        raise RunError(f"{run}: no split.json; is this a `dnnlab train` run directory?")
    data = load_cifar10(data_root or cfg.data_root)
    # The run's split indices must meet the images it was trained on (content identity),
    # and be positions among them, train and val apart.
    check_run_data(run, data)
    tr, va = read_split(run, data, cfg)
    out = {}
    for name in wanted:
        if name == "train20":
            # A stratified, seeded 20% of the run's training images (9,000 of 45,000); the
            # course recipe draws it from all 50,000, validation images included, as the course.
            pool = train20_pool(cfg.recipe, tr, data.train_y.numel())
            pos = stratified_subset(data.train_y[pool], round(0.2 * len(pool)), seed)
            x, y = data.train_x[pool[pos]], data.train_y[pool[pos]]
        elif name == "val":
            x, y = data.train_x[va], data.train_y[va]
        else:
            x, y = data.test_x, data.test_y
        if max_per_split and x.shape[0] > max_per_split:
            pos = stratified_subset(y, max_per_split, seed)
            x, y = x[pos], y[pos]
        out[name] = (x, y)
    return out


def probe_run(
    run, pcfg: ProbeConfig, data_root=None, overwrite=False, progress=False, out=None
) -> ProbeResult:
    """Probe the run's kept weights (best.pt) under `pcfg`; its records and figures go to
    `out` (default: the run folder itself)."""
    run = Path(run)
    out = run if out is None else Path(out)
    if not (run / "config.json").exists():
        raise RunError(f"{run}: no config.json; is this a `dnnlab train` run directory?")
    cfg = read_run_config(run)
    best = run / "best.pt"
    if not best.exists():
        raise RunError(f"{run}: no best.pt yet; train the run first")
    model, _ = load_model_checkpoint(best, cfg.model, run=run)
    splits = run_splits(run, cfg, pcfg.splits, data_root, pcfg.max_per_split, seed=cfg.seed)
    res = probe_model(
        model, splits, pcfg, out=out, input_fn=to_input, overwrite=overwrite, progress=progress
    )
    plot_probe(res.rows, out, title=cfg.model)
    return res


def list_run(run) -> list:
    """Every module of a run's model in execution order, with its output on one image."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise RunError(f"{run}: no config.json; is this a `dnnlab train` run directory?")
    cfg = read_run_config(run)
    head = softmax_head(cfg.recipe, cfg.model, cfg.softmax_head)  # as the run trained it
    model = build_model(cfg.model, softmax_head=head).eval()
    return trace(model, torch.zeros(2, 3, 32, 32), [], None).all_layers
