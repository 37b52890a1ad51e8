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

Candidates for localization (issue 22), on top of the last row, selected by name with
--candidates (the last of them, "flip+iou-nms+tta", is today's defaults):

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

Issue 38's candidates (--candidates), each a named row over the same folds (--k, the fixed
permutation `fold_ids`) and seeds as section 12, today's detection defaults (DEFAULT_ROW)
on every one:

  * "defaults": the frozen backbone, `dnnlab detect train --no-end-to-end` (10 epochs of the
    head alone): `detect train`'s defaults until 2026-12-07, the name its records carry;
    today's defaults are end-to-end:5:1e-4:7;
  * "end-to-end:EPOCHS:LR:FROM[:BOX]": `detect train --epochs EPOCHS --backbone-lr LR
    --backbone-from FROM [--box-loss BOX]` (train.train_end_to_end: the head and the
    backbone's blocks from FROM on, on the fold's training photos' rows, with Fast R-CNN's
    box loss weighed BOX), then every photo's maps (and its mirror's) computed again on the
    tuned backbone, the ridge regressors and the IoU predictor fitted on them; the head is
    the one trained end to end;
  * "hard-negatives:ROUNDS:PER_IMAGE": `detect train --hard-negative-rounds ROUNDS
    --hard-negatives-per-image PER_IMAGE` (train.train_hard_negatives: after the head is
    trained, each round adds each of the fold's training photos' PER_IMAGE highest-scoring
    negative proposals not yet trained on, mining.negative_pool, and trains the head again
    from its first weights); the regressors as "defaults";
  * "scale-jitter:J": `detect train --scale-jitter J` (train.scaled_features: the fold's
    training rows also read on their photos at 640 x (1 - J) and 640 x (1 + J), one backbone
    pass per photo and scale, not kept; each epoch of the head reads each photo at one of
    the three scales); the regressors as "defaults";
  * "jitter-regressors": the defaults' row with the box regressors also fitted on 16
    jittered copies of each cat box of every training photo (and its mirror), each aimed at
    the cat it overlaps most (jitter_rows; the IoU predictor's jitter): more rows near the
    cats, where selective search's boxes are few and dnnlab's AP at IoU >= 0.8 is lost;
  * "ridge:L" (L in RIDGE_PENALTIES): the defaults' row with the box regressors' ridge
    penalty L instead of 1000 (`detect train --reg-lambda L`; the IoU predictor's stays);
  * any of the rows above by its name (frozen backbone);
  * CANDIDATE@ROW: CANDIDATE's training detected with the row ROW, on the same models
    (e.g. end-to-end:5:1e-4:7@jitter-regressors).

Each (candidate, seed, fold) appends one record to --out (jsonl) as it finishes: AP50, AP75
and mAP of that fold (dnnlab's evaluate.average_precisions), training wall and CPU seconds
(frozen backbone: the head and the fits on the cached maps, not the maps themselves;
end to end: also the fine-tuning and the maps computed again), detection seconds a photo on
the cached maps, and every held-out photo's detections; a rerun skips what is there. At the
end each candidate's AP50, AP75 and mAP (pooled over each seed's held-out photos as
section 12, averaged over the seeds) are printed with the standard deviation of the
per-fold figures beside them, and each candidate's difference from "defaults" on the same
photos with a 95 % interval over the held-out photos (print_paired). --folds and --seeds
run a subset; --photos N (the first N photos, other folds) is for smoke tests only.

    python benchmarks/cv_detect.py ../shared/data/cats-voc/train ../shared/data/cats-voc/valid \
        --backbone-weights ../shared/weights/mobilenet_v2_imagenet_1001.pth --cache /tmp/cvcache \
        --maps /tmp/cv/maps.pt --out /tmp/cv/results.jsonl --seeds 0 1 \
        --candidates defaults end-to-end:5:1e-4:7

It runs the commands' own stages (proposals, labelling and negative sampling, split by
photo, the head's training loop, the ridge fits, detection's rounds, predicted IoU and
selection: Detector.rounds, Detector.predicted_iou, selection.select) on
features kept in memory, one backbone pass per photo, instead of through model.pt files;
the comparison between settings is on identical models.

It prints each fold's parts' seconds as it goes and the table at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
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
from dnnlab.detect.evaluate import average_precisions
from dnnlab.detect.features import load_backbone, pool_boxes
from dnnlab.detect.labelling import label_proposals, sample_rows
from dnnlab.detect.mining import negative_pool
from dnnlab.detect.proposals import proposals_for
from dnnlab.detect.selection import prefilter, select
from dnnlab.detect.train import (
    balanced,
    scaled_features,
    train_end_to_end,
    train_hard_negatives,
    train_head,
)
from dnnlab.detect.voc import Problems, load_rgb, read_voc_dir
from dnnlab.errors import InputError

# -- the folds and the results file, shared with benchmarks/anchor_faster_rcnn.py ------------


def voc_items(dirs, target: str = "cat") -> list:
    """Every usable photo of the VOC folders, in the order the folds number them."""
    return [it for d in dirs for it in read_voc_dir(d, Problems(), target)]


def fold_ids(n: int, k: int, fold: int) -> tuple[list[int], list[int]]:
    """(training photos, held-out photos) of fold `fold` of k over n photos: the fixed
    permutation of RESULTS section 12 (seed 123), every k-th photo of it held out."""
    order = np.random.default_rng(123).permutation(n)
    test = sorted(order[fold::k].tolist())
    return sorted(set(range(n)) - set(test)), test


def read_records(path) -> list[dict]:
    """The records of a results file (one JSON object a line); a last line cut short by an
    interrupted write is ignored, as is a missing file."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    lines = p.read_text().splitlines()
    for n, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except ValueError:
            if n < len(lines) - 1:
                raise InputError(f"{p}: line {n + 1} is not JSON") from None
    return out


def append_record(path, record: dict) -> None:
    """One record appended as a line, flushed to disk: a fold is kept once it finishes."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() and p.stat().st_size and not p.read_bytes().endswith(b"\n"):
        with open(p, "a") as f:  # a line cut short by an interrupted write ends here
            f.write("\n")
    with open(p, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def detections_of(boxes, scores, gt) -> dict:
    """One held-out photo's detections and cat boxes as plain lists, for the results file."""
    r = lambda a: np.round(np.asarray(a, np.float64), 2).tolist()  # noqa: E731
    return {"boxes": r(boxes), "scores": np.asarray(scores, np.float64).tolist(), "gt": r(gt)}


def fold_figures(photos: list[dict]) -> dict:
    """AP50, AP75 and mAP (dnnlab's `detect eval` code) over the photos' detections."""
    as_np = lambda k, w: [np.asarray(p[k], np.float32).reshape(-1, *w) for p in photos]  # noqa: E731
    return average_precisions(as_np("boxes", (4,)), as_np("scores", ()), as_np("gt", (4,)))


def summarize(records: list[dict], folds: set[int] | None = None) -> dict:
    """{name: figures} over the records of the given folds (None: all): AP50, AP75 and mAP
    pooled over each seed's held-out photos (as RESULTS section 12) and averaged over the
    seeds, the standard deviation of the per-fold figures (fold-to-fold spread, every seed's
    folds), training minutes and detection seconds a photo (mean over folds)."""
    by_name: dict[str, list[dict]] = {}
    for r in records:
        if folds is None or r["fold"] in folds:
            by_name.setdefault(r["name"], []).append(r)
    out = {}
    for name, rs in by_name.items():
        seeds = sorted({r["seed"] for r in rs})
        pooled = [
            fold_figures([p for r in rs if r["seed"] == s for p in r["detections"]]) for s in seeds
        ]
        row = {
            "folds": sorted({r["fold"] for r in rs}),
            "seeds": seeds,
            "photos": sum(len(r["detections"]) for r in rs) // len(seeds),
            "train_min": statistics.fmean(r["train_seconds"] for r in rs) / 60,
            "train_cpu_min": statistics.fmean(r["train_cpu_seconds"] for r in rs) / 60,
            "s_per_photo": statistics.fmean(r["seconds_per_photo"] for r in rs),
        }
        for m in ("ap50", "ap75", "map"):
            row[m] = statistics.fmean(p[m] for p in pooled)
            row[m + "_sd"] = statistics.stdev([r[m] for r in rs]) if len(rs) > 1 else float("nan")
        out[name] = row
    return out


# -- two detectors on the same photos: the difference with a bootstrap interval -------------
#
# AP is not a mean of per-photo values, so its interval over photos is a Monte Carlo
# bootstrap: resample the held-out photos with replacement (the same draw for both
# detectors) and compute both APs again. torchmetrics takes 0.27 s an AP on 34 photos here
# (it matches every photo again), 9 minutes for 1,000 paired resamples; but COCO's matching
# of a photo's detections to its boxes does not depend on the other photos, so it is done
# once (photo_matches) and each resample only sorts and counts (coco_ap). tests/
# test_cv_detect.py checks coco_ap against torchmetrics (average_precisions) on random photos.

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's, as pycocotools
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100  # COCO's maxDets for AP


def _xywh64(boxes) -> np.ndarray:
    """(k, 4) xyxy boxes as torchmetrics hands them to pycocotools: float32, converted to
    x, y, w, h in float32, then read as float64."""
    b = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).double().numpy()


def photo_matches(photo: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """pycocotools' evaluateImg for one photo, one class, every area: its detections sorted by
    score (a stable sort), the first MAX_DETECTIONS kept, each matched in turn to the unmatched
    cat box of highest IoU at least the threshold. (scores (k,), matched (thresholds, k) bool,
    number of cat boxes)."""
    scores = np.asarray(photo["scores"], np.float32).astype(np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")[:MAX_DETECTIONS]
    d, g = _xywh64(photo["boxes"])[order], _xywh64(photo["gt"])
    inter_w = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2])
    inter_w = inter_w - np.maximum(d[:, None, 0], g[None, :, 0])
    inter_h = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3])
    inter_h = inter_h - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.where((inter_w > 0) & (inter_h > 0), inter_w * inter_h, 0.0)
    union = d[:, None, 2] * d[:, None, 3] + g[None, :, 2] * g[None, :, 3] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)
    matched = np.zeros((len(IOU_THRESHOLDS), len(d)), bool)
    for t, thr in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(g), bool)
        for i in range(len(d)):
            best, m = min(thr, 1 - 1e-10), -1
            for j in range(len(g)):  # pycocotools' loop: the last box of the highest IoU
                if not taken[j] and iou[i, j] >= best:
                    best, m = iou[i, j], j
            if m >= 0:
                taken[m], matched[t, i] = True, True
    return scores[order], matched, len(g)


def ap_by_iou(parts: list[tuple[np.ndarray, np.ndarray, int]]) -> np.ndarray | None:
    """COCO's 101-point AP at each of IOU_THRESHOLDS of photos given by their photo_matches,
    in photo order (pycocotools' accumulate: one stable sort of every photo's kept detections
    by score, precision made non-increasing, read at each recall point); None where the
    photos hold no box to find."""
    n_gt = sum(p[2] for p in parts)
    if n_gt == 0:
        return None
    scores = np.concatenate([p[0] for p in parts])
    if scores.size == 0:
        return np.zeros(len(IOU_THRESHOLDS))  # boxes to find, nothing found
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([p[1] for p in parts], axis=1)[:, order]
    tp = np.cumsum(matched, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched, axis=1, dtype=np.float64)
    ap = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        recall = tp[t] / n_gt
        precision = np.maximum.accumulate((tp[t] / (tp[t] + fp[t] + np.spacing(1)))[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        read = precision[np.minimum(at, len(precision) - 1)]
        ap[t] = np.where(at < len(precision), read, 0.0).mean()  # past the last recall: 0
    return ap


def coco_ap(parts: list[tuple[np.ndarray, np.ndarray, int]]) -> dict:
    """AP50, AP75 and mAP (as average_precisions) from ap_by_iou; -1 where there is no box to
    find (COCO's convention)."""
    ap = ap_by_iou(parts)
    if ap is None:
        return {"ap50": -1.0, "ap75": -1.0, "map": -1.0}
    return {"ap50": float(ap[0]), "ap75": float(ap[5]), "map": float(ap.mean())}


def paired_bootstrap(pairs: list[tuple[list, list]], resamples: int = 2000, seed: int = 0) -> dict:
    """{figure: (a − b, low, high)} for AP50, AP75 and mAP of two detectors. `pairs` holds one
    (a, b) per training seed: their detections (detections_of) on the same photos in the same
    order, in every pair. a − b is the mean over the pairs of the difference of their pooled
    figures; low and high are its 2.5 and 97.5 percentiles over `resamples` draws of the photos
    with replacement, one draw for both detectors and every seed. The interval is over which
    photos were held out; the training's randomness enters only as far as the seeds averaged
    reach (one model a fold and seed)."""
    first = pairs[0][0]
    for a, b in pairs:
        if (
            len(a) != len(first)
            or len(b) != len(first)
            or any(
                x["gt"] != y["gt"] or x["gt"] != z["gt"]
                for x, y, z in zip(a, b, first, strict=True)
            )
        ):
            raise InputError("paired_bootstrap: the lists are not the same photos")
    matches = [([photo_matches(p) for p in a], [photo_matches(p) for p in b]) for a, b in pairs]

    def mean_difference(idx) -> dict:
        figures = [
            (coco_ap([ma[i] for i in idx]), coco_ap([mb[i] for i in idx])) for ma, mb in matches
        ]
        return {m: float(np.mean([fa[m] - fb[m] for fa, fb in figures])) for m in figures[0][0]}

    full = mean_difference(range(len(first)))
    rng = np.random.default_rng(seed)
    draws = [mean_difference(rng.integers(0, len(first), len(first))) for _ in range(resamples)]
    return {m: (full[m], *np.percentile([d[m] for d in draws], [2.5, 97.5]).tolist()) for m in full}


def paired_photos(records_a: list[dict], records_b: list[dict]) -> tuple[list, list]:
    """The detections of the photos both record lists hold, paired by (seed, fold, photo)."""
    by_key = lambda rs: {  # noqa: E731
        (r["seed"], r["fold"], i): p
        for r in rs
        for i, p in zip(r["test_ids"], r["detections"], strict=True)
    }
    da, db = by_key(records_a), by_key(records_b)
    keys = sorted(da.keys() & db.keys())
    return [da[k] for k in keys], [db[k] for k in keys]


def print_paired(records: list[dict], baseline: str, resamples: int = 2000) -> None:
    """Each other name's difference from `baseline` on the photos both hold (paired_photos):
    AP50, AP75 and mAP with paired_bootstrap's 95 % interval over photos, seed by seed, then
    the mean over the seeds both have where every one of them holds the same photos (the
    folds are the same for every seed: fold_ids)."""
    base = [r for r in records if r["name"] == baseline]
    for name in dict.fromkeys(r["name"] for r in records if r["name"] != baseline):
        mine = [r for r in records if r["name"] == name]
        keys = lambda rs: {(r["fold"], i) for r in rs for i in r["test_ids"]}  # noqa: E731
        pairs, photos = {}, {}
        for seed in sorted({r["seed"] for r in mine} & {r["seed"] for r in base}):
            a = [r for r in mine if r["seed"] == seed]
            b = [r for r in base if r["seed"] == seed]
            shared = keys(a) & keys(b)
            if shared:
                pairs[seed], photos[seed] = paired_photos(a, b), shared
        lines = [(f"seed {s}", [p]) for s, p in pairs.items()]
        if len(pairs) > 1 and all(photos[s] == photos[min(pairs)] for s in pairs):
            lines.append((f"mean of seeds {', '.join(map(str, pairs))}", list(pairs.values())))
        for label, chosen in lines:
            d = paired_bootstrap(chosen, resamples)
            print(
                f"{name} − {baseline}, {label}, {len(chosen[0][0])} photos: "
                + "  ".join(
                    f"{m.upper() if m != 'map' else 'mAP'} {v:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                    for m, (v, lo, hi) in d.items()
                )
            )


def print_summary(summary: dict, title: str) -> None:
    """One row per name: mean +- fold-to-fold SD of AP50, AP75 and mAP, training minutes
    a fold (wall, and the process's CPU time: wall is what a loaded machine inflates),
    detection seconds a photo."""
    print(f"\n{title}")
    print(
        f"{'':<40} {'folds':<11} {'seeds':<6} {'AP50':>13} {'AP75':>13} {'mAP':>13} "
        f"{'train min/fold (CPU)':>20} {'s/photo':>8}"
    )
    for name, r in summary.items():
        fig = " ".join(f"{r[m]:.3f} ± {r[m + '_sd']:.3f}" for m in ("ap50", "ap75", "map"))
        print(
            f"{name:<40} {','.join(map(str, r['folds'])):<11} "
            f"{','.join(map(str, r['seeds'])):<6} {fig} "
            f"{r['train_min']:>11.1f} ({r['train_cpu_min']:>5.1f}) "
            f"{r['s_per_photo']:>8.3f}"
        )


# -- cached maps and the frozen backbone's parts --------------------------------------------


def mirror(boxes: np.ndarray, width: int) -> np.ndarray:
    """flip_boxes on a numpy (n, 4) array."""
    b = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    return flip_boxes(b, width).numpy()


def load_photos(items, weights, cache, flip=False):
    """One dict per photo of items (voc_items: its file, maps, size, cat boxes, other boxes,
    proposals); with flip, its mirror image's under "flip" (the proposals mirrored, not
    searched again)."""
    backbone, norm = load_backbone(weights)
    model = Detector(DetectorConfig(), backbone, norm).eval()
    photos = []
    props = proposals_for([i.image for i in items], model.config.proposals, cache, 2, True)
    with torch.no_grad():
        for it, p in zip(items, props, strict=True):
            img = load_rgb(it.image)
            ph = {
                "image": str(it.image),
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
                "image": ph.get("image"),
                "label": int(labels[k]),
                "box": boxes[k].tolist(),
                "iou": float(ious[k]),
                "gt": None if np.isnan(match[k]).any() else match[k].tolist(),
            }
            for k in keep
        ]
    return torch.cat(xs), torch.from_numpy(np.concatenate(ys)).long(), rows


def jitter_boxes(gt: np.ndarray, rng, n: int, width: int, height: int) -> np.ndarray:
    """n jittered copies of each box of gt (g, 4): every coordinate moved by a normal draw
    of 0.03, 0.08 or 0.15 of the box's size (in turn), clipped to the image: (g * n, 4).
    The same draws as dnnlab.detect.localization.jitter_boxes, but computed and returned in
    float64 (its sigmas are float32): the boxes differ by up to about 4e-6 pixels, so this
    copy stays for the recorded results (section 12 on) to be reproduced exactly."""
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
    xj, rows_j = jitter_rows(model, photos, ids, rng, n_jitter)
    xs = [x[np.sort(pick)], xj]
    ts = [
        torch.from_numpy(ious[np.sort(pick)]).float(),
        torch.tensor([r["iou"] for r in rows_j], dtype=torch.float64),  # as box_iou gave them
    ]
    return torch.cat(xs), torch.cat(ts)[:, None]


def jitter_rows(model, photos, ids, rng, n_jitter=16):
    """(features (m, D), index-like rows) of n_jitter jittered copies of each cat box of each
    photo in ids, each row's target box the cat it overlaps most: extra rows for the box
    regressors near the cats, where selective search's boxes are few (the "jitter-regressors"
    row)."""
    xs, rows = [], []
    for i in ids:
        ph = photos[i]
        if len(ph["gt"]) == 0:
            continue
        gt = np.asarray(ph["gt"], np.float32).reshape(-1, 4)
        b = jitter_boxes(gt, rng, n_jitter, ph["hw"][1], ph["hw"][0])
        iou, match = box_iou(torch.from_numpy(b), torch.from_numpy(gt)).max(1)
        xs.append(pooled(model, ph, b))
        rows += [
            {
                "image": ph.get("image"),
                "label": 1,
                "box": box.tolist(),
                "iou": float(v),
                "gt": gt[m].tolist(),
            }
            for box, v, m in zip(b, iou.tolist(), match.tolist(), strict=True)
        ]
    return (torch.cat(xs) if xs else torch.zeros(0, model.spec.dim)), rows


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


def train_fold(
    model, photos, ids, seed, want=("one", "two", "two-all", "fine-grid"), head=None, recipe=None
):
    """The head (70/30 split by photo, 1:1 negatives, `dnnlab detect train`'s loop), the ridge
    regressors: {"one": R-CNN's (IoU >= 0.5, both rounds), "two": IoU >= 0.3 first, IoU >= 0.5
    then, "two-all": "two" fitted on the validation photos' rows too, "fine-grid": "two-all"
    also reading the stride-16 grid, "flip": "fine-grid" fitted on the mirrored photos' rows
    too, "flip-jitter": "flip" with jitter_rows too, "flip-ridge:L": "flip" with the ridge
    penalty L} (those in want), and the IoU predictors {"iou": on the "fine-grid" rows,
    "iou-flip": on the "flip" rows}. All but "fine-grid" and the "flip" ones read only the
    head's part of x. A head given (trained end to end with the backbone whose maps `photos`
    hold) is kept as it is. recipe: DetectTrainConfig settings of the head's training
    (hard_negative_rounds and hard_negatives_per_image: the head then goes through
    train.train_hard_negatives on the training photos' negative proposals; scale_jitter: it
    reads train.scaled_features). Also {name: seconds} of each part."""
    rng = np.random.default_rng(seed)
    secs = {}
    t0 = time.perf_counter()
    split = split_images(len(ids), 0.3, seed)
    tr = [i for i, s in zip(ids, split, strict=True) if s == "train"]
    va = [i for i, s in zip(ids, split, strict=True) if s == "val"]
    x, y, rows = samples(model, photos, tr, rng)
    xv, yv, rows_v = samples(model, photos, va, rng)
    cfg = DetectTrainConfig(end_to_end=False, seed=seed, **(recipe or {}))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = model.spec.head_dim
    if head is None:
        model.head = make_head(d, model.config.head)
        first = copy.deepcopy(model.head.state_dict())
        pick, weights = balanced(y, cfg, gen)
        xt, photo_of = x[pick, :d], None
        if cfg.scale_jitter:  # the other scales' features, computed here and not kept
            xt, photo_of = scaled_features(model, rows, pick, xt, None, cfg, False)
        with torch.enable_grad():  # main() turns gradients off for everything else
            hist, best, state = train_head(
                model, xt, y[pick], xv[:, :d], yv, weights, cfg, gen, photo_of
            )
        model.head.load_state_dict(state)
        secs["head"] = time.perf_counter() - t0
        if cfg.hard_negative_rounds:
            t1 = time.perf_counter()
            pools = negative_pools(photos, tr, [rows[i] for i in pick.tolist()])
            with torch.enable_grad():
                train_hard_negatives(
                    model,
                    x[pick, :d],
                    y[pick],
                    xv[:, :d],
                    yv,
                    pools,
                    lambda i: lambda boxes: pooled(model, photos[i], boxes),
                    first,
                    (hist, best),
                    cfg,
                    gen,
                    False,
                )
            secs["hard_negatives"] = time.perf_counter() - t1
    else:
        model.head = head
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
    if any(w.startswith("flip") or w == "iou-flip" for w in want):
        mirrored = [p["flip"] for p in photos]
        xf, _, rows_f = samples(model, mirrored, tr + va, rng)
        xaf, rows_af = torch.cat([xa, xf]), rows_a + rows_f
        both = mirrored + photos  # ids + len(photos): the unmirrored photos
        ids_b = tr + va + [i + len(photos) for i in tr + va]
        fits["flip"] = lambda: regressors(xaf, rows_af, two)
        fits["iou-flip"] = lambda: fit_ridge(
            *iou_samples(model, both, ids_b, xaf, rows_af, rng), 1000.0
        )

        def flip_jitter():
            # Its own generator: the other fits' draws (and their records) stay as they were.
            xj, rows_j = jitter_rows(model, both, ids_b, np.random.default_rng([seed, 38]))
            return regressors(torch.cat([xaf, xj]), rows_af + rows_j, two)

        fits["flip-jitter"] = flip_jitter
        for lam in RIDGE_PENALTIES:
            fits[f"flip-ridge:{lam:g}"] = lambda lam=lam: regressors(
                xaf, rows_af, replace(two, reg_lambda=lam)
            )
    out = {}
    for name in want:
        t1 = time.perf_counter()
        out[name] = fits[name]()
        secs[name] = time.perf_counter() - t1
    return model.head.eval(), out, secs


def negative_pools(photos, ids, train_rows, cfg: BuildConfig = BuildConfig()) -> dict:  # noqa: B008
    """{photo id: its negative proposals not among train_rows (the head's training rows)}
    of the photos ids (mining.negative_pool, labelled as `samples` labels them)."""
    taken: dict[str, list] = {}
    for r in train_rows:
        taken.setdefault(r["image"], []).append(r["box"])
    return {
        i: negative_pool(
            photos[i]["props"],
            photos[i]["gt"],
            cfg.neg_iou,
            cfg.min_area,
            np.array(taken.get(photos[i]["image"], []), np.float32),
        )
        for i in ids
    }


def cached_views(model, ph, tta: bool) -> list:
    """Detector.views on the cached maps: the photo's box-features function (rounded to
    float16 as the training cache), and with tta the mirrored photo's too."""
    out = [lambda boxes: pooled(model, ph, boxes)]
    if tta:
        out.append(lambda boxes: pooled(model, ph["flip"], boxes))
    return out


def refined(model, head, regs, ph, views, cfg: DetectionConfig):
    """Detector.rounds on cached maps with this fold's head and regressors: (probability
    (n,), refined box (n, 4)) of every proposal; with a mirrored view, the mean of both."""
    model.head, (model.regressor, model.regressor2) = head, regs
    model.config = replace(model.config, detection=cfg)
    return model.rounds(views, torch.from_numpy(ph["props"]), *ph["hw"])


def tune_backbone(model, photos, ids, seed, tcfg: DetectTrainConfig):
    """`detect train` end to end on a fold: the commands' loop (train.train_end_to_end) on
    the rows train_fold's head would see (the same 70/30 split by photo, the same sample),
    from a copy of the backbone. (the tuned Detector with its head, the photos with their
    maps, mirrored too where present, computed again on the tuned backbone, {part: wall and
    CPU seconds})."""
    rng = np.random.default_rng(seed)
    split = split_images(len(ids), 0.3, seed)
    tr = [i for i, s in zip(ids, split, strict=True) if s == "train"]
    va = [i for i, s in zip(ids, split, strict=True) if s == "val"]
    _, y, rows = samples(model, photos, tr, rng)
    _, yv, rows_v = samples(model, photos, va, rng)
    labels = torch.cat([y, yv])
    train_idx, val_idx = torch.arange(len(rows)), torch.arange(len(rows), len(labels))
    cfg = replace(tcfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    norm = (model.mean.flatten().tolist(), model.std.flatten().tolist())
    tuned = Detector(model.config, copy.deepcopy(model.features), norm)
    tuned.features.requires_grad_(False)
    pick, weights = balanced(labels[train_idx], cfg, gen)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.enable_grad():
        _, _, state, _ = train_end_to_end(
            tuned, rows + rows_v, train_idx[pick], val_idx, labels, weights, cfg, gen, False
        )
    tuned.load_state_dict(state)
    tuned.eval()
    secs = {"end_to_end": time.perf_counter() - t0, "end_to_end_cpu": time.process_time() - c0}
    t0, c0 = time.perf_counter(), time.process_time()
    out = []
    for ph in photos:
        img = load_rgb(Path(ph["image"]))
        new = {**ph, "fmap": tuned.feature_map(img)}
        if "flip" in ph:
            mirrored = np.ascontiguousarray(img[:, ::-1])
            new["flip"] = {**ph["flip"], "fmap": tuned.feature_map(mirrored)}
        out.append(new)
    secs.update(maps_again=time.perf_counter() - t0, maps_again_cpu=time.process_time() - c0)
    return tuned, out, secs


# The detection settings every candidate but the old rows uses: today's defaults (section 12).
DEFAULT_ROW = "flip+iou-nms+tta"
# What runs when --candidates is not given: the frozen backbone and `detect train`'s
# defaults (features[7:] fine-tuned for 5 epochs at 1e-4), both cross-validated in section 17.
DEFAULT_CANDIDATES = ("defaults", "end-to-end:5:1e-4:7")


def candidate(name: str) -> dict:
    """A candidate's definition from its name: {"train": None (the frozen backbone) or the
    end-to-end settings, "row": the detection settings (a SETTINGS name)}, and for
    hard-negatives and scale-jitter also "recipe": the head's DetectTrainConfig settings.
    Names: "defaults" (today's, DEFAULT_ROW), any SETTINGS row,
    end-to-end:EPOCHS:LR:FROM[:BOX] (`detect train --epochs EPOCHS --backbone-lr LR
    --backbone-from FROM [--box-loss BOX]`, detected with the defaults),
    hard-negatives:ROUNDS:PER_IMAGE (`detect train
    --hard-negative-rounds ROUNDS --hard-negatives-per-image PER_IMAGE`, likewise) and
    scale-jitter:J (`detect train --scale-jitter J`, likewise), each setting checked as
    `detect train` checks it; CANDIDATE@ROW: CANDIDATE's training detected with the SETTINGS
    row ROW instead (e.g. end-to-end:5:1e-4:7@jitter-regressors)."""
    if "@" in name:  # CANDIDATE@ROW: that candidate's training, detected with ROW
        base, row = name.rsplit("@", 1)
        if row not in SETTINGS:
            raise InputError(
                f"--candidates {name}: {row!r} is not a row; one of {', '.join(SETTINGS)}"
            )
        return {**candidate(base), "row": row}
    if name == "defaults":
        return {"train": None, "row": DEFAULT_ROW}
    if name in SETTINGS:
        return {"train": None, "row": name}
    parts = name.split(":")
    if parts[0] in RECIPES:
        return {"train": None, "recipe": recipe(name, parts), "row": DEFAULT_ROW}
    if parts[0] != "end-to-end":
        known = ", ".join(
            ["defaults", "end-to-end:EPOCHS:LR:FROM[:BOX]", *RECIPES.values(), *SETTINGS]
        )
        raise InputError(f"--candidates: unknown candidate {name!r}; one of {known}")
    if len(parts) not in (4, 5):
        raise InputError(f"--candidates {name}: write end-to-end:EPOCHS:LR:FROM[:BOX]")
    try:
        train = {"epochs": int(parts[1]), "backbone_lr": float(parts[2])}
        train["backbone_from"] = int(parts[3])
        if len(parts) == 5:
            train["box_loss"] = float(parts[4])
    except ValueError:
        raise InputError(
            f"--candidates {name}: EPOCHS and FROM are integers, LR and BOX numbers"
        ) from None
    try:
        DetectTrainConfig(end_to_end=True, **train)
    except InputError as e:
        raise InputError(f"--candidates {name}: {e}") from None
    return {"train": train, "row": DEFAULT_ROW}


# The candidates that change the frozen-backbone head's recipe: their names' forms.
RECIPES = {
    "hard-negatives": "hard-negatives:ROUNDS:PER_IMAGE",
    "scale-jitter": "scale-jitter:J",
}


def recipe(name: str, parts: list[str]) -> dict:
    """The DetectTrainConfig settings of a RECIPES candidate (parts: its name split at the
    colons), checked as `detect train` checks them."""
    form = RECIPES[parts[0]]
    if len(parts) != len(form.split(":")):
        raise InputError(f"--candidates {name}: write {form}")
    try:
        if parts[0] == "hard-negatives":
            out = {"hard_negative_rounds": int(parts[1]), "hard_negatives_per_image": int(parts[2])}
        else:
            out = {"scale_jitter": float(parts[1])}
    except ValueError:
        raise InputError(f"--candidates {name}: write {form} with numbers") from None
    try:
        DetectTrainConfig(end_to_end=False, **out)
    except InputError as e:
        raise InputError(f"--candidates {name}: {e}") from None
    return out


def check_args(args) -> dict:
    """Every flag in range before any work, naming the flag; {name: candidate(name)}."""
    cands = {name: candidate(name) for name in args.candidates}
    if args.photos is not None and args.photos < 2:
        raise InputError("--photos: must be at least 2")
    if args.k < 2:
        raise InputError("--k: must be at least 2")
    for f in args.folds or []:
        if not 0 <= f < args.k:
            raise InputError(f"--folds: {f} is not a fold of --k {args.k} (0 to {args.k - 1})")
    if args.threads < 1:
        raise InputError("--threads: must be at least 1")
    return cands


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("voc_dirs", nargs="+")
    ap.add_argument("--backbone-weights", required=True)
    ap.add_argument("--cache", required=True, help="proposal cache folder (reused)")
    ap.add_argument(
        "--maps", help="file of the photos' maps and boxes: loaded if present, else written"
    )
    ap.add_argument("--out", required=True, help="results file (jsonl), appended per fold")
    ap.add_argument("--k", type=int, default=5, help="number of folds (section 12: 5)")
    ap.add_argument("--folds", type=int, nargs="+", help="which folds to run (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument(
        "--candidates",
        nargs="+",
        default=list(DEFAULT_CANDIDATES),
        help="defaults, end-to-end:EPOCHS:LR:FROM, hard-negatives:ROUNDS:PER_IMAGE, "
        "scale-jitter:J, or a row of section 12: "
        + ", ".join(SETTINGS)
        + f" (default: {' '.join(DEFAULT_CANDIDATES)})",
    )
    ap.add_argument("--photos", type=int, help="smoke test: the first N photos only")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args()
    cands = check_args(args)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    rows = {c["row"] for c in cands.values()}
    settings = {n: SETTINGS[n] for n in rows}
    want = sorted({r for _, r, _, _, _ in settings.values()})
    want += sorted({q for _, _, _, q, _ in settings.values() if q} - set(want))
    flip = any(r == "flip" or q == "iou-flip" or t for _, r, t, q, _ in settings.values())
    items = voc_items(args.voc_dirs)[: args.photos]
    if args.k > len(items):
        raise InputError(f"--k: {args.k} folds of {len(items)} photos")
    t0 = time.perf_counter()
    if args.maps and Path(args.maps).exists():
        model = Detector(DetectorConfig(), *load_backbone(args.backbone_weights)).eval()
        photos = torch.load(args.maps, weights_only=False)
        if len(photos) != len(items):
            raise InputError(
                f"--maps {args.maps}: {len(photos)} photos, the folders {len(items)}; "
                "pass another --maps file"
            )
        if flip and not all("flip" in p for p in photos):
            raise InputError(f"--maps {args.maps}: written without the mirrored photos' maps")
        for p, it in zip(photos, items, strict=True):  # files written before "image" was kept
            p.setdefault("image", str(it.image))
    else:
        model, photos = load_photos(items, args.backbone_weights, args.cache, flip)
        if args.maps:
            torch.save(photos, args.maps)
    print(
        f"{len(photos)} photos, {sum(len(p['gt']) for p in photos)} cats; features and "
        f"proposals {time.perf_counter() - t0:.0f} s (mirrored too: {flip})",
        flush=True,
    )
    # One training per distinct end-to-end settings and head recipe (as printed).
    key = lambda c: json.dumps({**(c["train"] or {}), **c.get("recipe", {})}, sort_keys=True)  # noqa: E731
    trainings = {key(c): (c["train"], c.get("recipe")) for c in cands.values()}
    done = {
        (r["name"], r["seed"], r["fold"])
        for r in read_records(args.out)
        if r.get("k") == args.k and r.get("photos") == len(photos)
    }
    folds = args.folds if args.folds is not None else range(args.k)
    for seed in args.seeds:
        for f in folds:
            train, test = fold_ids(len(photos), args.k, f)
            for tkey, (tcfg, recipe_cfg) in trainings.items():
                names = [n for n, c in cands.items() if key(c) == tkey and (n, seed, f) not in done]
                if not names:
                    continue
                what = "frozen backbone" if tcfg is None and recipe_cfg is None else tkey
                t1, c1 = time.perf_counter(), time.process_time()
                fold_model, fold_photos, head, tuned = model, photos, None, {}
                if tcfg is not None:
                    e2e = DetectTrainConfig(end_to_end=True, **tcfg)
                    fold_model, fold_photos, tuned = tune_backbone(model, photos, train, seed, e2e)
                    head = fold_model.head
                head, regs, secs = train_fold(
                    fold_model, fold_photos, train, seed, want, head, recipe_cfg
                )
                secs = {**tuned, **secs}
                train_s, train_cpu = time.perf_counter() - t1, time.process_time() - c1
                print(
                    f"seed {seed} fold {f} ({what}): "
                    + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items())
                    + f"; in all {train_s:.0f} s wall, {train_cpu:.0f} s CPU",
                    flush=True,
                )
                for name in names:
                    rec = detect_fold(fold_model, head, regs, fold_photos, test, cands[name])
                    rec.update(
                        name=name,
                        candidate=cands[name],
                        k=args.k,
                        photos=len(photos),
                        seed=seed,
                        fold=f,
                        train_seconds=train_s,
                        train_cpu_seconds=train_cpu,
                        train_parts=secs,
                        threads=args.threads,
                        test_ids=test,
                    )
                    append_record(args.out, rec)
                    print(
                        f"seed {seed} fold {f} {name}: AP50 {rec['ap50']:.3f} AP75 "
                        f"{rec['ap75']:.3f} mAP {rec['map']:.3f}",
                        flush=True,
                    )
    recs = [
        r
        for r in read_records(args.out)
        if r.get("k") == args.k
        and r.get("photos") == len(photos)
        and r["name"] in cands
        and r["seed"] in args.seeds
    ]
    run_folds = set(folds)
    print_summary(
        summarize(recs, run_folds),
        f"{len(photos)} photos, held-out folds {sorted(run_folds)} of {args.k}, seeds "
        f"{args.seeds} (mean over seeds of the pooled figures ± fold-to-fold SD); s/photo: "
        "rounds + selection on cached maps (no selective search, no backbone pass)",
    )
    if "defaults" in cands and len(cands) > 1:
        print("\nPaired by photo, 95 % bootstrap interval over the held-out photos:")
        print_paired(recs, "defaults")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def detect_fold(model, head, regs, photos, test, cand: dict) -> dict:
    """One candidate's detections on the held-out photos with this fold's parts: figures
    (fold_figures), seconds a photo (rounds + selection on the cached maps) and the
    detections themselves (detections_of)."""
    cfg, reg, tta, qname, guided = SETTINGS[cand["row"]]
    dets, secs = [], []
    for i in test:
        ph = photos[i]
        views = cached_views(model, ph, tta)
        t1 = time.perf_counter()
        s, b = refined(model, head, regs[reg], ph, views, cfg)
        if qname is None:
            b, s = select(b, s, cfg)
        else:  # the commands' selection with this fold's IoU predictor
            model.iou_predictor = regs[qname]
            b, s = select(
                b,
                s,
                replace(cfg, iou_confidence="rank" if guided else "score"),
                lambda bx, views=views, w=ph["hw"][1]: model.predicted_iou(views, bx, w),
            )
        secs.append(time.perf_counter() - t1)
        dets.append(detections_of(b.numpy(), s.numpy(), ph["gt"]))
    return {**fold_figures(dets), "seconds_per_photo": statistics.fmean(secs), "detections": dets}


D = DetectionConfig()
RIDGE_PENALTIES = (100, 300, 3000, 10000)  # the "ridge:L" rows: a decade either side of 1000
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
    "jitter-regressors": (D, "flip-jitter", True, "iou-flip", True),
    # The defaults' row with the box regressors' ridge penalty (`--reg-lambda`, 1000: R-CNN's)
    # at another value; the IoU predictor keeps 1000.
    **{
        f"ridge:{lam:g}": (D, f"flip-ridge:{lam:g}", True, "iou-flip", True)
        for lam in RIDGE_PENALTIES
    },
}


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except InputError as e:
        raise SystemExit(f"cv_detect.py: {e}") from None
