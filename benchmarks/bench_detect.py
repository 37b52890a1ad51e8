"""Detection speed on this CPU, on the same proposals of the same photos:

  * the course project's loop: cut, resize (224) and classify one proposal at a time;
  * batched crops: the same crops and the same numbers, 16 to a backbone call;
  * the model's own features (default "roi": one backbone pass per photo, RoIAlign per box);

and the per-photo detection time, proposals included, with the detection settings the
model loads with beside those before issue 22 (no IoU predictor, no test-time flip) and with
test-time flip, on the same photos in the same run (--square 640 resizes every photo to
640 x 640 first, the size of the issue's target).

    python benchmarks/bench_detect.py --model det/ --images ../shared/data/cats-voc/valid \
        --square 640
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dnnlab.detect.config import FeatureSpec
from dnnlab.detect.detector import Detector
from dnnlab.detect.features import crop_batch, run_backbone
from dnnlab.detect.voc import load_rgb


def square(img: np.ndarray, side: int) -> np.ndarray:
    """The photo resized to side x side (bilinear); unchanged for side 0."""
    if not side:
        return img
    return np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))


def time_detection(model: Detector, photos) -> tuple[float, float, float]:
    """(median seconds a photo, median of its proposals' part, the slowest) of detect()."""
    times, prop_times = [], []
    for img in photos:
        r = model.detect(img)
        times.append(r.seconds)
        prop_times.append(r.proposal_seconds)
    return statistics.median(times), statistics.median(prop_times), max(times)


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
    ap.add_argument("--square", type=int, default=0, help="resize photos to N x N (0: as is)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = Detector.load(args.model)
    loaded = model.config.detection
    paths = sorted(
        p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )[: args.n]
    photos = [square(load_rgb(p), args.square) for p in paths]
    rows = {
        "before issue 22 (no IoU predictor, no flip)": replace(
            loaded, iou_confidence="off", flip_test=False
        ),
        f"as loaded (iou-confidence {loaded.iou_confidence}, flip-test {loaded.flip_test})": (
            loaded
        ),
        "as loaded, with --flip-test": replace(loaded, flip_test=True),
    }
    base = None
    for name, detection in rows.items():
        model.set_detection(detection)
        med, props, worst = time_detection(model, photos)
        base = base or med
        print(
            f"{len(photos)} photos{f' at {args.square} x {args.square}' if args.square else ''}"
            f", {name}: median {med:.2f} s/photo ({med / base:.2f}x; proposals {props:.2f} s), "
            f"max {worst:.2f} s",
            flush=True,
        )
    model.set_detection(loaded)
    if args.compare:
        compare_loops(model, photos[: args.compare])
    return 0


def compare_loops(model: Detector, photos) -> None:
    """The course project's one-at-a-time loop, batched crops and the model's own features,
    on the same proposals of the same photos."""
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
    for img in photos:
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
        f"{n} proposals of {len(photos)} photos: the course project's one-at-a-time loop "
        f"{t_seed:.1f} s, batched crops {t_batch:.1f} s ({t_seed / t_batch:.2f}x faster, same "
        f"features), the model's {model.spec.mode!r} features {t_own:.2f} s "
        f"({t_seed / t_own:.0f}x faster than the one-at-a-time loop)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
