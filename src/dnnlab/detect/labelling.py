"""IoU labelling of proposals against ground truth, R-CNN style."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

IGNORE = -1


def label_proposals(props: np.ndarray, gt: np.ndarray, pos_iou: float = 0.5,
                    neg_iou: float = 0.5, min_area: float = 0.0):
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
