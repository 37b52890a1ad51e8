"""bf16 autocast on the CPU: images/s of the real training loop, and what it does to accuracy.

Speed (default): dnnlab's training loop (`train_one_epoch`: augmentation, forward, loss,
backward, SGD step) on real CIFAR-10 images, for each model:
  (a) today's fp32 loop: the course's flip + rotation, batch 256, fp32;
  (b) the same loop under bf16 autocast;
  (c) the budget recipe's loop: flip + translate, batch 128, bf16.
All in one run, alternated (a, b, c, a, b, c) so drifting machine load hits each alike; the
best of the repeats is kept. Prints images/s and the ratios b/a and c/a.

    python benchmarks/bench_bf16_cpu.py --data-root ../shared/data/cifar10-jpeg.tar.gz

Accuracy (--accuracy): one variant trained with the budget recipe in bf16 and in fp32
(--no-bf16), seeds 0 and 1, on a stratified training subset; prints the test accuracy of
each run, the bf16 - fp32 difference per seed and the seed-to-seed spread per precision.

    python benchmarks/bench_bf16_cpu.py --data-root ../shared/data/cifar10-jpeg.tar.gz \
        --accuracy --model bn --train-subset 3000 --val-size 1000 --out /tmp/bf16-accuracy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dnnlab.cifar.data import load_cifar10
from dnnlab.cifar.models import build_model
from dnnlab.cifar.train import TrainConfig, train, train_one_epoch

LOOPS = {
    "a: fp32, flip-rotate, batch 256": ("fp32", "flip-rotate", 256),
    "b: bf16, flip-rotate, batch 256": ("bf16", "flip-rotate", 256),
    "c: bf16, flip-translate, batch 128 (budget)": ("bf16", "flip-translate", 128),
}


def images_per_second(model_name, precision, augmentation, batch, x, y) -> float:
    torch.manual_seed(0)
    model = build_model(model_name).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    dev = torch.device("cpu")
    kw = dict(batch_size=batch, augmentation=augmentation, precision=precision)
    train_one_epoch(model, opt, x[: 2 * batch], y[: 2 * batch], gen, dev, **kw)
    t0 = time.perf_counter()
    train_one_epoch(model, opt, x, y, gen, dev, **kw)
    return x.shape[0] / (time.perf_counter() - t0)


def speed(args, data) -> None:
    x, y = data.train_x[: args.images], data.train_y[: args.images]
    print(
        f"{args.images} real training images per timing, best of {args.repeats}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'model':8} " + "  ".join(f"{k[:1]:>8}" for k in LOOPS) + "     b/a     c/a")
    for m in args.models.split(","):
        best = {k: 0.0 for k in LOOPS}
        for _ in range(args.repeats):
            for k, (prec, aug, bs) in LOOPS.items():
                best[k] = max(best[k], images_per_second(m, prec, aug, bs, x, y))
        a, b, c = best.values()
        print(f"{m:8} {a:8.1f}  {b:8.1f}  {c:8.1f}  {b / a:6.2f}x {c / a:6.2f}x", flush=True)
    for k in LOOPS:
        print(f"  {k}")


def accuracy(args) -> None:
    out = Path(args.out)
    got = {}
    for seed in (0, 1):
        for bf16 in (True, False):
            cfg = TrainConfig(
                model=args.model,
                recipe="budget",
                bf16=bf16,
                seed=seed,
                train_subset=args.train_subset,
                n_val=args.val_size,
                data_root=args.data_root,
            )
            run = out / f"{args.model}-seed{seed}-{'bf16' if bf16 else 'fp32'}"
            s = train(cfg, run, resume=run.exists(), progress=False)
            got[seed, bf16] = 100 * s["test_acc"]
            print(
                f"seed {seed} {s['precision']}: test {got[seed, bf16]:.2f} % "
                f"({s['seconds']:.0f} s training)",
                flush=True,
            )
    for seed in (0, 1):
        print(f"seed {seed}: bf16 - fp32 = {got[seed, True] - got[seed, False]:+.2f} points")
    for bf16, name in ((True, "bf16"), (False, "fp32")):
        print(f"{name}: seed 1 - seed 0 = {got[1, bf16] - got[0, bf16]:+.2f} points")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--models", default="bn,base,paths4,wide")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--model", default="bn")
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--out", default="/tmp/bf16-accuracy")
    args = ap.parse_args()
    if args.accuracy:
        accuracy(args)
    else:
        speed(args, load_cifar10(args.data_root))


if __name__ == "__main__":
    main()
