"""Cross-validated detection accuracy: k folds over every photo of one or more VOC folders.

cats-voc/valid has 19 cats, so one cat moves AP50 by about 0.05 and two heads trained from
different seeds differ by more than most changes gain. This script trains the detector's
parts (the course's head on 3x3 RoI-grid features, the ridge box regressors) on k-1 folds and
detects on the held-out fold, for every fold, then computes AP50 and mAP once over all
held-out photos, for several detection settings side by side on the same models:

  * classifier probability as the confidence, no voting (the detector before box voting);
  * box voting only (confidence still the classifier's probability);
  * box voting and support confidence, with R-CNN's one regressor (IoU >= 0.5 rows);
  * the same with a coarse regressor for the first round (rows down to IoU 0.3) and the
    IoU >= 0.5 one for the second, fitted on the training photos;
  * the same, the regressors fitted on the validation photos' rows too;
  * the same, the regressors also reading the box on the stride-16 map in a 7x7 grid (the
    default of `dnnlab detect train`; every other row's regressors see only the head's
    3x3 grid on the last map).

It runs the commands' own stages (proposals, labelling and negative sampling, split by
photo, the head's training loop, the ridge fits, detection's rounds and selection) on
features kept in memory, one backbone pass per photo, instead of through model.pt files;
the comparison between settings is on identical models.

    python benchmarks/cv_detect.py ../shared/data/cats-voc/train ../shared/data/cats-voc/valid \
        --backbone-weights ../shared/weights/mobilenet_v2_imagenet_1001.pth --cache /tmp/cvcache
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from dnnlab.detect.boxreg import fit_regressors
from dnnlab.detect.build import split_images
from dnnlab.detect.config import (
    BuildConfig,
    DetectConfig,
    DetectorConfig,
    RegressorConfig,
    TrainConfig,
)
from dnnlab.detect.detector import Detector, make_head, refine_rounds
from dnnlab.detect.features import load_backbone, pool_boxes
from dnnlab.detect.labelling import label_proposals, sample_rows
from dnnlab.detect.proposals import proposals_for
from dnnlab.detect.selection import prefilter, select
from dnnlab.detect.train import balanced, train_head
from dnnlab.detect.voc import Problems, load_rgb, read_voc_dir


def load_photos(dirs, weights, cache):
    backbone, norm = load_backbone(weights)
    model = Detector(DetectorConfig(), backbone, norm).eval()
    photos = []
    for d in dirs:
        items = read_voc_dir(d, Problems(), model.config.target)
        props = proposals_for([i.image for i in items], model.config.proposals, cache, 2, True)
        with torch.no_grad():
            for it, p in zip(items, props, strict=True):
                img = load_rgb(it.image)
                photos.append(
                    {
                        "fmap": model.feature_map(img),
                        "hw": img.shape[:2],
                        "gt": it.boxes(model.config.target),
                        "hard": it.other_boxes(model.config.target),
                        "props": prefilter(p, model.config.detection),
                    }
                )
    return model, photos


def pooled(model, ph, boxes):
    h, w = ph["hw"]
    # float16 round trip, as the training cache stores them
    return pool_boxes(ph["fmap"], torch.as_tensor(boxes), h, w, model.spec).half().float()


def samples(model, photos, ids, rng, cfg: BuildConfig = BuildConfig()):  # noqa: B008
    """(features, labels, index-like rows) of the boxes the build would index."""
    xs, ys, rows = [], [], []
    for i in ids:
        ph = photos[i]
        boxes, labels, ious, match = label_proposals(
            ph["props"], ph["gt"], cfg.pos_iou, cfg.neg_iou, cfg.min_area
        )
        keep = sample_rows(
            boxes, labels, ious, ph["hard"], rng, cfg.max_neg_per_image, cfg.near_iou, cfg.hard_iou
        )
        xs.append(pooled(model, ph, boxes[keep]))
        ys.append(labels[keep])
        rows += [
            {
                "box": boxes[k].tolist(),
                "iou": float(ious[k]),
                "gt": None if np.isnan(match[k]).any() else match[k].tolist(),
            }
            for k in keep
        ]
    return torch.cat(xs), torch.from_numpy(np.concatenate(ys)).long(), rows


class FirstColumns(nn.Module):
    """A regressor fitted on the head's part of the features only."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x[:, : self.linear.in_features])


def regressors(x, rows, cfg: RegressorConfig, dim=None):
    """fit_regressors on all of x, or (dim) on its first dim columns only."""
    first, later = fit_regressors(x if dim is None else x[:, :dim], rows, range(len(rows)), cfg)
    if dim is None:
        return first, later
    return FirstColumns(first), None if later is None else FirstColumns(later)


def train_fold(model, photos, ids, seed):
    """The head (70/30 split by photo, 1:1 negatives, `dnnlab detect train`'s loop) and the
    ridge regressors: {"one": R-CNN's (IoU >= 0.5, both rounds), "two": IoU >= 0.3 first,
    IoU >= 0.5 then, "two-all": "two" fitted on the validation photos' rows too,
    "fine-grid": "two-all" also reading the stride-16 grid}. All but "fine-grid" read only
    the head's part of x."""
    rng = np.random.default_rng(seed)
    split = split_images(len(ids), 0.3, seed)
    tr = [i for i, s in zip(ids, split, strict=True) if s == "train"]
    va = [i for i, s in zip(ids, split, strict=True) if s == "val"]
    x, y, rows = samples(model, photos, tr, rng)
    xv, yv, rows_v = samples(model, photos, va, rng)
    cfg = replace(TrainConfig(), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = model.spec.head_dim
    model.head = make_head(d, model.config.head)
    pick, weights = balanced(y, cfg, gen)
    _, _, state = train_head(model, x[pick, :d], y[pick], xv[:, :d], yv, weights, cfg, gen)
    model.head.load_state_dict(state)
    one = RegressorConfig(coarse_min_iou=None)
    two = RegressorConfig()
    xa, rows_a = torch.cat([x, xv]), rows + rows_v
    return model.head.eval(), {
        "one": regressors(x, rows, one, d),
        "two": regressors(x, rows, two, d),
        "two-all": regressors(xa, rows_a, two, d),
        "fine-grid": regressors(xa, rows_a, two),
    }


@torch.no_grad()
def detect(model, head, regs, ph, cfg: DetectConfig):
    """Detector.detect()'s steps (rounds, threshold, NMS, top-K, voting) on cached maps."""
    model.head, (model.regressor, model.regressor2) = head, regs
    b = torch.from_numpy(ph["props"])
    s, b = refine_rounds(
        model, lambda boxes: pooled(model, ph, boxes), b, *ph["hw"], cfg.refine_steps
    )
    return select(b, s, cfg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("voc_dirs", nargs="+")
    ap.add_argument("--backbone-weights", required=True)
    ap.add_argument("--cache", required=True, help="proposal cache folder (reused)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    from torchmetrics.detection import MeanAveragePrecision

    t0 = time.perf_counter()
    model, photos = load_photos(args.voc_dirs, args.backbone_weights, args.cache)
    print(
        f"{len(photos)} photos, {sum(len(p['gt']) for p in photos)} cats; features and "
        f"proposals {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    settings = {  # name: (detection settings, regressors)
        "probability, no voting": (DetectConfig(vote_iou=0), "one"),
        "voting, probability": (DetectConfig(support_scale=0), "one"),
        "voting + support": (DetectConfig(), "one"),
        "+ coarse-then-fine regressors": (DetectConfig(), "two"),
        "+ same, on val photos too": (DetectConfig(), "two-all"),
        "+ stride-16 7x7 grid": (DetectConfig(), "fine-grid"),
    }
    folds = np.random.default_rng(123).permutation(len(photos))
    for seed in args.seeds:
        metrics = {n: MeanAveragePrecision(iou_type="bbox", box_format="xyxy") for n in settings}
        for f in range(args.folds):
            test = sorted(folds[f :: args.folds].tolist())
            train = sorted(set(range(len(photos))) - set(test))
            head, regs = train_fold(model, photos, train, seed)
            for i in test:
                gt = torch.from_numpy(photos[i]["gt"])
                for name, (cfg, reg) in settings.items():
                    b, s = detect(model, head, regs[reg], photos[i], cfg)
                    pred = {"boxes": b, "scores": s, "labels": torch.zeros(len(b), dtype=int)}
                    true = {"boxes": gt, "labels": torch.zeros(len(gt), dtype=int)}
                    metrics[name].update([pred], [true])
        base = None
        for name, m in metrics.items():
            r = m.compute()
            ap50 = float(r["map_50"])
            base = base or ap50
            print(
                f"seed {seed}  {name:<28} AP50 {ap50:.3f} ({ap50 / base:.2f}x)  "
                f"mAP {float(r['map']):.3f}",
                flush=True,
            )
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
