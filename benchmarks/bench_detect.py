"""Detection speed on this CPU, on the same proposals of the same photos:

  * the course project's loop: cut, resize (224) and classify one proposal at a time;
  * batched crops: the same crops and the same numbers, 16 to a backbone call;
  * the model's own features (default "roi": one backbone pass per photo, RoIAlign per box);

and the per-photo detection time with the model's defaults, proposals included.

    python benchmarks/bench_detect.py --model det/ --images ../shared/data/cats-voc/valid
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from dnnlab.detect.config import FeatureSpec
from dnnlab.detect.detector import Detector
from dnnlab.detect.features import crop_batch, run_backbone
from dnnlab.detect.voc import load_rgb


@torch.no_grad()
def one_at_a_time(model: Detector, img, boxes):
    """The course project's loop: crop, resize and embed each proposal on its own."""
    spec = model.spec
    return torch.cat(
        [
            run_backbone(
                model.features,
                crop_batch(img, b[None], spec.crop_size, spec.context),
                model.mean,
                model.std,
                False,
            )[0].mean((2, 3))
            for b in boxes
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, help="a folder of photos")
    ap.add_argument("--n", type=int, default=20, help="photos to time")
    ap.add_argument("--compare", type=int, default=2, help="photos for the one-at-a-time loop")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = Detector.load(args.model)
    photos = sorted(
        p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )[: args.n]
    times, prop_times = [], []
    for p in photos:
        r = model.detect(load_rgb(p))
        times.append(r.seconds)
        prop_times.append(r.proposal_seconds)
    print(
        f"{len(photos)} photos, features {model.spec.mode!r}: detection median "
        f"{statistics.median(times):.2f} s/photo (proposals {statistics.median(prop_times):.2f}"
        f" s), max {max(times):.2f} s (target: median <= 2.5 s)"
    )
    norm = (model.mean.flatten().tolist(), model.std.flatten().tolist())
    crops_cfg = replace(model.config, features=FeatureSpec("crops", 1, model.spec.context))
    crops = Detector(crops_cfg, model.features, norm).eval()
    # One regression round, as the comparison has always been timed.
    one_round = replace(model.config.detection, refine_steps=1)
    scorer = Detector(
        replace(model.config, detection=one_round),
        model.features,
        norm,
        model.head,
        model.regressor,
        model.regressor2,
    ).eval()
    t_seed = t_batch = t_own = 0.0
    n = 0
    for p in photos[: args.compare]:
        img = load_rgb(p)
        boxes = model.propose(img)
        t0 = time.perf_counter()
        a = crops.embed(img, boxes)
        t_batch += time.perf_counter() - t0
        t0 = time.perf_counter()
        b = one_at_a_time(crops, img, boxes)
        t_seed += time.perf_counter() - t0
        t0 = time.perf_counter()
        scorer.score_boxes(img, boxes)
        t_own += time.perf_counter() - t0
        n += len(boxes)
        assert torch.allclose(a, b, atol=1e-3), "batched and one-at-a-time features differ"
    print(
        f"{n} proposals of {args.compare} photos: the course project's one-at-a-time loop "
        f"{t_seed:.1f} s, batched crops {t_batch:.1f} s ({t_seed / t_batch:.2f}x faster, same "
        f"features), the model's {model.spec.mode!r} features {t_own:.2f} s "
        f"({t_seed / t_own:.0f}x faster than the one-at-a-time loop)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
