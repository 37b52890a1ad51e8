"""`dnnlab train`: one CIFAR-10 run, read top to bottom.

    dnnlab train --model bn --out runs/bn [--epochs 100 --batch-size 256 --lr 0.01 ...]

`train()` takes these steps, in this order, like torchvision's reference train.py:
1. Checks, before anything is written: the flags against each other, the output folder (the
   write gate: never a folder the tool did not make, never one holding the data), the run
   directory against the request (rundir.plan_run: new, resumed, extended, replaced or
   finished; a resumed run's settings, checkpoints, data identity and split), the data.
2. The model, its optimizer and schedule, seeded; a resumed run's states restored from
   last.pt and its kept weights from best.pt (in memory: one that does not fit is refused
   before anything is written).
3. The run directory: a replaced run moved aside, config.json and split.json written.
4. The epochs: a seeded pass over the augmented training tensors (train_one_epoch), the
   schedule's step, validation (evaluate), the best weights kept, the epoch saved (best.pt if
   kept, metrics, then last.pt: only then is the epoch complete) and its line printed.
5. The test of the kept weights, then curves.png, test_predictions.json and summary.json
   (last: it marks the run finished).

The run directory holds config.json, split.json (train/val indices), metrics.csv +
metrics.json, best.pt + last.pt (model, optimizer, scheduler, epoch, RNG states, the run's
settings), curves.png, test_predictions.json and summary.json. The data set lives on the
training device as uint8; batches are augmented there. The settings are config.TrainConfig's,
the recipes' values recipe.py's; the run directory's records and checks are rundir.py's.
Below train() are the parts its loop calls: the optimizer, one epoch's SGD pass, evaluation,
restoring and saving an epoch, and a diverged epoch's record.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dnnlab.cifar import recipe as R
from dnnlab.cifar.augment import AUGMENTERS, augment, to_input
from dnnlab.cifar.config import TrainConfig, run_name
from dnnlab.cifar.data import default_root, load_cifar10, make_split, test_positions
from dnnlab.cifar.models import build_model, count_params
from dnnlab.cifar.recipe import check_recipe_flag
from dnnlab.cifar.rundir import (
    RunError,
    check_resumed_settings,
    check_run_data,
    load_model_checkpoint,
    load_weights,
    plan_run,
    prepare_run_dir,
    put_back_left_replaced,
    put_back_on_failure,
    read_run_config,
    read_split,
    recover_replaced,
    resumed_rows,
    write_metrics,
)
from dnnlab.errors import ConfigError
from dnnlab.settings import given_flags
from dnnlab.utils.atomic import atomic_torch_save, atomic_write_json
from dnnlab.utils.device import check_device
from dnnlab.utils.distributed import init_distributed
from dnnlab.utils.lock import job_lock
from dnnlab.utils.outputs import check_output, remove_ours
from dnnlab.utils.plots import plot_divergence, plot_train_curves
from dnnlab.utils.precision import training_precision

# What other modules import from here besides train(): the settings and the run's records.
__all__ = [
    "RunError",
    "TrainConfig",
    "check_run_data",
    "evaluate",
    "load_model_checkpoint",
    "read_run_config",
    "read_split",
    "requested_config",
    "train",
    "train_command",
    "train_one_epoch",
]

PREDICTIONS = "test_predictions.json"
DIVERGENCE = "divergence.json"


def train_command(
    given: dict,
    out,
    resume: bool,
    overwrite: bool,
    download: bool,
    progress: bool,
    stop_after: int | None = None,
) -> None:
    """`dnnlab train`: the settings its flags ask for (`given`: only those on the command
    line, parsed by dnnlab.cli), then the run."""
    cfg = requested_config(given, out, resume and not overwrite)
    if stop_after is not None and stop_after >= cfg.epochs:  # train() would finish the run
        raise ConfigError(
            f"--stop-after {stop_after}: not below the run's {cfg.epochs} epochs, so it would stop "
            "nothing; give fewer, or leave it out"
        )
    train(
        cfg,
        out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        stop_after=stop_after,
        download=download,
    )


def requested_config(given: dict, out, resume: bool) -> TrainConfig:
    """The given settings over the defaults, or, with resume on an existing run in `out`,
    over the run's saved settings. Every given setting is checked before anything else;
    only those given are compared with the run's and named (rundir.check_resumed_settings).
    A replaced run that a killed --overwrite left is put back first, so that the settings
    read are the run's own."""
    check_recipe_flag(given)
    cfg = TrainConfig(**given)
    if resume:
        put_back_left_replaced(out)
    if not (resume and (Path(out) / "config.json").exists()):
        return cfg
    base = read_run_config(out)
    check_resumed_settings(Path(out), base, cfg, given)
    names = [f.name for f in fields(TrainConfig)]
    return TrainConfig(**{**{k: getattr(base, k) for k in names}, **given})


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    download: bool = False,
    data=None,
) -> dict:
    """Train (or resume) one run; returns the summary dict.

    With `stop_after` K below the run's epochs, only the schedule's first K epochs are run
    (the learning rate follows the full schedule) and the run is left unfinished, as an
    interrupted one: `--resume` continues it (K at or above them: the whole run). Returns
    {"model", "epochs", "stopped_after", "metrics"} then, the metrics being the rows of the
    epochs done. `download` fetches
    torchvision's CIFAR-10 into cfg.data_root once the checks pass; `data`, when given, is
    what `load_cifar10(cfg.data_root)` returned (a caller that loaded it already).

    Every input (settings, run directory, checkpoints, data, split) is checked before
    anything is written or replaced. With --overwrite the old run is moved to a hidden
    sibling `.OUT.PID.old` and deleted once the new run's first epoch is saved. The run
    directory is never one holding the data, and one process at a time writes it (its
    lock, held by rank 0; a refusal ends every rank). A replacement stopped before its
    first epoch is saved (an error, Ctrl-C, or a kill noticed by the next run) puts the
    replaced run back."""
    out = Path(out).expanduser()  # as the write gate takes it
    tag = f"[{run_name(cfg.model, cfg.seed)}]"  # the log's name of the run, as a study's
    # 1. Checks.
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one")
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after: {stop_after}; give a number of epochs, at least 1")
    put_back_left_replaced(out)  # before the gate judges the folder it left half made
    check_output(out, "--out", "train", inputs=[cfg.data_root or default_root()], replace=True)
    rank, world = init_distributed(cfg.device)
    with job_lock(out, rank, world):
        dev = check_device(cfg.device)
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", torch.cuda.current_device())  # this process's card
        if rank == 0:
            recover_replaced(out)  # a run an interrupted replacement set aside goes back
        if world > 1:
            torch.distributed.barrier()
        plan = plan_run(cfg, out, resume, overwrite, dev)
        if isinstance(plan, dict):  # finished, nothing asked beyond it
            if rank == 0:
                accs = "".join(
                    f", {label} {plan[k]:.4f}"
                    for k, label in (("best_val_acc", "best val"), ("test_acc", "test"))
                    if isinstance(plan.get(k), float)
                )
                print(
                    f"{tag} {out} is finished already ({plan['epochs']} epochs{accs}): "
                    "nothing to train; --epochs N continues it to N epochs",
                    flush=True,
                )
            return plan
        done = plan.resume_from["epoch"] if plan.resume_from is not None else 0
        if stop_after is not None and stop_after <= done:  # nothing to train: touch nothing
            if rank == 0:
                print(f"{tag} {out} has completed {done} epochs already", flush=True)
            return {
                "model": cfg.model,
                "epochs": cfg.epochs,
                "stopped_after": done,
                "metrics": resumed_rows(out, plan.resume_from),
            }
        if data is None:
            data = load_cifar10(cfg.data_root, download=download)
        if plan.saved is not None:  # a resumed run's indices meet only its own images
            check_run_data(out, data)
        if plan.saved is not None and (out / "split.json").exists():
            tr_idx, val_idx = read_split(out, data, cfg)
        else:
            tr_idx, val_idx = make_split(data, cfg.n_val, cfg.train_subset, cfg.seed)
        te_idx = test_positions(data, cfg.test_subset, cfg.seed)
        rows = resumed_rows(out, plan.resume_from)
        precision, why = training_precision(cfg.bf16, dev)
        if rank == 0:
            print(f"{tag} training in {precision}: {why}", flush=True)

        # 2. Model, optimizer and schedule, seeded; a resumed run's states, checked here,
        # in memory: a checkpoint that does not fit is refused before anything is written.
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        head = R.softmax_head(cfg.recipe, cfg.model, cfg.softmax_head)
        model = build_model(cfg.model, softmax_head=head).to(dev)
        model = model.to(memory_format=torch.channels_last)
        n_train = tr_idx.numel()
        opt, sched = make_optimizer(model, cfg, steps_per_epoch(n_train, cfg.batch_size))
        start, best_acc, best_epoch, best_state = 0, -1.0, 0, None  # epochs completed
        if plan.resume_from is not None:
            ck = plan.resume_from
            if plan.best_from is not None:  # the kept weights must fit the model too
                best_state = plan.best_from["model"]
                load_weights(model, best_state, f"{out / 'best.pt'} (model {cfg.model!r})")
            restore_states(ck, out / "last.pt", model, opt, sched, gen)
            start, best_acc, best_epoch = ck["epoch"], ck["best_val_acc"], ck["best_epoch"]

        # 3. Every input is good: only now change the run directory.
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        with put_back_on_failure(old, out, rank == 0 and plan.replace):
            if rank == 0:
                split_idx = {"train": tr_idx, "val": val_idx}
                prepare_run_dir(cfg, out, plan, data, split_idx, old, (precision, why))
            if world > 1:
                torch.distributed.barrier()
            split = {
                "train": (data.train_x[tr_idx].to(dev), data.train_y[tr_idx].to(dev)),
                "val": (data.train_x[val_idx].to(dev), data.train_y[val_idx].to(dev)),
                "test": (data.test_x[te_idx].to(dev), data.test_y[te_idx].to(dev)),
            }
            net = model
            if world > 1:
                net = torch.nn.parallel.DistributedDataParallel(model)
            if cfg.compile:
                # CUDA graphs ("reduce-overhead") remove the per-kernel launch cost that
                # dominates a network this small; on the CPU plain compilation is what helps.
                net = torch.compile(net, mode="reduce-overhead" if dev.type == "cuda" else None)

            # 4. The epochs.
            keep_last = R.tests_last_weights(cfg.recipe)
            per_step = cfg.schedule == "linear"  # the linear schedule steps every batch
            end = cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)
            for epoch in range(start, end):
                t0 = time.perf_counter()
                lr = opt.param_groups[0]["lr"]
                bar = tqdm(
                    total=n_train,
                    desc=f"epoch {epoch + 1}/{cfg.epochs}",
                    unit="img",
                    leave=False,
                    disable=not progress or rank != 0,
                )
                # One process: each step's loss is traced and a divergence stops the epoch.
                # Several: not traced (a rank stopping alone would leave the others waiting).
                trace = {"loss": [], "lr": []} if world == 1 else None
                tr_loss, tr_acc = train_one_epoch(
                    net,
                    opt,
                    *split["train"],
                    gen,
                    dev,
                    batch_size=cfg.batch_size,
                    augmentation=cfg.augmentation,
                    label_smoothing=cfg.label_smoothing,
                    rank=rank,
                    world=world,
                    bar=bar,
                    precision=precision,
                    sched=sched if per_step else None,
                    trace=trace,
                    grad_clip=cfg.grad_clip,
                )
                bar.close()
                if not math.isfinite(tr_loss):
                    stop_diverged(tr_loss, trace, out, cfg, epoch)
                if not per_step:
                    sched.step()
                val_gen = R.val_generator(cfg.recipe, cfg.seed, epoch)
                val_loss, val_acc = evaluate(
                    net, *split["val"], dev, cfg.eval_batch_size, val_gen, precision
                )
                if not math.isfinite(val_loss):  # finite training loss, a model giving NaN
                    stop_diverged(val_loss, trace, out, cfg, epoch, "validation")
                rows.append(
                    {
                        "epoch": epoch + 1,
                        "lr": lr,
                        "train_loss": tr_loss,
                        "train_acc": tr_acc,
                        "val_loss": val_loss,
                        "val_acc": val_acc,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                improved = val_acc > best_acc
                if improved:
                    best_acc, best_epoch = val_acc, epoch + 1
                keep = improved or keep_last  # the course recipe tests the last weights
                if keep:
                    # A copy: the live state dict would change under us (the course code's
                    # bug, which the course recipe reproduces by keeping the last weights).
                    best_state = copy.deepcopy(model.state_dict())
                if rank == 0:
                    ck = {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "epoch": epoch + 1,
                        "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state()},
                        "config": asdict(cfg),
                        "arch": cfg.model,
                        "softmax_head": head,
                        "best_val_acc": best_acc,
                        "best_epoch": best_epoch,
                    }
                    save_epoch(out, ck, best_state if keep else None, rows)
                    if plan.replace and old.exists():
                        remove_ours(old, "train")  # the new run has its first checkpoint
                    print_epoch(cfg, rows[-1])
        if end < cfg.epochs:
            return {"model": cfg.model, "epochs": cfg.epochs, "stopped_after": end, "metrics": rows}

        # 5. The test of the kept weights (best.pt's), and the run's summary.
        model.load_state_dict(best_state)
        test_loss, test_acc, preds = evaluate(
            model, *split["test"], dev, cfg.eval_batch_size, precision=precision, predictions=True
        )
        summary = {
            "model": cfg.model,
            "recipe": cfg.recipe,
            "best_val_acc": best_acc,
            "best_epoch": best_epoch,
            "weights_epoch": cfg.epochs if keep_last else best_epoch,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "params": count_params(model),
            "head": "softmax (the course's double softmax)" if head else "logits",
            "precision": precision,
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "epochs": cfg.epochs,
            "train_images": n_train,
            "test_images": int(split["test"][1].numel()),
            "seconds": sum(r["seconds"] for r in rows),
            "data_identity": data.identity,
        }
        if rank != 0:
            return summary
        plot_train_curves(rows, out / "curves.png", cfg.model)
        # Each test image's position among the test set, label and predicted class: what
        # paired comparisons between runs need.
        record = {
            "positions": te_idx.tolist(),
            "labels": split["test"][1].cpu().tolist(),
            "predictions": preds.tolist(),
        }
        atomic_write_json(out / PREDICTIONS, record, indent=None)
        atomic_write_json(out / "summary.json", summary)
        which = "the last epoch's weights (course recipe)" if keep_last else "the best weights"
        print(
            f"{tag} best val {best_acc:.4f} (epoch {best_epoch}); test {test_acc:.4f} with {which}",
            flush=True,
        )
        return summary


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


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)  # the last batch may be smaller


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
    gen,
    dev,
    *,
    batch_size: int,
    augmentation: str,
    label_smoothing: float = 0.0,
    rank=0,
    world=1,
    bar=None,
    precision="fp32",
    sched=None,
    trace=None,
    grad_clip=None,
):
    """One pass over the training tensors in a seeded random order, `batch_size` images a
    step, augmented by AUGMENTERS[augmentation]; returns (loss, acc).

    `sched`, when given, steps after every batch (the linear schedule); `grad_clip` (None:
    off) clips each step's gradients' global L2 norm first. `trace`, a dict of lists,
    receives each step's "loss" and the "lr" that step ran with (the losses read once per
    augmented chunk, so a GPU syncs once per AUG_CHUNK steps); the epoch then stops after
    the first chunk whose loss is not finite, and returns a non-finite loss."""
    model.train()
    n = x_u8.shape[0]
    perm = torch.randperm(n, generator=gen).to(dev)
    total_loss = torch.zeros((), device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    seen = 0
    bs = batch_size
    span = bs * AUG_CHUNK
    augmenter = AUGMENTERS[augmentation]
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
            if trace is not None:  # before the step: the scheduler steps inside it
                trace["lr"].append(opt.param_groups[0]["lr"])
            with autocast(dev, precision):
                out = model(xb)
            loss = loss_fn(out, yb, label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            if trace is not None:
                step_losses.append(loss.detach())
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
def evaluate(model, x_u8, y, dev, batch=1024, gen=None, precision="fp32", predictions=False):
    """(mean loss, accuracy), and with `predictions` each image's predicted class (a CPU
    int64 tensor) third; without augmentation unless `gen` (the course's validation)."""
    model.eval()
    total, correct, preds = 0.0, 0, []
    for s in range(0, x_u8.shape[0], batch):
        xb = x_u8[s : s + batch]
        xb = to_input(xb) if gen is None else augment(xb, gen)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(dev, precision):
            out = model(xb)
        yb = y[s : s + batch]
        total += float(loss_fn(out, yb)) * yb.numel()
        correct += int((out.argmax(1) == yb).sum())
        if predictions:
            preds.append(out.argmax(1).cpu())
    loss, acc = total / x_u8.shape[0], correct / x_u8.shape[0]
    return (loss, acc, torch.cat(preds)) if predictions else (loss, acc)


def restore_states(ck: dict, last: Path, model, opt, sched, gen) -> None:
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


def save_epoch(out: Path, ck: dict, kept: dict | None, rows: list[dict]) -> None:
    """Save a finished epoch: best.pt (the checkpoint with the `kept` weights) when an epoch
    is kept, the metrics, then last.pt: only once last.pt is written is the epoch complete."""
    if kept is not None:
        atomic_torch_save({**ck, "model": kept}, out / "best.pt")
    write_metrics(out, rows)
    atomic_torch_save(ck, out / "last.pt")


def print_epoch(cfg: TrainConfig, row: dict) -> None:
    print(
        f"[{run_name(cfg.model, cfg.seed)}]"
        f" epoch {row['epoch']:>3}/{cfg.epochs}  lr {row['lr']:.4g}  "
        f"train {row['train_loss']:.4f}/{row['train_acc']:.4f}  "
        f"val {row['val_loss']:.4f}/{row['val_acc']:.4f}  "
        f"{row['seconds']:.1f}s",
        flush=True,
    )


def write_divergence(out: Path, cfg: TrainConfig, epoch: int, trace: dict) -> Path:
    """divergence.json (each step's loss and learning rate in the epoch that diverged, the
    first non-finite step named) and divergence.png; returns the figure's path."""
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


def stop_diverged(
    loss: float, trace: dict | None, out: Path, cfg: TrainConfig, epoch: int, which="training"
):
    """A diverged run has nothing worth keeping: stop before this epoch is saved, but keep
    its loss curve (divergence.json/.png), the evidence of what happened."""
    where = ""
    if trace is not None:
        where = "; its loss curve: " + str(write_divergence(out, cfg, epoch, trace))
    raise RunError(
        f"epoch {epoch + 1}: the {which} loss is {loss} (the run diverged); the "
        f"checkpoints stop at epoch {epoch}{where}. Lower --lr ({cfg.lr}) or "
        f"--weight-decay ({cfg.weight_decay}) and start again with --overwrite"
    )


def main(args) -> int:
    """`dnnlab train`, from its parsed flags (only those given are taken: a resumed run keeps
    its own values for the rest)."""
    train_command(
        given_flags(args, TrainConfig),
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        download=args.download,
        progress=sys.stderr.isatty(),
        stop_after=args.stop_after,
    )
    return 0
