"""Does the probe's chain path pay? Each group's forward pass from the images and from the
previous group's stored output, in FLOPs and in CPU time (issue 37 item 4).

When a model is a chain of its children, a probe group's pass starts from the stored output of
the previous group's last layer instead of the images (probe.probe_model). For a CIFAR model
this takes the groups the probe plans for a split of --n samples within --max-memory (every
top-level child probed, as the study does), then prints for each group the FLOPs per image of
its pass both ways (torch's FlopCounterMode) and the thread CPU time of both passes over
--images random images (the cost does not depend on the pixels), the least of --repeats runs
(on a shared machine the wall time of a 1-thread run follows the load; the least CPU time
much less so).

    OMP_NUM_THREADS=1 python benchmarks/bench_chain.py [--model base] [--n 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dnnlab.cifar.models import build_model
from dnnlab.probe.config import CPU_BATCH
from dnnlab.probe.extract import extract_group
from dnnlab.probe.layers import resolve_layers, trace
from dnnlab.probe.plan import core_minimum, plan_budget, plan_groups
from dnnlab.separability import knn
from dnnlab.utils.sizes import parse_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--n", type=int, default=5000, help="samples of the split planned for")
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--images", type=int, default=640, help="images timed per pass")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    modules = dict(model.named_modules())
    x = torch.randn(args.images, 3, 32, 32)
    tr = trace(model, x[:2], resolve_layers(model, None))
    if tr.chain is None:
        raise SystemExit(f"{args.model} is not a chain of its children: the probe never restarts")
    kk = 1 + knn.EXTRA_CANDIDATES + 1  # si, csi
    core_min = core_minimum(args.n, kk)
    budget = parse_size(args.max_memory)
    _, _, room = plan_budget(budget, tr.forward_bytes_per_sample, CPU_BATCH, core_min)
    groups = plan_groups(tr.layers, args.n, room)

    def flops_to(layer: str) -> int:
        """FLOPs of one image through the chain up to `layer`, included."""
        h = x[:1]
        with FlopCounterMode(display=False) as count, torch.no_grad():
            for name in tr.chain[: tr.chain.index(layer) + 1]:
                h = modules[name](h)
        return count.get_total_flops()

    def cpu_seconds(g, start, store) -> float:
        t0 = time.thread_time()
        extract_group(model, x, g.layers, CPU_BATCH, torch.device("cpu"), lambda b: b, None,
                      store, start)  # fmt: skip
        return time.thread_time() - t0

    stores = [{i.name: np.empty((len(x), i.dim), np.float32) for i in g.layers} for g in groups]
    flops = {"images": 0, "chain": 0}
    secs = {"images": 0.0, "chain": 0.0}
    for k, g in enumerate(groups):
        whole = flops_to(g.layers[-1].name)
        ways = {"images": (whole, None)}
        if k and g.from_boundary:
            b = groups[k - 1].layers[-1]
            after = tr.chain[tr.chain.index(b.name) + 1 :]
            start = [modules[m] for m in after], stores[k - 1][b.name], b.shape
            ways["chain"] = (whole - flops_to(b.name), start)
        best = {
            w: min(cpu_seconds(g, s, stores[k]) for _ in range(args.repeats))
            for w, (_, s) in ways.items()
        }
        for w in flops:
            flops[w] += ways.get(w, ways["images"])[0]
            secs[w] += best.get(w, best["images"])
        print(
            f"group {k} ({g.layers[0].name} .. {g.layers[-1].name}): from the images "
            f"{whole / 1e6:.1f} MFLOP/image, {best['images']:.2f} s"
            + (
                f"; from {b.name}'s output {ways['chain'][0] / 1e6:.1f} MFLOP/image, "
                f"{best['chain']:.2f} s"
                if "chain" in ways
                else ""
            )  # fmt: skip
        )
    print(
        f"{len(groups)} groups, {args.images} images: without the chain "
        f"{flops['images'] / 1e6:.1f} MFLOP/image, {secs['images']:.2f} s CPU; with it "
        f"{flops['chain'] / 1e6:.1f} MFLOP/image, {secs['chain']:.2f} s CPU "
        f"({secs['chain'] / secs['images']:.2f} of the time)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
