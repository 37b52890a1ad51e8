"""Cross-validated detection accuracy: k folds over every photo of one or more VOC folders.

cats-voc/valid has 19 cats, so one cat moves AP50 by about 0.05 and two heads trained from
different seeds differ by more than most changes gain. This script trains the detector's
parts (the seed's head on 3x3 RoI-grid features, the ridge box regressors) on k-1 folds and
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

It is a prototype harness, not `dnnlab detect train`: features come from one backbone pass
per photo kept in memory, and each photo's negatives are sampled here (near misses first,
as the build does, no other-class boxes), so absolute figures differ a little from the
commands'; the comparison between settings is on identical models.

    python benchmarks/cv_detect.py ../shared/data/cats-voc/train ../shared/data/cats-voc/valid \
        --backbone-weights ../shared/weights/mobilenet_v2_imagenet_1001.pth --cache /tmp/cvcache
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from dnnlab.detect.boxreg import box_deltas, fit_ridge
from dnnlab.detect.classifier import BoxClassifier, BoxFeatures, load_backbone, make_head
from dnnlab.detect.detect import DetectConfig, _prefilter, refine_rounds, select
from dnnlab.detect.labelling import label_proposals
from dnnlab.detect.proposals import ProposalConfig, proposals_for
from dnnlab.detect.train import DetTrainConfig, _train_head
from dnnlab.detect.voc import Problems, load_rgb, read_voc_dir


def load_photos(dirs, weights, cache):
    features, norm = load_backbone(weights)
    model = BoxClassifier(features, norm, BoxFeatures()).eval()
    photos = []
    for d in dirs:
        items = read_voc_dir(d, Problems(), "cat")
        props = proposals_for([i.image for i in items], ProposalConfig("fast", 320, 2000),
                              cache, 2, True)  # fmt: skip
        with torch.no_grad():
            for it, p in zip(items, props, strict=True):
                img = load_rgb(it.image)
                gt = it.boxes("cat").reshape(-1, 4).astype(np.float32)
                props = _prefilter(p, DetectConfig()).astype(np.float32)
                photos.append({"fmap": model.feature_map(img), "hw": img.shape[:2], "gt": gt,
                               "props": props})  # fmt: skip
    return model, photos


def pooled(model, ph, boxes):
    h, w = ph["hw"]
    # float16 round trip, as the training cache stores them
    return model.pool_boxes(ph["fmap"], torch.as_tensor(boxes), h, w).half().float()


def samples(model, photos, ids, rng, max_neg=48):
    X, Y, IOU, G, B = [], [], [], [], []
    for i in ids:
        ph = photos[i]
        boxes, labels, ious, match = label_proposals(ph["props"], ph["gt"])
        neg = rng.permutation(np.flatnonzero(labels == 0))
        near = np.flatnonzero(ious[neg] >= 0.1)[: max_neg // 2]
        rest = rng.permutation(np.setdiff1d(np.arange(len(neg)), near))
        neg = np.concatenate([neg[near], neg[rest]])[:max_neg]
        keep = np.concatenate([np.flatnonzero(labels == 1), np.sort(neg)])
        X.append(pooled(model, ph, boxes[keep]))
        Y.append(labels[keep])
        IOU.append(ious[keep])
        G.append(match[keep])
        B.append(boxes[keep])
    return (torch.cat(X), torch.from_numpy(np.concatenate(Y)).long(), np.concatenate(IOU),
            np.concatenate(G), np.concatenate(B))  # fmt: skip


class FirstColumns(nn.Module):
    """A regressor fitted on the head's part of the features only."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x[:, : self.linear.in_features])


def ridge(x, iou, g, b, min_iou, dim=None):
    use = np.flatnonzero(iou >= min_iou)
    x = x[use] if dim is None else x[use, :dim]
    layer = fit_ridge(x, box_deltas(torch.from_numpy(b[use]), torch.from_numpy(g[use])), 1000.0)
    return layer if dim is None else FirstColumns(layer)


def train_fold(model, photos, ids, seed):
    """The seed's head recipe (70/30 split by photo, 1:1 negatives) and the ridge regressors:
    {"one": (R-CNN's, IoU >= 0.5, both rounds), "two": (IoU >= 0.3 first, IoU >= 0.5 then),
    "two-all": "two" fitted on the validation photos' rows too, "fine-grid": "two-all" also
    reading the stride-16 grid}. All but "fine-grid" read only the head's part of x."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_val = round(0.3 * len(ids))
    tr = [ids[k] for k in sorted(order[n_val:])]
    va = [ids[k] for k in sorted(order[:n_val])]
    x, y, iou, g, b = samples(model, photos, tr, rng)
    xv, yv, iouv, gv, bv = samples(model, photos, va, rng)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pos, neg = (y == 1).nonzero().squeeze(1), (y == 0).nonzero().squeeze(1)
    neg = neg[torch.randperm(len(neg), generator=gen)[: len(pos)]]
    pick = torch.cat([pos, neg]).sort().values
    d = model.spec.head_dim
    head = make_head(d)
    _, _, state = _train_head(head, x[pick, :d], y[pick], xv[:, :d], yv, torch.ones(2),
                              DetTrainConfig(), gen)  # fmt: skip
    head.load_state_dict(state)
    fine = ridge(x, iou, g, b, 0.5, d)
    xa = torch.cat([x, xv])
    ioua, ga, ba = (np.concatenate(t) for t in ((iou, iouv), (g, gv), (b, bv)))
    return head.eval(), {
        "one": (fine, None), "two": (ridge(x, iou, g, b, 0.3, d), fine),
        "two-all": (ridge(xa, ioua, ga, ba, 0.3, d), ridge(xa, ioua, ga, ba, 0.5, d)),
        "fine-grid": (ridge(xa, ioua, ga, ba, 0.3), ridge(xa, ioua, ga, ba, 0.5))}  # fmt: skip


@torch.no_grad()
def detect(model, head, regs, ph, cfg: DetectConfig):
    """detect_image()'s steps (rounds, threshold, NMS, top-K, voting) on cached features."""
    model.head, (model.regressor, model.regressor2) = head, regs
    b = torch.from_numpy(ph["props"])
    s, b = refine_rounds(model, lambda boxes: pooled(model, ph, boxes), b, *ph["hw"],
                         cfg.refine_steps)  # fmt: skip
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
    print(f"{len(photos)} photos, {sum(len(p['gt']) for p in photos)} cats; features and "
          f"proposals {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
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
            print(f"seed {seed}  {name:<28} AP50 {ap50:.3f} ({ap50 / base:.2f}x)  "
                  f"mAP {float(r['map']):.3f}", flush=True)  # fmt: skip
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
