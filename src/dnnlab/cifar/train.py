"""Train one variant with the course's hyperparameters; write a complete, resumable run directory.

    dnnlab train --model bn --out runs/bn [--epochs 100 --batch-size 256 --lr 0.01 ...]

Run directory: config.json, split.json (train/val indices), metrics.csv + metrics.json,
best.pt + last.pt (model, optimizer, scheduler, epoch, RNG states), curves.png, summary.json.
The data set lives on the training device as uint8; batches are augmented there.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from dnnlab.cifar import recipe as R
from dnnlab.cifar.augment import AUGMENTERS, augment, to_input
from dnnlab.cifar.data import default_root, load_cifar10, split_indices, stratified_subset
from dnnlab.cifar.models import VARIANTS, build_model, count_params
from dnnlab.cifar.rundir import (
    RunError,
    check_run_data,
    data_record,
    load_checkpoint,
    read_json,
    read_json_dict,
)
from dnnlab.errors import ConfigError
from dnnlab.settings import flag_name, setting, validate
from dnnlab.utils.atomic import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    pid_alive,
)
from dnnlab.utils.device import DEVICE_HELP, check_device, check_device_name
from dnnlab.utils.distributed import init_distributed
from dnnlab.utils.lock import job_lock
from dnnlab.utils.plots import plot_train_curves
from dnnlab.utils.precision import training_precision
from dnnlab.utils.spare_inputs import check_outputs_spare_inputs
from dnnlab.utils.weights import load_fitting

__all__ = [
    "RunError",
    "TrainConfig",
    "check_run_data",
    "load_model_checkpoint",
    "read_run_config",
    "read_split",
    "train",
]


@dataclass
class TrainConfig:
    """One training run's settings; every default is the course project's recipe."""

    model: str = setting("base", "a variant from `dnnlab models`")
    # The recipe's hyperparameters: unset (None) takes the recipe's value (recipe.COURSE for
    # corrected and course, recipe.BUDGET for budget), which config.json then records.
    epochs: int | None = setting(
        None, "training epochs", low=1, high=100_000, default_text=R.default_text("epochs")
    )
    batch_size: int | None = setting(
        None, "training batch size", low=1, high=65_536, default_text=R.default_text("batch_size")
    )
    lr: float | None = setting(
        None,
        "peak SGD learning rate",
        low=0,
        high=10,
        low_open=True,
        default_text=R.default_text("lr"),
    )
    momentum: float | None = setting(
        None, "SGD momentum", low=0, high=1, high_open=True, default_text=R.default_text("momentum")
    )
    nesterov: bool | None = setting(
        None, "Nesterov momentum", default_text=R.default_text("nesterov")
    )
    weight_decay: float | None = setting(
        None, "SGD weight decay", low=0, high=1, default_text=R.default_text("weight_decay")
    )
    label_smoothing: float | None = setting(
        None,
        "cross-entropy label smoothing",
        low=0,
        high=1,
        high_open=True,
        default_text=R.default_text("label_smoothing"),
    )
    schedule: str | None = setting(
        None,
        "learning-rate schedule: step (StepLR, per epoch) or linear (linear warmup, then "
        "linear decay to zero at the last step)",
        choices=R.SCHEDULES,
        default_text=R.default_text("schedule"),
    )
    step_size: int | None = setting(
        None,
        "StepLR: epochs between learning-rate drops",
        low=1,
        high=100_000,
        default_text=R.default_text("step_size"),
    )
    gamma: float | None = setting(
        None,
        "StepLR: learning-rate factor at each drop",
        low=0,
        high=1,
        low_open=True,
        default_text=R.default_text("gamma"),
    )
    warmup_epochs: float | None = setting(
        None,
        "linear schedule: epochs of linear warmup from zero",
        low=0,
        high=100_000,
        default_text=R.default_text("warmup_epochs"),
    )
    augmentation: str | None = setting(
        None,
        "training augmentation: flip-rotate (the course's: flip, rotation within 10 degrees) "
        "or flip-translate (flip, shift by up to 2 pixels)",
        choices=R.AUGMENTATIONS,
        default_text=R.default_text("augmentation"),
    )
    n_val: int = setting(
        5000,
        "validation images held out of the training set (stratified)",
        low=1,
        high=49_999,
        flag="--val-size",
    )
    train_subset: int | None = setting(None, "train on a stratified subset this large", low=1)
    test_subset: int | None = setting(
        None, "test on a stratified part of the test set (quick runs only)", low=1
    )
    seed: int = setting(
        0, "random seed (split, initialization, data order, augmentation)", low=0, high=2**32 - 1
    )
    softmax_head: bool = setting(
        False, "the course project's double softmax (softmax in the model, then cross-entropy)"
    )
    device: str = setting("cpu", DEVICE_HELP)
    compile: bool = setting(False, "torch.compile the model (GPU runs)")
    bf16: bool = setting(
        True,
        "bf16 autocast in training and evaluation where the device computes bf16 natively "
        "(CUDA; a CPU with avx512_bf16 or AMX); fp32 elsewhere, said once and recorded",
    )
    data_root: str | None = setting(None, "CIFAR-10 source; none: $DNNLAB_DATA")
    eval_batch_size: int = setting(1024, "batch size for validation and test", low=1, high=65_536)
    recipe: str = setting("corrected", R.RECIPE_HELP, choices=R.RECIPES)

    def __post_init__(self):
        self.recipe = R.recipe_name(self.recipe)
        validate(self)  # the given values first: a bad one is named before any recipe check
        given = {k: getattr(self, k) for k in R.COURSE}
        for k, v in R.recipe_settings(self.recipe, given).items():
            setattr(self, k, v)
        validate(self)
        if self.schedule == "step" and (self.step_size is None or self.gamma is None):
            raise ConfigError("--schedule step: needs --step-size and --gamma")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("--nesterov: Nesterov momentum needs --momentum above 0")
        if self.model not in VARIANTS:
            raise ConfigError(
                f"--model: {self.model!r} is not a model; choose one of: {', '.join(VARIANTS)}"
            )
        if self.softmax_head and self.model == "wide":
            raise ConfigError(
                "--softmax-head: the course's wide network has no Softmax, so "
                "model 'wide' has no softmax head"
            )
        check_device_name(self.device)

    @property
    def head_softmax(self) -> bool:
        """Whether the network ends in a Softmax (asked for, or the course recipe's)."""
        return R.softmax_head(self.recipe, self.model, self.softmax_head)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From a run's config.json (which also holds data_identity and data_source)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_run_config(run_dir) -> TrainConfig:
    """A run's config.json as a TrainConfig; a damaged or invalid one is a RunError naming it."""
    f = Path(run_dir) / "config.json"
    d = read_json_dict(f, ("model",))
    try:
        return TrainConfig.from_dict(d)
    except (ConfigError, TypeError) as e:
        raise RunError(f"{f}: not a valid run configuration ({e})") from None


# Settings a resumed run may change: where it runs, and how long (more epochs continue it).
# Any other difference from the saved run is refused. data_root may name another copy of
# the same data (its content identity is checked); config.json keeps the original root.
RESUMABLE_CHANGES = ("device", "compile", "eval_batch_size", "data_root", "epochs")


def make_optimizer(model, cfg: TrainConfig, steps_per_epoch: int):
    """SGD and its schedule: StepLR steps once an epoch, the linear schedule once a batch."""
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    if cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    else:
        total = cfg.epochs * steps_per_epoch
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: R.linear_lr_factor(step, total, warmup)
        )
    return opt, sched


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    return math.ceil(n_train / cfg.batch_size)


def loss_fn(out: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    # With a softmax head the model's output is already a softmax, and cross-entropy softmaxes
    # it again: that is the course's behaviour, reproduced on purpose.
    return F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)


def autocast(dev, precision: str):
    """bf16 autocast on `dev` when the run's precision is bf16; a no-op context otherwise."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")


AUG_CHUNK = 16  # batches augmented together: fewer, larger kernel launches


def train_one_epoch(
    model,
    opt,
    x_u8,
    y,
    cfg,
    gen,
    dev,
    rank=0,
    world=1,
    bar=None,
    precision="fp32",
    sched=None,
    trace=None,
):
    """One pass over the training tensors in a seeded random order; returns (loss, acc).

    `sched`, when given, steps after every batch (the linear schedule). `trace`, a dict of
    lists, receives each step's "loss" and "lr" (read once per augmented chunk, so a GPU
    syncs once per AUG_CHUNK steps); the epoch then stops after the first chunk whose loss
    is not finite, and returns a non-finite loss."""
    model.train()
    n = x_u8.shape[0]
    perm = torch.randperm(n, generator=gen).to(dev)
    total_loss = torch.zeros((), device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    seen = 0
    bs = cfg.batch_size
    span = bs * AUG_CHUNK
    augmenter = AUGMENTERS[cfg.augmentation]
    for c0 in range(0, n, span):
        if trace is not None and not all(map(math.isfinite, trace["loss"][-AUG_CHUNK:])):
            return math.nan, int(correct) / max(1, seen)  # diverged: the rest is wasted
        # Each process takes its share of every batch; the effective batch stays bs.
        chunk_idx = perm[c0 : c0 + span]
        # channels_last suits oneDNN on the CPU as well as cuDNN: about 15% faster here.
        xa = augmenter(x_u8[chunk_idx], gen).contiguous(memory_format=torch.channels_last)
        ya = y[chunk_idx]
        step_losses = []
        for s in range(0, chunk_idx.numel(), bs):
            xb, yb = xa[s : s + bs][rank::world], ya[s : s + bs][rank::world]
            with autocast(dev, precision):
                out = model(xb)
            loss = loss_fn(out, yb, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if trace is not None:
                step_losses.append(loss.detach())
                trace["lr"].append(opt.param_groups[0]["lr"])
            total_loss += loss.detach() * yb.numel()
            correct += (out.argmax(1) == yb).sum()
            seen += yb.numel()
            if bar is not None:
                bar.update(yb.numel() * world)
        if trace is not None:
            trace["loss"].extend(torch.stack(step_losses).tolist())
    if trace is not None and not all(map(math.isfinite, trace["loss"][-AUG_CHUNK:])):
        return math.nan, int(correct) / seen
    return float(total_loss) / seen, int(correct) / seen


@torch.no_grad()
def evaluate(model, x_u8, y, dev, batch=1024, gen=None, precision="fp32"):
    """(mean loss, accuracy); without augmentation unless `gen` (the course's validation)."""
    model.eval()
    total, correct = 0.0, 0
    for s in range(0, x_u8.shape[0], batch):
        xb = x_u8[s : s + batch]
        xb = to_input(xb) if gen is None else augment(xb, gen)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(dev, precision):
            out = model(xb)
        yb = y[s : s + batch]
        total += float(loss_fn(out, yb)) * yb.numel()
        correct += int((out.argmax(1) == yb).sum())
    return total / x_u8.shape[0], correct / x_u8.shape[0]


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state()}


def _checkpoint(model, opt, sched, epoch, gen, cfg, best_acc, best_epoch):
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "rng": _rng_state(gen),
        "config": asdict(cfg),
        "arch": cfg.model,
        "softmax_head": cfg.head_softmax,
        "best_val_acc": best_acc,
        "best_epoch": best_epoch,
    }


def load_model_checkpoint(path, model_name: str | None = None, map_location="cpu", run=None):
    """Load best.pt/last.pt into a fresh model; a checkpoint of another model is an error,
    and so (with `run`, its run directory) one that run's config.json does not record."""
    ckpt = load_checkpoint(path, map_location)
    if run is not None:
        check_checkpoint_record(ckpt, Path(run), Path(path))
    arch = ckpt.get("arch")
    if arch not in VARIANTS:
        raise RunError(f"{path}: checkpoint of unknown model {arch!r}")
    if model_name is not None and arch != model_name:
        raise RunError(f"{path}: checkpoint is of model {arch!r}, not {model_name!r}")
    model = build_model(arch, softmax_head=ckpt.get("softmax_head", False))
    load_weights(model, ckpt["model"], f"{path} (model {arch!r})")
    return model, ckpt


def load_weights(model, state: dict, where: str) -> None:
    """load_state_dict, but a mismatch names the first offending key and both shapes."""
    if not isinstance(state, dict):
        raise RunError(f"{where}: the checkpoint's model entry is not a state dict")
    load_fitting(
        model, state, where, RunError, "the checkpoint", "it was saved from another architecture"
    )


METRIC_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")


def _write_metrics(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_KEYS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    atomic_write_json(out / "metrics.json", rows)


def make_split(cfg: TrainConfig, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into data.train_*: stratified, seeded; sizes checked first."""
    n = data.train_y.numel()
    if cfg.n_val >= n:
        raise ConfigError(
            f"--val-size: {cfg.n_val} leaves no training images; {data.source} has {n}"
        )
    tr_idx, val_idx = split_indices(data.train_y, cfg.n_val, cfg.seed)
    if cfg.train_subset:
        if cfg.train_subset > tr_idx.numel():
            raise ConfigError(
                f"--train-subset: {cfg.train_subset} is more than the {tr_idx.numel()} "
                "training images left after the validation split"
            )
        pos = stratified_subset(data.train_y[tr_idx], cfg.train_subset, cfg.seed + 1)
        tr_idx = tr_idx[pos]
    return tr_idx, val_idx


def read_split(out: Path, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's split.json, checked: lists of indices into the n_train training images."""
    f = out / "split.json"
    s = read_json_dict(f, ("train", "val"))
    try:
        tr = torch.tensor(s["train"], dtype=torch.long)
        va = torch.tensor(s["val"], dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RunError(f"{f}: the indices are not lists of integers ({e})") from None
    for name, idx in (("train", tr), ("val", va)):
        if idx.ndim != 1 or idx.numel() == 0 or idx.min() < 0 or idx.max() >= n_train:
            raise RunError(f"{f}: the {name} indices are not positions among {n_train} images")
        if idx.unique().numel() != idx.numel():
            raise RunError(f"{f}: the {name} indices repeat an image; the file was edited")
    both = tr[torch.isin(tr, va)]
    if both.numel():
        raise RunError(
            f"{f}: {both.numel()} image(s) are in both train and val (e.g. index "
            f"{int(both[0])}), so val would measure images the weights were trained on; "
            "the file was edited: restore it, or train the run again"
        )
    return tr, va


def check_nothing_lost(out: Path) -> None:
    """A run resumed without last.pt starts from epoch 1: refused when the run has done
    more (best.pt, or epochs in metrics.json), which starting over would overwrite."""
    rows = read_json(out / "metrics.json") if (out / "metrics.json").exists() else []
    done = len(rows) if isinstance(rows, list) else 0
    if (out / "best.pt").exists() or done:
        raise RunError(
            f"{out / 'last.pt'}: missing, but the run has "
            f"{f'{done} epoch(s) in metrics.json' if done else 'a best.pt'}; resuming would "
            "start again from epoch 1 and replace them. Restore last.pt, or use --overwrite "
            "(or another --out) for a new run"
        )


def _comparable(v):
    """A setting's value as JSON has it (tuples as lists), so that records compare."""
    return json.loads(json.dumps(v))


def check_checkpoint_record(ck: dict, out: Path, path: Path) -> None:
    """Raise RunError unless the checkpoint at `path` was saved by the run that out's
    config.json records: every setting its own config holds (those a resume may change
    aside) equal to config.json's. A checkpoint of another run (another seed: another
    split) or a hand-edited config.json is named, never trained on or measured."""
    saved = ck.get("config")
    if not isinstance(saved, dict):
        raise RunError(f"{path}: records no config, so its run cannot be checked")
    record = read_json_dict(out / "config.json")
    diffs = [
        f"{f.name} {_comparable(record.get(f.name))!r} in config.json, "
        f"{_comparable(saved[f.name])!r} in {path.name}"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE_CHANGES
        and f.name in saved
        and _comparable(record.get(f.name)) != _comparable(saved[f.name])
    ]
    if diffs:
        raise RunError(
            f"{path} was not saved by the run {out / 'config.json'} records: "
            f"{'; '.join(diffs[:3])}. Either file was edited or copied from another run: "
            "restore config.json (or the checkpoint), or train the run again"
        )


def test_positions(cfg: TrainConfig, data) -> torch.Tensor:
    n = data.test_y.numel()
    if not cfg.test_subset:
        return torch.arange(n)
    if cfg.test_subset > n:
        raise ConfigError(f"--test-subset: {cfg.test_subset} is more than the {n} test images")
    return stratified_subset(data.test_y, cfg.test_subset, cfg.seed)


def _settings_changed(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """'--flag NEW (run: OLD)' for each setting a resumed run cannot take over."""
    out = []
    for f in fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES:
            continue
        a, b = getattr(saved, f.name), getattr(cfg, f.name)
        if a != b:
            out.append(f"{flag_name(f)} {b} (the run has {a})")
    return out


@dataclass
class _Plan:
    """What train() will do with the run directory, decided before any file is touched."""

    cfg: TrainConfig
    resume_from: dict | None = None  # last.pt's content
    saved: dict | None = None  # the run's config.json
    replace: bool = False  # move the old run aside (--overwrite)
    extend: bool = False  # a finished run continued to more epochs


def _plan(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool, dev) -> _Plan | dict:
    """Check the run directory against the request; returns a plan, or the finished
    run's summary when there is nothing to do. Raises RunError before touching anything."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    has = out.is_dir() and any(out.iterdir())
    cfg_file = out / "config.json"
    if not has:
        return _Plan(cfg)
    if not cfg_file.exists():
        raise RunError(
            f"{out} is not empty and holds no config.json, so it is not a dnnlab run "
            "directory; choose another --out"
        )
    if overwrite and not resume:
        return _Plan(cfg, replace=True)  # a damaged run can be replaced too
    saved = read_run_config(out)
    saved_d = read_json_dict(cfg_file)
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
    if saved.model != cfg.model:
        raise RunError(f"{out} is a run of {saved.model!r}, not {cfg.model!r}")
    changed = _settings_changed(saved, cfg)
    if changed:
        raise RunError(
            f"{out}: a resumed run keeps its settings, but {'; '.join(changed)}. Resume "
            "without them, or use --overwrite or another --out"
        )
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
    plan = _Plan(cfg, resume_from=ck, saved=saved_d)
    if done.exists():
        summary = read_json_dict(done, ("epochs",))
        if summary["epochs"] == cfg.epochs and completed == cfg.epochs:
            return summary
        plan.extend = True  # honoured: more epochs continue the finished run
    return plan


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train (or resume) one run; returns the summary dict.

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
    check_outputs_spare_inputs([cfg.data_root or default_root()], out, owned=True)
    rank, world = init_distributed(cfg.device)
    with job_lock(out, rank, world):
        return _train_locked(cfg, out, resume, overwrite, progress, rank, world)


def _train_locked(
    cfg: TrainConfig, out: Path, resume: bool, overwrite: bool, progress: bool, rank, world
) -> dict:
    """train() once the run directory's lock is held."""
    dev = check_device(cfg.device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", torch.cuda.current_device())
    if rank == 0:
        recover_replaced(out)
    if world > 1:
        torch.distributed.barrier()
    plan = _plan(cfg, out, resume, overwrite, dev)
    if isinstance(plan, dict):
        return plan  # finished, nothing asked beyond it
    data = load_cifar10(cfg.data_root)
    tr_idx, val_idx, te = _check_data(cfg, out, plan, data)
    rows = _resumed_rows(out, plan.resume_from)
    precision, why = training_precision(cfg.bf16, dev)
    if rank == 0:
        print(f"[{cfg.model}] training in {precision}: {why}", flush=True)

    # Every input is good: only now change the run directory.
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    with put_back_on_failure(old, out, rank == 0 and plan.replace):
        if rank == 0:
            idx = {"train": tr_idx, "val": val_idx}
            _prepare_run_dir(cfg, out, plan, data, idx, old, (precision, why))
        if world > 1:
            torch.distributed.barrier()
        split = {
            "train": (data.train_x[tr_idx].to(dev), data.train_y[tr_idx].to(dev)),
            "val": (data.train_x[val_idx].to(dev), data.train_y[val_idx].to(dev)),
            "test": (data.test_x[te].to(dev), data.test_y[te].to(dev)),
        }
        n_train = split["train"][1].numel()
        st = _start_training(cfg, out, dev, plan.resume_from, n_train, precision)
        net = _wrap_model(st.model, cfg, dev, world)
        for epoch in range(st.start, cfg.epochs):
            row = _train_epoch(st, net, cfg, split, dev, epoch, rank, world, progress, out)
            rows.append(row)
            keep = _track_best(st, cfg, row)
            if rank == 0:
                _save_epoch(st, cfg, out, rows, keep, old if plan.replace else None)
                _print_epoch(cfg, row)

    st.model.load_state_dict(st.best_state)
    summary = _summary(st, cfg, split, dev, rows, data)
    if rank == 0:
        _finish_run(cfg, out, rows, summary)
    return summary


@contextmanager
def put_back_on_failure(old: Path, out: Path, replacing: bool) -> Iterator[None]:
    """While `replacing` (an --overwrite, on rank 0): whatever stops the block (an error,
    Ctrl-C) before the new run's first epoch is saved puts the replaced run back."""
    try:
        yield
    except BaseException:
        if replacing:
            put_back(old, out)
        raise


def put_back(old: Path, out: Path) -> None:
    """An --overwrite stopped before its new run saved an epoch: the replaced run, kept in
    `old`, goes back into `out` (the new run has no epoch to lose), and the user is told."""
    if not old.is_dir():
        return  # already deleted: the new run has its first epoch
    if (out / "last.pt").exists():  # the new run has an epoch: old's deletion was cut short
        shutil.rmtree(old, ignore_errors=True)
        return
    if out.exists():
        shutil.rmtree(out)
    old.rename(out)
    print(
        f"dnnlab train: an --overwrite stopped before its new run's first epoch was saved: "
        f"the run it was replacing is back in {out}",
        file=sys.stderr,
        flush=True,
    )


def left_replaced(out) -> list[Path]:
    """The `.OUT.PID.old` folders that a killed `train --overwrite` of `out` left (their
    process gone: nothing else will ever delete or restore them)."""
    out = Path(out)
    found = []
    for old in sorted(out.parent.glob(f".{out.name}.*.old")):
        pid = old.name[len(out.name) + 2 : -len(".old")]
        if old.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            found.append(old)
    return found


def recover_replaced(out) -> None:
    """Put back each replaced run a killed `train --overwrite` left. Called under the run's
    lock, so no live process is replacing it."""
    for old in left_replaced(out):
        put_back(old, Path(out))


def _check_data(cfg: TrainConfig, out: Path, plan: _Plan, data):
    """(train, val, test) positions: a resumed run's data identity and split.json are
    checked against `data`; a new run draws its split."""
    if plan.saved is not None:
        check_run_data(out, data)
    if plan.saved is not None and (out / "split.json").exists():
        tr_idx, val_idx = read_split(out, data.train_y.numel())
    else:
        tr_idx, val_idx = make_split(cfg, data)
    return tr_idx, val_idx, test_positions(cfg, data)


def _resumed_rows(out: Path, ck: dict | None) -> list[dict]:
    """The metrics rows of the epochs last.pt completed (none for a new run)."""
    if ck is None:
        return []
    rows = read_json(out / "metrics.json")
    if not isinstance(rows, list) or len(rows) < ck["epoch"]:
        raise RunError(
            f"{out / 'metrics.json'}: holds fewer epochs than last.pt's {ck['epoch']}; "
            "the run is damaged"
        )
    return rows[: ck["epoch"]]


def _prepare_run_dir(
    cfg: TrainConfig, out: Path, plan: _Plan, data, idx: dict, old: Path, precision: tuple
):
    """Move a replaced run aside to `old`, reopen a finished one, and write config.json and
    (for a new run) split.json {train, val: indices}."""
    if plan.replace:
        out.rename(old)
        print(
            f"[{cfg.model}] the run being replaced is kept in {old} until the new run's "
            "first epoch is saved",
            flush=True,
        )
    if plan.extend:
        (out / "summary.json").unlink()
    out.mkdir(parents=True, exist_ok=True)
    record = {**asdict(cfg), "precision": precision[0], "precision_reason": precision[1]}
    if plan.saved is not None:  # the run keeps the data root it was trained from
        record["data_root"] = plan.saved.get("data_root")
    atomic_write_json(out / "config.json", {**record, **data_record(data)})
    if not (out / "split.json").exists():
        split_record = {"train": idx["train"].tolist(), "val": idx["val"].tolist()}
        atomic_write_json(out / "split.json", split_record)


@dataclass
class _Training:
    """What changes from epoch to epoch, and what a resumed run restores."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    precision: str  # "bf16" or "fp32": what training and evaluation compute in
    start: int = 0  # epochs completed
    best_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None  # the weights the test uses


def _start_training(
    cfg: TrainConfig, out: Path, dev, ck: dict | None, n_train: int, precision: str
):
    """A seeded model, optimizer and scheduler; with `ck` (last.pt), their saved states,
    the RNG states and best.pt's weights."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg.model, softmax_head=cfg.head_softmax).to(dev)
    model = model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch(n_train, cfg))
    st = _Training(model, opt, sched, gen, precision)
    if ck is not None:
        _restore(ck, out / "last.pt", model, opt, sched, gen)
        st.start, st.best_acc, st.best_epoch = ck["epoch"], ck["best_val_acc"], ck["best_epoch"]
        best_path = out / "best.pt"
        if best_path.exists():
            best = load_checkpoint(best_path, dev)
            check_checkpoint_record(best, out, best_path)
            st.best_state = best["model"]
    return st


def _wrap_model(model, cfg: TrainConfig, dev, world: int):
    """The module the epochs run: DDP across processes, compiled if asked."""
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    if cfg.compile:
        # CUDA graphs ("reduce-overhead") remove the per-kernel launch cost that dominates a
        # network this small; on the CPU plain compilation is what helps.
        net = torch.compile(net, mode="reduce-overhead" if dev.type == "cuda" else None)
    return net


DIVERGENCE = "divergence.json"


def write_divergence(out: Path, cfg: TrainConfig, epoch: int, trace: dict) -> Path:
    """divergence.json (each step's loss and learning rate in the epoch that diverged, the
    first non-finite step named) and divergence.png; returns the figure's path."""
    from dnnlab.utils.plots import plot_divergence

    losses = trace["loss"]
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    record = {
        "model": cfg.model,
        "recipe": cfg.recipe,
        "epoch": epoch + 1,
        "first_non_finite_step": bad,
        "steps": [
            {"step": i, "loss": v if math.isfinite(v) else str(v), "lr": lr}
            for i, (v, lr) in enumerate(zip(losses, trace["lr"], strict=False))
        ],
    }
    atomic_write_json(out / DIVERGENCE, record)
    path = out / "divergence.png"
    plot_divergence(losses, trace["lr"], bad, path, f"{cfg.model}, epoch {epoch + 1}")
    return path


def _train_epoch(
    st: _Training, net, cfg: TrainConfig, split, dev, epoch, rank, world, progress, out
):
    """Train one epoch, step the schedule and validate; returns its metrics row."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    lr = st.opt.param_groups[0]["lr"]
    x_tr, y_tr = split["train"]
    bar = tqdm(
        total=x_tr.shape[0],
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="img",
        leave=False,
        disable=not progress or rank != 0,
    )
    per_step = cfg.schedule == "linear"
    # One process: each step's loss is traced and a divergence stops the epoch. Several:
    # not traced (a rank stopping alone would leave the others waiting at an all-reduce).
    trace = {"loss": [], "lr": []} if world == 1 else None
    tr_loss, tr_acc = train_one_epoch(
        net,
        st.opt,
        x_tr,
        y_tr,
        cfg,
        st.gen,
        dev,
        rank,
        world,
        bar,
        st.precision,
        st.sched if per_step else None,
        trace,
    )
    bar.close()
    if not math.isfinite(tr_loss):
        # A diverged run has nothing worth keeping: stop before this epoch is saved, but
        # keep its loss curve (divergence.json/.png), the evidence of what happened.
        where = ""
        if trace is not None:
            where = "; its loss curve: " + str(write_divergence(out, cfg, epoch, trace))
        raise RunError(
            f"epoch {epoch + 1}: the training loss is {tr_loss} (the run diverged); the "
            f"checkpoints stop at epoch {epoch}{where}. Lower --lr ({cfg.lr}) or "
            f"--weight-decay ({cfg.weight_decay}) and start again with --overwrite"
        )
    if not per_step:
        st.sched.step()
    val_gen = R.val_generator(cfg.recipe, cfg.seed, epoch)
    val_loss, val_acc = evaluate(
        net, *split["val"], dev, cfg.eval_batch_size, val_gen, st.precision
    )
    secs = time.perf_counter() - t0
    return dict(
        epoch=epoch + 1,
        lr=lr,
        train_loss=tr_loss,
        train_acc=tr_acc,
        val_loss=val_loss,
        val_acc=val_acc,
        seconds=secs,
    )


def _track_best(st: _Training, cfg: TrainConfig, row: dict) -> bool:
    """Update the best validation accuracy; returns whether best.pt gets this epoch's weights."""
    improved = row["val_acc"] > st.best_acc
    if improved:
        st.best_acc, st.best_epoch = row["val_acc"], row["epoch"]
    keep = improved or R.tests_last_weights(cfg.recipe)
    if keep:
        # A copy: the live state dict would change under us (the course code's bug, which
        # the course recipe reproduces by keeping the last epoch's weights instead).
        st.best_state = copy.deepcopy(st.model.state_dict())
    return keep


def _save_epoch(st: _Training, cfg, out: Path, rows: list[dict], keep: bool, old: Path | None):
    """best.pt (if `keep`), metrics and last.pt; then the replaced run `old` is deleted."""
    epoch = rows[-1]["epoch"]
    ck = _checkpoint(st.model, st.opt, st.sched, epoch, st.gen, cfg, st.best_acc, st.best_epoch)
    if keep:
        atomic_torch_save({**ck, "model": st.best_state}, out / "best.pt")
    _write_metrics(out, rows)
    atomic_torch_save(ck, out / "last.pt")  # last: only now is the epoch complete
    if old is not None and old.exists():
        shutil.rmtree(old)  # the new run has its first checkpoint


def _print_epoch(cfg: TrainConfig, row: dict) -> None:
    print(
        f"[{cfg.model}] epoch {row['epoch']:>3}/{cfg.epochs}  lr {row['lr']:.4g}  "
        f"train {row['train_loss']:.4f}/{row['train_acc']:.4f}  "
        f"val {row['val_loss']:.4f}/{row['val_acc']:.4f}  "
        f"{row['seconds']:.1f}s",
        flush=True,
    )


def _summary(st: _Training, cfg: TrainConfig, split, dev, rows: list[dict], data) -> dict:
    """Test the weights in `st.model` and describe the run (summary.json's content)."""
    test_loss, test_acc = evaluate(
        st.model, *split["test"], dev, cfg.eval_batch_size, precision=st.precision
    )
    return {
        "model": cfg.model,
        "recipe": cfg.recipe,
        "best_val_acc": st.best_acc,
        "best_epoch": st.best_epoch,
        "weights_epoch": cfg.epochs if R.tests_last_weights(cfg.recipe) else st.best_epoch,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "params": count_params(st.model),
        "head": "softmax (the course's double softmax)" if cfg.head_softmax else "logits",
        "precision": st.precision,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "epochs": cfg.epochs,
        "train_images": int(split["train"][0].shape[0]),
        "test_images": int(split["test"][1].numel()),
        "seconds": sum(r["seconds"] for r in rows),
        "data_identity": data.identity,
    }


def _finish_run(cfg: TrainConfig, out: Path, rows: list[dict], summary: dict) -> None:
    """curves.png and summary.json (written last: it marks the run finished)."""
    plot_train_curves(rows, out / "curves.png", cfg.model)
    atomic_write_json(out / "summary.json", summary)
    which = (
        "the last epoch's weights (course recipe)"
        if R.tests_last_weights(cfg.recipe)
        else "the best weights"
    )
    print(
        f"[{cfg.model}] best val {summary['best_val_acc']:.4f} (epoch {summary['best_epoch']}); "
        f"test {summary['test_acc']:.4f} with {which}",
        flush=True,
    )


def _restore(ck: dict, last: Path, model, opt, sched, gen) -> None:
    """Load last.pt's states; a checkpoint that does not fit is a RunError naming it."""
    load_weights(model, ck["model"], f"{last} (model {ck.get('arch')!r})")
    try:
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        # RNG states are CPU byte tensors, whatever map_location moved the rest to.
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        gen.set_state(ck["rng"]["gen"].cpu())
        int(ck["epoch"]), float(ck["best_val_acc"]), int(ck["best_epoch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise RunError(f"{last}: damaged checkpoint ({type(e).__name__}: {e})") from None
