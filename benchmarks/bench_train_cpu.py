"""Training images per second on this CPU: dnnlab's loop against a loop written as the course's.

(a) dnnlab: uint8 tensors in memory, batched flip + rotation, the model step.
(b) the course's way: a torchvision-style dataset that makes a PIL image per sample and runs
    RandomHorizontalFlip, RandomRotation(10), ToTensor, Normalize, through a DataLoader
    (batch 256, shuffle, 2 workers).
Same model (`bn` by default), same optimizer, same batch size, same run.

    python benchmarks/bench_train_cpu.py --data-root ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dnnlab.cifar.augment import augment
from dnnlab.cifar.data import load_cifar10
from dnnlab.cifar.models import build_model


class SeedStyleCifar(Dataset):
    """Like torchvision's CIFAR10: a PIL image per __getitem__, then the transforms."""

    def __init__(self, x_u8: torch.Tensor, y: torch.Tensor):
        from torchvision import transforms as T

        self.x = x_u8.permute(0, 2, 3, 1).contiguous().numpy()
        self.y = y.tolist()
        self.tf = T.Compose(
            [
                T.RandomHorizontalFlip(),
                T.RandomRotation(10),
                T.ToTensor(),
                T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i])), self.y[i]


def step(model, opt, xb, yb):
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_dnnlab(model, opt, x, y, batches, bs, warmup=1):
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=gen)
    done, t0 = 0, None
    for b in range(batches + warmup):
        if b == warmup:
            t0 = time.perf_counter()
        idx = perm[b * bs : (b + 1) * bs]
        xb = augment(x[idx], gen).contiguous(memory_format=torch.channels_last)
        step(model, opt, xb, y[idx])
        done += idx.numel() if b >= warmup else 0
    return done / (time.perf_counter() - t0)


def time_seed(model, opt, x, y, batches, bs, workers, warmup=1):
    loader = DataLoader(SeedStyleCifar(x, y), batch_size=bs, shuffle=True, num_workers=workers)
    done, t0 = 0, None
    for b, (xb, yb) in enumerate(loader):
        if b == warmup:
            t0 = time.perf_counter()
        step(model, opt, xb, yb)
        done += yb.numel() if b >= warmup else 0
        if b + 1 == batches + warmup:
            break
    return done / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-root", default=None, help="CIFAR-10 source (default $DNNLAB_DATA)")
    ap.add_argument("--model", default="bn")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data = load_cifar10(args.data_root)
    x, y = data.train_x[:45000], data.train_y[:45000]
    results = {}
    for name in ("seed", "dnnlab", "seed ", "dnnlab "):  # alternate twice: fair to both
        torch.manual_seed(0)
        model = build_model(args.model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if name.strip() == "seed":
            r = time_seed(model, opt, x, y, args.batches, args.batch_size, args.workers)
        else:  # dnnlab's loop keeps the model and batches channels_last, as `dnnlab train` does
            model = model.to(memory_format=torch.channels_last)
            r = time_dnnlab(model, opt, x, y, args.batches, args.batch_size)
        results.setdefault(name.strip(), []).append(r)
        print(f"{name.strip():<7} {r:8.1f} images/s", flush=True)
    a, b = max(results["dnnlab"]), max(results["seed"])
    print(
        f"model {args.model}, batch {args.batch_size}, {args.batches} timed batches each, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        f"(a) dnnlab {a:.1f} img/s   (b) seed-style DataLoader ({args.workers} workers) "
        f"{b:.1f} img/s   ratio a/b = {a / b:.2f} (target >= 1.5)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
