"""From every scored, refined proposal of a photo to its detections: pure functions."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from dnnlab.detect.config import DetectionConfig


def prefilter(boxes: np.ndarray, cfg: DetectionConfig) -> np.ndarray:
    """Drop near-duplicate proposals (IoU > prefilter_iou) keeping selective search's order,
    then take the first max_proposals: (k, 4)."""
    if len(boxes) == 0:
        return boxes
    if cfg.prefilter_iou < 1:
        b = torch.from_numpy(boxes)
        # Earlier proposals rank higher: a descending score that follows the list order.
        keep = nms(b, torch.linspace(1, 0, len(b)), cfg.prefilter_iou)
        boxes = boxes[keep.sort().values.numpy()]
    return boxes[: cfg.max_proposals]


def vote(
    kept: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, iou: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box voting (Gidaris & Komodakis 2015): (voted boxes (k, 4), support (k,)).

    Each kept box is replaced by the score-weighted mean of the boxes that overlap it at
    IoU >= iou (itself included); its support is their summed score.
    """
    if len(kept) == 0:
        return kept.reshape(0, 4), scores.new_zeros(0)
    w = (box_iou(kept, boxes) >= iou).to(scores.dtype) * scores  # (kept, boxes)
    support = w.sum(1)
    return (w @ boxes) / support[:, None], support


def confidence(support: torch.Tensor, scale: float) -> torch.Tensor:
    """Support as a number in [0, 1): about 0.63 at `scale` fully confident boxes."""
    return 1 - torch.exp(-support / scale)


def select(boxes: torch.Tensor, scores: torch.Tensor, cfg: DetectionConfig, quality=None):
    """Score threshold, NMS, top-K, then box voting: (boxes (k, 4), confidences (k,)), best
    first. The classifier gives 0.99+ to most boxes on a cat, so with support_scale > 0 the
    confidence is how many refined boxes agree, not the probability.

    quality: None, or a function from boxes (m, 4) to their predicted IoU with the target
    (m,) in [0, 1], used as cfg.iou_confidence says: "score": each confidence is multiplied
    by its box's predicted IoU; "rank": also NMS ranks the boxes above the threshold by it,
    and each vote weighs probability times predicted IoU (floored at 1e-3, so that a kept
    box always has support).
    """
    mode = cfg.iou_confidence if quality is not None else "off"
    keep = scores > cfg.score_threshold
    b, s = boxes[keep], scores[keep]
    rank = quality(b) if mode == "rank" else s
    k = nms(b, rank, cfg.nms_iou) if cfg.nms_iou < 1 else rank.argsort(descending=True)
    k = k[: cfg.max_detections]
    out_b, out_s = b[k], s[k]
    if cfg.vote_iou > 0:
        weight = s * rank.clamp(min=1e-3) if mode == "rank" else s
        out_b, support = vote(out_b, b, weight, cfg.vote_iou)
        if cfg.support_scale > 0:
            out_s = confidence(support, cfg.support_scale)
    if mode in ("score", "rank"):
        out_s = out_s * quality(out_b)
    if cfg.vote_iou > 0 or mode in ("score", "rank"):
        order = out_s.argsort(descending=True, stable=True)
        out_b, out_s = out_b[order], out_s[order]
    return out_b, out_s
