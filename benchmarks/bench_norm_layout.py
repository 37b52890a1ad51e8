"""gn and ln at the speed of their convolutions (issue 34): a training epoch's time of base,
gn and ln under the study's loop (bf16 autocast, channels_last, batch 128, flip + translate,
SGD with Nesterov), with GroupNorm/LayerNorm computed on the NCHW layout (models.py's
_in_layout_of, today's code) and as plain nn.GroupNorm/nn.LayerNorm on channels_last (the
code before), in one run, alternated, on the same real training images; and the two
layouts' outputs on the same weights, which must agree to float tolerance.

Prints each model's seconds per 1,000 images for both layouts and the ratios gn/base and
ln/base (the target: at most 1.4) and before/after.

    python benchmarks/bench_norm_layout.py --data-root ../shared/data/cifar10-jpeg.tar.gz \
        [--images 2048] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dnnlab.cifar.data import load_cifar10
from dnnlab.cifar.models import build_model
from dnnlab.cifar.train import train_one_epoch


def plain(model: nn.Module) -> nn.Module:
    """The model with its norms back to torch's classes: the layout before the change."""
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.__class__ = nn.GroupNorm
        elif isinstance(m, nn.LayerNorm):
            m.__class__ = nn.LayerNorm
    return model


def epoch_seconds(model, x, y, dev) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    kw = dict(batch_size=128, augmentation="flip-translate", precision="bf16", grad_clip=1.0)
    t0 = time.perf_counter()
    train_one_epoch(model, opt, x, y, gen, dev, **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data_root)
    x, y = data.train_x[: args.images], data.train_y[: args.images]
    dev = torch.device("cpu")

    # Same weights, both layouts: the outputs must agree (bf16 autocast, as in training).
    probe = data.train_x[:256].float().div(255).sub(0.5).div(0.5)
    probe = probe.contiguous(memory_format=torch.channels_last)
    for name in ("gn", "ln"):
        torch.manual_seed(0)
        new = build_model(name).to(memory_format=torch.channels_last).eval()
        old = plain(build_model(name)).to(memory_format=torch.channels_last).eval()
        old.load_state_dict(new.state_dict())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = new(probe).float(), old(probe).float()
        with torch.no_grad():
            a32, b32 = new(probe), old(probe)
        print(
            f"{name}: outputs of the two layouts, max |difference|: fp32 "
            f"{(a32 - b32).abs().max().item():.2e}, bf16 {(a - b).abs().max().item():.2e} "
            f"(logits up to {a.abs().max().item():.2f})"
        )

    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        for name in ("base", "gn", "ln"):
            for layout in ("nchw-norm", "before"):
                if name == "base" and layout == "before":
                    continue  # base has no norm: one timing serves both
                torch.manual_seed(r)
                model = build_model(name)
                if layout == "before":
                    plain(model)
                model = model.to(memory_format=torch.channels_last)
                secs = epoch_seconds(model, x, y, dev)
                times.setdefault((name, layout), []).append(secs)
    per_k = {k: 1000 * min(v) / args.images for k, v in times.items()}  # best of the repeats
    base = per_k["base", "nchw-norm"]
    print(
        f"\n{args.images} images, batch 128, bf16, {args.threads} threads, best of "
        f"{args.repeats}; seconds per 1,000 images"
    )
    print("| model | norms on NCHW (now) | norms on channels_last (before) | now/before |")
    print("|---|---|---|---|")
    print(f"| base | {base:.2f} | {base:.2f} | 1.00 |")
    for name in ("gn", "ln"):
        now, before = per_k[name, "nchw-norm"], per_k[name, "before"]
        print(f"| {name} | {now:.2f} | {before:.2f} | {now / before:.2f} |")
    for name in ("gn", "ln"):
        print(
            f"{name}/base: now {per_k[name, 'nchw-norm'] / base:.2f}, before "
            f"{per_k[name, 'before'] / base:.2f} (target <= 1.4)"
        )


if __name__ == "__main__":
    main()
