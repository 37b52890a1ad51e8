"""Time a few epochs of a variant with the full recipe on a GPU; project the 100-epoch time.

    python benchmarks/bench_train_gpu.py --data-root cifar10-jpeg.tar.gz --model bn --epochs 4
Epoch 1 (warm-up: cuDNN autotuning, compilation) is reported but left out of the projection.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile

import torch

from dnnlab.cifar.train import TrainConfig, train


def projected_seconds(epoch_seconds: list[float], epochs: int) -> float:
    """Projection for a full run from timed epochs (the first, warm-up, one excluded)."""
    steady = epoch_seconds[1:] or epoch_seconds
    return math.fsum(steady) / len(steady) * epochs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--model", default="bn")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            model=args.model,
            epochs=args.epochs,
            device=args.device,
            data_root=args.data_root,
            compile=args.compile,
        )
        summary = train(cfg, tmp, progress=False)
        rows = json.load(open(f"{tmp}/metrics.json"))
    secs = [r["seconds"] for r in rows]
    n = summary["train_images"]
    proj = projected_seconds(secs, 100)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; model {args.model}; compile={args.compile}; torch {torch.__version__}")
    print("epoch seconds (train + validation):", ", ".join(f"{s:.2f}" for s in secs))
    steady = secs[1:] or secs
    print(
        f"steady epoch {sum(steady) / len(steady):.2f} s = "
        f"{n / (sum(steady) / len(steady)):,.0f} train images/s (validation included)"
    )
    print(
        f"projected 100-epoch time: {proj:.1f} s (target <= 60 s); "
        f"val acc after {args.epochs} epochs {rows[-1]['val_acc']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
