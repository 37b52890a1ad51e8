"""What train() will do, decided before any file is touched: the run directory's state
against the request (new, resumed, extended, replaced, or finished already), the settings a
resumed run keeps, and the train/val/test positions of the data it trains on."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from dnnlab.cifar.config import RESUMABLE_CHANGES, TrainConfig
from dnnlab.cifar.data import split_indices, stratified_subset
from dnnlab.cifar.rundir import (
    RunError,
    RunPlan,
    check_checkpoint_record,
    check_nothing_lost,
    check_run_data,
    load_checkpoint,
    read_run_config,
    read_split,
)
from dnnlab.errors import ConfigError
from dnnlab.settings import flag_name, given_as
from dnnlab.utils.outputs import MARKER
from dnnlab.utils.records import read_json


def _settings_changed(saved: TrainConfig, cfg: TrainConfig, names=None) -> list[str]:
    """'--flag NEW (the run has OLD)' for each setting a resumed run cannot take over (of
    `names` only, when given); a switch as 'NAME on (with/without --FLAG; the run was
    with/without --FLAG)'."""
    out = []
    for f in fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES or (names is not None and f.name not in names):
            continue
        a, b = getattr(saved, f.name), getattr(cfg, f.name)
        if a != b and isinstance(a, bool):  # a switch: named by the flag that sets it
            state = "on" if b else "off"
            out.append(f"{f.name} {state} ({given_as(f, b)}; the run was {given_as(f, a)})")
        elif a != b:
            out.append(f"{flag_name(f)} {b} (the run has {a})")
    return out


def plan_run(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool, dev) -> RunPlan | dict:
    """Check the run directory against the request; returns a plan, or the finished
    run's summary when there is nothing to do. Raises RunError before touching anything."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    has = out.is_dir() and any(p.name != MARKER for p in out.iterdir())  # the gate's marker
    cfg_file = out / "config.json"
    if not has:
        return RunPlan()
    if not cfg_file.exists():
        raise RunError(
            f"{out} is not empty and holds no config.json, so it is not a dnnlab run "
            "directory; choose another --out"
        )
    if overwrite and not resume:
        return RunPlan(replace=True)  # a damaged run can be replaced too
    saved = read_run_config(out)
    saved_d = read_json(cfg_file, (), RunError)
    done = out / "summary.json"
    if not resume:
        if done.exists():
            raise RunError(
                f"{out} holds a finished run; pass --overwrite to replace it, or choose "
                "another --out"
            )
        raise RunError(
            f"{out} is not empty: pass --resume to continue that run, or --overwrite to start again"
        )
    check_resumed_settings(out, saved, cfg)
    ck, completed = _resume_point(cfg, out, saved, dev)
    plan = RunPlan(resume_from=ck, saved=saved_d)
    if done.exists():
        summary = read_json(done, ("epochs",), RunError)
        if summary["epochs"] == cfg.epochs and completed == cfg.epochs:
            return summary
        plan.extend = True  # honoured: more epochs continue the finished run
    return plan


def check_resumed_settings(out: Path, saved: TrainConfig, cfg: TrainConfig, given=None) -> None:
    """Refuse a resumed run asked to change a setting it keeps. given: the names of the
    settings the user gave (dnnlab train's flags); only they are compared and named, and
    before the run's own settings are merged with them (`train_command.requested_config`):
    merged first, a recipe check named the run's settings as if given ('--batch-size 64:
    contradicts --recipe budget' for `--resume --recipe budget`). Without `given` (train()
    called with a whole config) every setting is compared."""
    if (given is None or "model" in given) and saved.model != cfg.model:
        raise RunError(f"{out} is a run of {saved.model!r}, not {cfg.model!r}")
    changed = _settings_changed(saved, cfg, given)
    if changed:
        raise RunError(
            f"{out}: a resumed run keeps its settings, but {'; '.join(changed)}. Resume "
            "without them, or use --overwrite or another --out"
        )


def _resume_point(cfg: TrainConfig, out: Path, saved: TrainConfig, dev) -> tuple[dict | None, int]:
    """(last.pt's content or None, the epochs it completed) of a run to resume: the
    checkpoint checked against the run's record, the epochs asked against the run's."""
    last = out / "last.pt"
    ck = load_checkpoint(last, dev) if last.exists() else None
    if ck is not None:
        check_checkpoint_record(ck, out, last)
    else:
        check_nothing_lost(out)
    try:
        completed = int(ck["epoch"]) if ck else 0
    except (KeyError, TypeError, ValueError):
        raise RunError(f"{last}: damaged checkpoint (no epoch number)") from None
    if cfg.schedule != "step" and cfg.epochs != saved.epochs:
        raise RunError(
            f"--epochs {cfg.epochs}: {out} was started for {saved.epochs} epochs, and its "
            f"{cfg.schedule} schedule decays the learning rate to zero over exactly those; "
            "resuming with another count would change the run. Use --overwrite (or another "
            "--out) for a new run"
        )
    if cfg.epochs < completed:
        raise RunError(
            f"--epochs {cfg.epochs}: {out} has already completed {completed} epochs; a run "
            "cannot be shortened"
        )
    return ck, completed


def make_split(data, n_val: int, train_subset: int | None, seed: int):
    """(train, val) indices into data.train_*: `n_val` validation images and the rest (or a
    stratified `train_subset` of it) for training, stratified and seeded; sizes checked
    first, naming the flag."""
    n = data.train_y.numel()
    if n_val >= n:
        raise ConfigError(f"--val-size: {n_val} leaves no training images; {data.source} has {n}")
    tr_idx, val_idx = split_indices(data.train_y, n_val, seed)
    if train_subset:
        if train_subset > tr_idx.numel():
            raise ConfigError(
                f"--train-subset: {train_subset} is more than the {tr_idx.numel()} "
                "training images left after the validation split"
            )
        pos = stratified_subset(data.train_y[tr_idx], train_subset, seed + 1)
        tr_idx = tr_idx[pos]
    return tr_idx, val_idx


def test_positions(data, test_subset: int | None, seed: int) -> torch.Tensor:
    """The test images a run tests on: all, or a stratified, seeded `test_subset`."""
    n = data.test_y.numel()
    if not test_subset:
        return torch.arange(n)
    if test_subset > n:
        raise ConfigError(f"--test-subset: {test_subset} is more than the {n} test images")
    return stratified_subset(data.test_y, test_subset, seed)


def train_val_positions(out: Path, resumed: bool, data, n_val: int, train_subset, seed: int):
    """(train, val) positions: a resumed run's data identity and split.json are checked
    against `data`; a new run draws its split (make_split)."""
    if resumed:
        check_run_data(out, data)
    if resumed and (out / "split.json").exists():
        return read_split(out, data.train_y.numel())
    return make_split(data, n_val, train_subset, seed)
