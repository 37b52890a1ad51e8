"""IoU labelling of proposals against ground truth, R-CNN style."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

IGNORE = -1


def label_proposals(
    props: np.ndarray,
    gt: np.ndarray,
    pos_iou: float = 0.5,
    neg_iou: float = 0.5,
    min_area: float = 0.0,
):
    """(boxes, labels, best IoU, matched target box) for one image.

    Positive (1) when the best IoU with a target box >= pos_iou, negative (0) when < neg_iou,
    the band between is ignored (dropped); the ground-truth boxes themselves are added as
    positives; proposals smaller than min_area pixels are dropped. Proposals on boxes of
    other classes (`hard`) stay negatives: they are the hard negatives.
    """
    if neg_iou > pos_iou:
        raise ValueError(f"neg_iou {neg_iou} must not exceed pos_iou {pos_iou}")
    p = torch.from_numpy(np.asarray(props, dtype=np.float32).reshape(-1, 4))
    g = torch.from_numpy(np.asarray(gt, dtype=np.float32).reshape(-1, 4))
    area = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    p = p[area >= min_area]
    if len(g) and len(p):
        best, j = box_iou(p, g).max(1)
        match = g[j]
    else:
        best, match = torch.zeros(len(p)), torch.full((len(p), 4), float("nan"))
    labels = torch.full((len(p),), IGNORE, dtype=torch.long)
    labels[best >= pos_iou] = 1
    labels[best < neg_iou] = 0
    keep = labels != IGNORE
    boxes = torch.cat([p[keep], g])
    labels = torch.cat([labels[keep], torch.ones(len(g), dtype=torch.long)])
    ious = torch.cat([best[keep], torch.ones(len(g))])
    # The target box each proposal overlaps most: the box regressor's target (NaN: none).
    match = torch.cat([match[keep], g])
    return boxes.numpy(), labels.numpy(), ious.numpy(), match.numpy()


def sample_rows(
    boxes: np.ndarray,
    labels: np.ndarray,
    ious: np.ndarray,
    hard: np.ndarray,
    rng: np.random.Generator,
    max_neg: int,
    near_iou: float = 0.1,
    hard_iou: float = 0.5,
) -> np.ndarray:
    """Which labelled boxes of one photo to keep (indices, sorted within each label): every
    positive, and at most max_neg negatives from a seeded order: those on other-class boxes
    (`hard`, IoU >= hard_iou) first, then up to half of max_neg near misses (IoU near_iou to
    the negative band's top with a target: parts of it, it plus surroundings, as Fast
    R-CNN's negatives), then the rest at random."""
    neg = rng.permutation(np.flatnonzero(labels == 0))
    first = np.zeros(len(neg), bool)
    hard = np.asarray(hard, dtype=np.float32).reshape(-1, 4)
    if len(hard) and len(neg):
        on_other = box_iou(torch.from_numpy(boxes[neg]), torch.from_numpy(hard)).max(1)
        first = on_other.values.numpy() >= hard_iou
    near = ~first & (ious[neg] >= near_iou)
    near_idx = np.flatnonzero(near)[: max_neg // 2]
    rest = np.setdiff1d(np.flatnonzero(~first), near_idx, assume_unique=True)
    neg = np.concatenate([neg[first], neg[near_idx], neg[rest]])
    return np.concatenate([np.flatnonzero(labels == 1), np.sort(neg[:max_neg])])
