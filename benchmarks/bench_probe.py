"""Probe one trained `base` model on train20 (9,000), val (5,000) and test (10,000) on this CPU.

Prints the process's size when the probe starts, its peak, what the probe added (the budget
bounds that), where layers spilled to files, and the probe's total time against the time the
separability core alone spent on the same feature matrices (timed inside the same run), as
a ratio. Targets (issue 14):
 (a) --splits val --max-memory 1GB: finishes, process peak <= 2 GB;
 (b) all three splits, default 4GB: peak <= 4 GB + the size before probing, total <= 1.25 x core.

    python benchmarks/bench_probe.py --data-root ../shared/data/cifar10-jpeg.tar.gz \
        [--weights /tmp/probe-base/best.pt] [--splits val --max-memory 1GB]

The split is the standard one (45,000 / 5,000, seed 0); the weights only change the values,
not the work, so any `base` checkpoint will do (random weights without --weights).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from dnnlab.cifar.augment import to_input
from dnnlab.cifar.data import load_cifar10, split_indices, stratified_subset
from dnnlab.cifar.models import build_model
from dnnlab.cifar.train import load_model_checkpoint
from dnnlab.probe.probe import ProbeConfig, probe_model


def layer_memory_estimate(infos, n: int) -> int:
    """Bytes the course project's way needs: every layer's features for a split at once."""
    return sum(n * i.dim * 4 for i in infos)


def current_rss() -> int:
    """The process's resident size now, in bytes (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--weights", default=None, help="a `base` best.pt")
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--splits", default="train20,val,test")
    args = ap.parse_args()
    data = load_cifar10(args.data_root)
    tr, va = split_indices(data.train_y, 5000, 0)
    t20 = tr[stratified_subset(data.train_y[tr], 9000, 0)]
    all_splits = {
        "train20": (data.train_x[t20], data.train_y[t20]),
        "val": (data.train_x[va], data.train_y[va]),
        "test": (data.test_x, data.test_y),
    }
    splits = {k: all_splits[k] for k in args.splits.split(",")}
    model = load_model_checkpoint(args.weights, "base")[0] if args.weights else build_model("base")
    base_rss = current_rss()
    t0 = time.perf_counter()
    res = probe_model(
        model,
        splits,
        ProbeConfig(splits=tuple(splits), max_memory=args.max_memory),
        input_fn=to_input,
        progress=True,
    )
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seed_way = max(layer_memory_estimate(res.layers, x.shape[0]) for x, _ in splits.values())
    print(
        f"layers: {len(res.layers)}; rows: {len(res.rows)}; forward groups per split: "
        f"{res.groups}; threads {torch.get_num_threads()}"
    )
    print(
        f"all layers' features of the largest split at once (the course's way): "
        f"{seed_way / 2**30:.1f} GiB"
    )
    print(
        f"process before probing {base_rss / 2**30:.2f} GiB (data and model loaded); peak "
        f"{peak / 2**30:.2f} GiB; the probe added at most {(peak - base_rss) / 2**30:.2f} GiB;"
        f" budget {args.max_memory}; forward batch {res.batch_size}; chain {res.chain}"
    )
    for sp in res.spilled:
        print(
            f"  spilled {sp['split']}/{sp['layer']}: {sp['bytes'] / 2**30:.2f} GiB "
            f"({sp['dtype']}) to {sp['folder']}"
        )
    print(
        f"probe total {total:.1f} s = forward {res.forward_seconds:.1f} s + core "
        f"{res.core_seconds:.1f} s + other; total / core = {total / res.core_seconds:.3f} "
        "(target <= 1.25)"
    )
    for r in res.rows:
        if r["layer"] == "avgpool":
            print(f"  {r['split']:<8} avgpool SI {r['si']:.4f} CSI {r['csi']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
