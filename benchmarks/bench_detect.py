"""Detection speed on this CPU: batched classification against the seed's one-crop-at-a-time
loop on the same proposals, and the per-photo detection time (proposals included).

    python benchmarks/bench_detect.py --model det/ --images ../shared/data/cats-voc/valid
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dnnlab.detect.classifier import crop_batch
from dnnlab.detect.detect import DetectConfig, _prefilter, _settings, classify, detect_image
from dnnlab.detect.proposals import propose
from dnnlab.detect.train import load_detector
from dnnlab.detect.voc import load_rgb


@torch.no_grad()
def one_at_a_time(model, img, boxes, spec):
    """The seed's loop: crop, resize and classify each proposal on its own."""
    return [float(torch.softmax(model(crop_batch(img, b[None], spec)), 1)[0, 1]) for b in boxes]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, help="a folder of photos")
    ap.add_argument("--n", type=int, default=8, help="photos to time")
    ap.add_argument("--compare", type=int, default=3, help="photos for the one-at-a-time loop")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, ck = load_detector(args.model)
    pcfg, spec = _settings(Path(args.model), ck)
    cfg = DetectConfig()
    photos = sorted(p for p in Path(args.images).iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.n]  # fmt: skip
    times, prop_times = [], []
    for p in photos:
        r = detect_image(model, load_rgb(p), pcfg, spec, cfg)
        times.append(r["seconds"])
        prop_times.append(r["proposal_seconds"])
    print(f"{len(photos)} photos: detection median {statistics.median(times):.2f} s/photo "
          f"(proposals {statistics.median(prop_times):.2f} s), max {max(times):.2f} s "
          f"(target: median <= 2.5 s)")  # fmt: skip
    tb = ts = 0.0
    n = 0
    for p in photos[: args.compare]:
        img = load_rgb(p)
        boxes = _prefilter(propose(img, pcfg), cfg)
        t0 = time.perf_counter()
        a = classify(model, img, boxes, spec, cfg.batch)
        tb += time.perf_counter() - t0
        t0 = time.perf_counter()
        b = one_at_a_time(model, img, boxes, spec)
        ts += time.perf_counter() - t0
        n += len(boxes)
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
    print(f"classifying {n} proposals of {args.compare} photos: batched {tb:.2f} s, one at a "
          f"time {ts:.2f} s, ratio {ts / tb:.2f}x faster batched (same scores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
