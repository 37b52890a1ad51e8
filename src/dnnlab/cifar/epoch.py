"""The epochs of one run: SGD passes over the training tensors and evaluation (under the
run's precision), the state they change and a resumed run restores, each epoch trained,
validated and saved, a diverged epoch's record, and the final test and summary."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dnnlab.cifar import recipe as R
from dnnlab.cifar.augment import AUGMENTERS, augment, to_input
from dnnlab.cifar.config import TrainConfig
from dnnlab.cifar.models import build_model, count_params
from dnnlab.cifar.rundir import (
    RunError,
    check_checkpoint_record,
    load_checkpoint,
    load_weights,
    write_metrics,
)
from dnnlab.utils.atomic import atomic_torch_save, atomic_write_json
from dnnlab.utils.outputs import remove_ours
from dnnlab.utils.plots import plot_divergence, plot_train_curves


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
    return math.ceil(n_train / batch_size)


def loss_fn(out: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    # With a softmax head the model's output is already a softmax, and cross-entropy softmaxes
    # it again: that is the course's behaviour, reproduced on purpose.
    return F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)


def autocast(dev, precision: str):
    """bf16 autocast on `dev` when the run's precision is bf16; a no-op context otherwise."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")


AUG_CHUNK = 16  # batches augmented together: fewer, larger kernel launches


def _sgd_step(model, opt, sched, xb, yb, label_smoothing, dev, precision, grad_clip):
    """One SGD step on the batch (xb, yb), its gradients' global L2 norm clipped to
    `grad_clip` first unless it is None; `sched`, when given, steps after it. Returns the
    model's output and the loss."""
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
    return out, loss


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
    off) clips each step's gradient norm. `trace`, a dict of lists, receives each step's
    "loss" and the "lr" that step ran with (the losses read once per augmented chunk, so a GPU
    syncs once per AUG_CHUNK steps); the epoch then stops after the first chunk whose loss
    is not finite, and returns a non-finite loss."""
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
            out, loss = _sgd_step(
                model, opt, sched, xb, yb, label_smoothing, dev, precision, grad_clip
            )
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


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state()}


@dataclass
class Training:
    """What changes from epoch to epoch, and what a resumed run restores."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    precision: str  # "bf16" or "fp32": what training and evaluation compute in
    softmax_head: bool  # whether the model ends in a Softmax (recipe.softmax_head)
    start: int = 0  # epochs completed
    best_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None  # the weights the test uses


def start_training(cfg: TrainConfig, out: Path, dev, ck: dict | None, n_train: int, precision: str):
    """A seeded model, optimizer and scheduler; with `ck` (last.pt), their saved states,
    the RNG states and best.pt's weights."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = R.softmax_head(cfg.recipe, cfg.model, cfg.softmax_head)
    model = build_model(cfg.model, softmax_head=head).to(dev)
    model = model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch(n_train, cfg.batch_size))
    st = Training(model, opt, sched, gen, precision, head)
    if ck is not None:
        _restore(ck, out / "last.pt", model, opt, sched, gen)
        st.start, st.best_acc, st.best_epoch = ck["epoch"], ck["best_val_acc"], ck["best_epoch"]
        best_path = out / "best.pt"
        if best_path.exists():
            best = load_checkpoint(best_path, dev)
            check_checkpoint_record(best, out, best_path)
            st.best_state = best["model"]
    return st


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


def wrap_model(model, compile: bool, dev, world: int):
    """The module the epochs run: DDP across processes, compiled if `compile`."""
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    if compile:
        # CUDA graphs ("reduce-overhead") remove the per-kernel launch cost that dominates a
        # network this small; on the CPU plain compilation is what helps.
        net = torch.compile(net, mode="reduce-overhead" if dev.type == "cuda" else None)
    return net


DIVERGENCE = "divergence.json"


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


def _stop_diverged(tr_loss: float, trace: dict | None, out: Path, cfg: TrainConfig, epoch: int):
    """A diverged run has nothing worth keeping: stop before this epoch is saved, but keep
    its loss curve (divergence.json/.png), the evidence of what happened."""
    where = ""
    if trace is not None:
        where = "; its loss curve: " + str(write_divergence(out, cfg, epoch, trace))
    raise RunError(
        f"epoch {epoch + 1}: the training loss is {tr_loss} (the run diverged); the "
        f"checkpoints stop at epoch {epoch}{where}. Lower --lr ({cfg.lr}) or "
        f"--weight-decay ({cfg.weight_decay}) and start again with --overwrite"
    )


def run_epoch(st: Training, net, cfg: TrainConfig, split, dev, epoch, rank, world, progress, out):
    """Train one epoch, step the schedule and validate; returns its metrics row."""
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
        st.gen,
        dev,
        batch_size=cfg.batch_size,
        augmentation=cfg.augmentation,
        label_smoothing=cfg.label_smoothing,
        rank=rank,
        world=world,
        bar=bar,
        precision=st.precision,
        sched=st.sched if per_step else None,
        trace=trace,
        grad_clip=cfg.grad_clip,
    )
    bar.close()
    if not math.isfinite(tr_loss):
        _stop_diverged(tr_loss, trace, out, cfg, epoch)
    if not per_step:
        st.sched.step()
    val_gen = R.val_generator(cfg.recipe, cfg.seed, epoch)
    val_loss, val_acc = evaluate(
        net, *split["val"], dev, cfg.eval_batch_size, val_gen, st.precision
    )
    secs = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": tr_loss,
        "train_acc": tr_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "seconds": secs,
    }


def track_best(st: Training, keep_last: bool, row: dict) -> bool:
    """Update the best validation accuracy; returns whether best.pt gets this epoch's weights
    (those of a better epoch, or every epoch's when the recipe tests the last weights)."""
    improved = row["val_acc"] > st.best_acc
    if improved:
        st.best_acc, st.best_epoch = row["val_acc"], row["epoch"]
    keep = improved or keep_last
    if keep:
        # A copy: the live state dict would change under us (the course code's bug, which
        # the course recipe reproduces by keeping the last epoch's weights instead).
        st.best_state = copy.deepcopy(st.model.state_dict())
    return keep


def end_epoch(st: Training, cfg, out: Path, rows: list[dict], keep: bool, old: Path | None):
    """Save the epoch (best.pt if `keep`, metrics, then last.pt), delete the replaced run
    `old`, and print the epoch's line."""
    ck = {
        "model": st.model.state_dict(),
        "optimizer": st.opt.state_dict(),
        "scheduler": st.sched.state_dict(),
        "epoch": rows[-1]["epoch"],
        "rng": _rng_state(st.gen),
        "config": asdict(cfg),
        "arch": cfg.model,
        "softmax_head": st.softmax_head,
        "best_val_acc": st.best_acc,
        "best_epoch": st.best_epoch,
    }
    if keep:
        atomic_torch_save({**ck, "model": st.best_state}, out / "best.pt")
    write_metrics(out, rows)
    atomic_torch_save(ck, out / "last.pt")  # last: only now is the epoch complete
    if old is not None and old.exists():
        remove_ours(old, "train")  # the new run has its first checkpoint
    row = rows[-1]
    print(
        f"[{cfg.model}] epoch {row['epoch']:>3}/{cfg.epochs}  lr {row['lr']:.4g}  "
        f"train {row['train_loss']:.4f}/{row['train_acc']:.4f}  "
        f"val {row['val_loss']:.4f}/{row['val_acc']:.4f}  "
        f"{row['seconds']:.1f}s",
        flush=True,
    )


PREDICTIONS = "test_predictions.json"


def finish_run(
    st: Training, cfg: TrainConfig, out: Path, split, dev, rows: list[dict], data, rank, test_idx
):
    """Test the kept weights (best.pt's) and return the run's summary; rank 0 writes
    curves.png, test_predictions.json (each test image's position among the test set, label
    and predicted class: what paired comparisons between runs need) and summary.json (last:
    it marks the run finished), and says what it tested."""
    st.model.load_state_dict(st.best_state)
    test_loss, test_acc, preds = evaluate(
        st.model,
        *split["test"],
        dev,
        cfg.eval_batch_size,
        precision=st.precision,
        predictions=True,
    )
    last = R.tests_last_weights(cfg.recipe)
    summary = {
        "model": cfg.model,
        "recipe": cfg.recipe,
        "best_val_acc": st.best_acc,
        "best_epoch": st.best_epoch,
        "weights_epoch": cfg.epochs if last else st.best_epoch,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "params": count_params(st.model),
        "head": "softmax (the course's double softmax)" if st.softmax_head else "logits",
        "precision": st.precision,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "epochs": cfg.epochs,
        "train_images": int(split["train"][0].shape[0]),
        "test_images": int(split["test"][1].numel()),
        "seconds": sum(r["seconds"] for r in rows),
        "data_identity": data.identity,
    }
    if rank != 0:
        return summary
    plot_train_curves(rows, out / "curves.png", cfg.model)
    record = {
        "positions": test_idx.tolist(),
        "labels": split["test"][1].cpu().tolist(),
        "predictions": preds.tolist(),
    }
    atomic_write_json(out / PREDICTIONS, record, indent=None)
    atomic_write_json(out / "summary.json", summary)
    which = "the last epoch's weights (course recipe)" if last else "the best weights"
    print(
        f"[{cfg.model}] best val {summary['best_val_acc']:.4f} (epoch {summary['best_epoch']}); "
        f"test {summary['test_acc']:.4f} with {which}",
        flush=True,
    )
    return summary
