"""The study's plan, printed before any work: variants, epochs and the expected minutes.

The expectation comes from timing a few training steps of each variant still to train, on
the study's device at its batch size, scaled to the recorded budget. It leaves out compile
time, evaluation and the probe, so it is a lower bound for training.
"""

from __future__ import annotations

import math
import time

import torch

from dnnlab.cifar.augment import AUGMENTERS
from dnnlab.cifar.models import build_model
from dnnlab.cifar.recipe import softmax_head
from dnnlab.cifar.train import autocast
from dnnlab.utils.precision import training_precision

TIMED_STEPS = 2  # after one warm-up step


def step_seconds(
    model: torch.nn.Module, augmentation: str, precision: str, x_u8: torch.Tensor, y: torch.Tensor
) -> float:
    """Mean seconds of one SGD step of `model` on the batch `x_u8` (uint8 images), `y`, on
    their device (the model is moved there), over TIMED_STEPS steps, `augmentation`
    included, in `precision`."""
    dev = x_u8.device
    model = model.to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    xb, yb = x_u8, y
    amp = dev.type == "cuda"
    augmenter = AUGMENTERS[augmentation]

    def step():
        x = augmenter(xb, gen).contiguous(memory_format=torch.channels_last)
        with autocast(dev, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if amp:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    if amp:
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / TIMED_STEPS


def print_plan(runs: dict, jobs: int, out, data, log=print, done=()) -> dict:
    """Log the plan of the study's runs {run name: TrainConfig} on `jobs` workers, those
    `done` (adopted from a publication) or trained already in `out` left out; returns
    {run name: expected training seconds} for the runs to train (each variant's step timed
    once, its seeds sharing it)."""
    first = next(iter(runs.values()))  # the budget every run shares
    dev = torch.device(first.device)
    available = data.train_y.numel() - first.n_val
    n_train = min(first.train_subset or available, available)
    batch = first.batch_size
    todo = [m for m in runs if m not in done and not (out / "runs" / m / "summary.json").exists()]
    steps = math.ceil(n_train / batch) * first.epochs
    precision, _ = training_precision(first.bf16, dev)
    x, y = data.train_x[: min(batch, n_train)].to(dev), data.train_y[: min(batch, n_train)].to(dev)
    expect, per_step = {}, {}
    for m in todo:
        run = runs[m]
        if run.model not in per_step:
            torch.manual_seed(0)
            head = softmax_head(run.recipe, run.model, run.softmax_head)
            model = build_model(run.model, softmax_head=head)
            per_step[run.model] = step_seconds(model, first.augmentation, precision, x, y)
        expect[m] = steps * per_step[run.model]
    total = sum(expect.values())
    busy = min(jobs, max(1, len(todo)))  # workers with a run to train
    log(
        f"plan: {len(runs)} runs ({', '.join(runs)}), {first.epochs} epochs of "
        f"{n_train} training images, recipe {first.recipe}, {jobs} worker(s) on "
        f"{first.device}; {len(runs) - len(todo)} trained already"
    )
    if todo:
        log(
            f"plan: expected training time from {TIMED_STEPS} timed steps per variant: "
            f"{total / 60:.1f} min one after another"
            + (_parallel_note(total, busy, dev) if busy > 1 else "")
            + " (compile, evaluation and probes not included)"
        )
    return expect


def _parallel_note(total: float, jobs: int, dev: torch.device) -> str:
    """What `jobs` workers do to the expected time. The steps were timed with every CPU core,
    so on a CPU the workers split the same cores: the total stays about the same."""
    if dev.type == "cpu":
        return f"; {jobs} workers share the CPU's cores, so expect about the same in all"
    return f", {total / jobs / 60:.1f} min if {jobs} workers share the device perfectly"
