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

Candidates for localization (issue 22), on top of the last row, selected with --rows:

  * "iou": a localization confidence (IoU-Net, Jiang et al. 2018): a ridge regressor from a
    box's features to its IoU with the cat, fitted on the training and validation photos'
    rows (every row at IoU >= 0.3, 8 others per photo) and jittered copies of their cat
    boxes; each detection's confidence is multiplied by its predicted IoU (clipped to 0..1);
  * "iou-nms": the same predictor also ranks the refined boxes for NMS, and each box's vote
    weight is its probability times its predicted IoU;
  * "flip": the box regressors (and the IoU predictor) fitted on the mirrored photos' rows
    too (one more backbone pass per training photo);
  * "tta": test-time flip: the proposals are also refined on the mirrored photo, mirrored
    back, and box and probability averaged with the unmirrored ones.

It runs the commands' own stages (proposals, labelling and negative sampling, split by
photo, the head's training loop, the ridge fits, detection's rounds, predicted IoU and
selection: Detector.rounds, Detector.predicted_iou, selection.select) on
features kept in memory, one backbone pass per photo, instead of through model.pt files;
the comparison between settings is on identical models.

    python benchmarks/cv_detect.py ../shared/data/cats-voc/train ../shared/data/cats-voc/valid \
        --backbone-weights ../shared/weights/mobilenet_v2_imagenet_1001.pth --cache /tmp/cvcache

It prints AP50, AP75 and mAP per row, and each fold's training and detection seconds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from dnnlab.detect.boxes import flip_boxes
from dnnlab.detect.boxreg import fit_regressors, fit_ridge
from dnnlab.detect.build import split_images
from dnnlab.detect.config import (
    BuildConfig,
    DetectionConfig,
    DetectorConfig,
    DetectTrainConfig,
    RegressorConfig,
)
from dnnlab.detect.detector import Detector, make_head
from dnnlab.detect.features import load_backbone, pool_boxes
from dnnlab.detect.labelling import label_proposals, sample_rows
from dnnlab.detect.proposals import proposals_for
from dnnlab.detect.selection import prefilter, select
from dnnlab.detect.train import balanced, train_head
from dnnlab.detect.voc import Problems, load_rgb, read_voc_dir


def mirror(boxes: np.ndarray, width: int) -> np.ndarray:
    """flip_boxes on a numpy (n, 4) array."""
    b = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    return flip_boxes(b, width).numpy()


def load_photos(dirs, weights, cache, flip=False):
    """One dict per photo (maps, size, cat boxes, other boxes, proposals); with flip, its
    mirror image's under "flip" (the proposals mirrored, not searched again)."""
    backbone, norm = load_backbone(weights)
    model = Detector(DetectorConfig(), backbone, norm).eval()
    photos = []
    for d in dirs:
        items = read_voc_dir(d, Problems(), model.config.target)
        props = proposals_for([i.image for i in items], model.config.proposals, cache, 2, True)
        with torch.no_grad():
            for it, p in zip(items, props, strict=True):
                img = load_rgb(it.image)
                ph = {
                    "fmap": model.feature_map(img),
                    "hw": img.shape[:2],
                    "gt": it.boxes(model.config.target),
                    "hard": it.other_boxes(model.config.target),
                    "props": prefilter(p, model.config.detection),
                }
                if flip:
                    w = img.shape[1]
                    ph["flip"] = {
                        "fmap": model.feature_map(np.ascontiguousarray(img[:, ::-1])),
                        "hw": ph["hw"],
                        "gt": mirror(ph["gt"], w),
                        "hard": mirror(ph["hard"], w),
                        "props": mirror(ph["props"], w),
                    }
                photos.append(ph)
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


def jitter_boxes(gt: np.ndarray, rng, n: int, width: int, height: int) -> np.ndarray:
    """n jittered copies of each box of gt (g, 4): every coordinate moved by a normal draw
    of 0.03, 0.08 or 0.15 of the box's size (in turn), clipped to the image: (g * n, 4)."""
    gt = np.asarray(gt, np.float32).reshape(-1, 4)
    if len(gt) == 0:
        return np.zeros((0, 4), np.float32)
    b = np.repeat(gt, n, 0)
    size = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, 1)
    sigma = np.tile(np.resize([0.03, 0.08, 0.15], n), len(gt))[:, None]
    b = b + rng.normal(size=b.shape).astype(np.float32) * sigma * size
    b[:, [0, 2]] = np.sort(b[:, [0, 2]].clip(0, width), 1)
    b[:, [1, 3]] = np.sort(b[:, [1, 3]].clip(0, height), 1)
    return b[(b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2)]


def iou_samples(model, photos, ids, x, rows, rng, n_jitter=16, n_far=8):
    """(features (m, D), IoU with the nearest cat (m, 1)) for the IoU predictor: the rows of x
    at IoU >= 0.3 with a cat, n_far * len(ids) of the others at random, and the features of
    n_jitter jittered copies of each cat box of each photo in ids."""
    ious = np.array([r["iou"] for r in rows])
    far = np.flatnonzero(ious < 0.3)
    pick = np.concatenate([np.flatnonzero(ious >= 0.3), rng.permutation(far)[: n_far * len(ids)]])
    xs, ts = [x[np.sort(pick)]], [torch.from_numpy(ious[np.sort(pick)]).float()]
    for i in ids:
        ph = photos[i]
        if len(ph["gt"]) == 0:
            continue
        b = jitter_boxes(ph["gt"], rng, n_jitter, ph["hw"][1], ph["hw"][0])
        t = box_iou(torch.from_numpy(b), torch.from_numpy(ph["gt"]).float()).max(1).values
        xs.append(pooled(model, ph, b))
        ts.append(t)
    return torch.cat(xs), torch.cat(ts)[:, None]


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


def train_fold(model, photos, ids, seed, want=("one", "two", "two-all", "fine-grid")):
    """The head (70/30 split by photo, 1:1 negatives, `dnnlab detect train`'s loop), the
    ridge regressors: {"one": R-CNN's (IoU >= 0.5, both rounds), "two": IoU >= 0.3 first,
    IoU >= 0.5 then, "two-all": "two" fitted on the validation photos' rows too,
    "fine-grid": "two-all" also reading the stride-16 grid, "flip": "fine-grid" fitted on
    the mirrored photos' rows too} (those in want), and the IoU predictors {"iou": on the
    "fine-grid" rows, "iou-flip": on the "flip" rows}. All but "fine-grid" and "flip" read
    only the head's part of x. Also {name: seconds} of each part."""
    rng = np.random.default_rng(seed)
    secs = {}
    t0 = time.perf_counter()
    split = split_images(len(ids), 0.3, seed)
    tr = [i for i, s in zip(ids, split, strict=True) if s == "train"]
    va = [i for i, s in zip(ids, split, strict=True) if s == "val"]
    x, y, rows = samples(model, photos, tr, rng)
    xv, yv, rows_v = samples(model, photos, va, rng)
    cfg = replace(DetectTrainConfig(), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = model.spec.head_dim
    model.head = make_head(d, model.config.head)
    pick, weights = balanced(y, cfg, gen)
    _, _, state = train_head(model, x[pick, :d], y[pick], xv[:, :d], yv, weights, cfg, gen)
    model.head.load_state_dict(state)
    secs["head"] = time.perf_counter() - t0
    one = RegressorConfig(coarse_min_iou=None)
    two = RegressorConfig()
    xa, rows_a = torch.cat([x, xv]), rows + rows_v
    fits = {
        "one": lambda: regressors(x, rows, one, d),
        "two": lambda: regressors(x, rows, two, d),
        "two-all": lambda: regressors(xa, rows_a, two, d),
        "fine-grid": lambda: regressors(xa, rows_a, two),
        "iou": lambda: fit_ridge(*iou_samples(model, photos, tr + va, xa, rows_a, rng), 1000.0),
    }
    if "flip" in want or "iou-flip" in want:
        mirrored = [p["flip"] for p in photos]
        xf, _, rows_f = samples(model, mirrored, tr + va, rng)
        xaf, rows_af = torch.cat([xa, xf]), rows_a + rows_f
        both = mirrored + photos  # ids + len(photos): the unmirrored photos
        ids_b = tr + va + [i + len(photos) for i in tr + va]
        fits["flip"] = lambda: regressors(xaf, rows_af, two)
        fits["iou-flip"] = lambda: fit_ridge(
            *iou_samples(model, both, ids_b, xaf, rows_af, rng), 1000.0
        )
    out = {}
    for name in want:
        t1 = time.perf_counter()
        out[name] = fits[name]()
        secs[name] = time.perf_counter() - t1
    return model.head.eval(), out, secs


def cached_looks(model, ph, tta: bool) -> list:
    """Detector.looks on the cached maps: the photo's box-features function (rounded to
    float16 as the training cache), and with tta the mirrored photo's too."""
    out = [lambda boxes: pooled(model, ph, boxes)]
    if tta:
        out.append(lambda boxes: pooled(model, ph["flip"], boxes))
    return out


def refined(model, head, regs, ph, looks, cfg: DetectionConfig):
    """Detector.rounds on cached maps with this fold's head and regressors: (probability
    (n,), refined box (n, 4)) of every proposal; with a mirrored look, the mean of both."""
    model.head, (model.regressor, model.regressor2) = head, regs
    model.config = replace(model.config, detection=cfg)
    return model.rounds(looks, torch.from_numpy(ph["props"]), *ph["hw"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("voc_dirs", nargs="+")
    ap.add_argument("--backbone-weights", required=True)
    ap.add_argument("--cache", required=True, help="proposal cache folder (reused)")
    ap.add_argument(
        "--maps", help="file of the photos' maps and boxes: loaded if present, else written"
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--rows",
        nargs="+",
        choices=list(SETTINGS),
        default=list(SETTINGS)[:6],
        help="which settings to evaluate (default: the first six)",
    )
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from torchmetrics.detection import MeanAveragePrecision

    settings = {n: SETTINGS[n] for n in args.rows}
    want = sorted({r for _, r, _, _, _ in settings.values()})
    want += sorted({q for _, _, _, q, _ in settings.values() if q} - set(want))
    flip = any(r == "flip" or q == "iou-flip" or t for _, r, t, q, _ in settings.values())
    t0 = time.perf_counter()
    if args.maps and Path(args.maps).exists():
        model = Detector(DetectorConfig(), *load_backbone(args.backbone_weights)).eval()
        photos = torch.load(args.maps, weights_only=False)
        flip = flip and all("flip" in p for p in photos)
    else:
        model, photos = load_photos(args.voc_dirs, args.backbone_weights, args.cache, flip)
        if args.maps:
            torch.save(photos, args.maps)
    print(
        f"{len(photos)} photos, {sum(len(p['gt']) for p in photos)} cats; features and "
        f"proposals {time.perf_counter() - t0:.0f} s (mirrored too: {flip})",
        flush=True,
    )
    folds = np.random.default_rng(123).permutation(len(photos))
    for seed in args.seeds:
        metrics = {n: MeanAveragePrecision(iou_type="bbox", box_format="xyxy") for n in settings}
        det_secs = dict.fromkeys(settings, 0.0)  # selection (and IoU predictor) alone
        round_secs = {}  # (regressors, tta): the rounds, shared by the rows that use them
        for f in range(args.folds):
            test = sorted(folds[f :: args.folds].tolist())
            train = sorted(set(range(len(photos))) - set(test))
            head, regs, secs = train_fold(model, photos, train, seed, want)
            print(
                f"seed {seed} fold {f}: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()),
                flush=True,
            )
            for i in test:
                ph = photos[i]
                gt = torch.from_numpy(ph["gt"])
                rounds = {}  # (regressors, tta): (probabilities, refined boxes), shared
                for name, (cfg, reg, tta, qname, guided) in settings.items():
                    looks = cached_looks(model, ph, tta)
                    if (reg, tta) not in rounds:
                        t1 = time.perf_counter()
                        rounds[reg, tta] = refined(model, head, regs[reg], ph, looks, cfg)
                        round_secs[reg, tta] = round_secs.get((reg, tta), 0.0)
                        round_secs[reg, tta] += time.perf_counter() - t1
                    t1 = time.perf_counter()
                    s, b = rounds[reg, tta]
                    if qname is None:
                        b, s = select(b, s, cfg)
                    else:  # the commands' selection with this fold's IoU predictor
                        model.iou_predictor = regs[qname]
                        b, s = select(
                            b,
                            s,
                            replace(cfg, iou_confidence="rank" if guided else "score"),
                            lambda bx, looks=looks, w=ph["hw"][1]: model.predicted_iou(
                                looks, bx, w
                            ),
                        )
                    det_secs[name] += time.perf_counter() - t1
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
                f"AP75 {float(r['map_75']):.3f}  mAP {float(r['map']):.3f}  (s/photo on cached "
                f"maps: rounds {round_secs[settings[name][1:3]] / len(photos):.3f}, "
                f"selection {det_secs[name] / len(photos):.3f})",
                flush=True,
            )
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


D = DetectionConfig()
# name: (detection settings, regressors, test-time flip, IoU predictor or None, IoU-guided NMS)
SETTINGS = {
    "probability, no voting": (DetectionConfig(vote_iou=0), "one", False, None, False),
    "voting, probability": (DetectionConfig(support_scale=0), "one", False, None, False),
    "voting + support": (D, "one", False, None, False),
    "+ coarse-then-fine regressors": (D, "two", False, None, False),
    "+ same, on val photos too": (D, "two-all", False, None, False),
    "+ stride-16 7x7 grid": (D, "fine-grid", False, None, False),
    "iou": (D, "fine-grid", False, "iou", False),
    "iou-nms": (D, "fine-grid", False, "iou", True),
    "tta": (D, "fine-grid", True, None, False),
    "flip": (D, "flip", False, None, False),
    "flip+iou": (D, "flip", False, "iou-flip", False),
    "flip+iou-nms": (D, "flip", False, "iou-flip", True),
    "flip+iou+tta": (D, "flip", True, "iou-flip", False),
    "flip+iou-nms+tta": (D, "flip", True, "iou-flip", True),
    "flip+tta": (D, "flip", True, None, False),
}


if __name__ == "__main__":
    raise SystemExit(main())
