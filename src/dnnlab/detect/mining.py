"""Hard-negative mining (R-CNN, Girshick et al., CVPR 2014): the training photos' negative
proposals that the trained head scores highest, added to its training set for another round
(training only: `detect train --hard-negative-rounds`, train.train_hard_negatives, and
benchmarks/cv_detect.py).

The index holds a sample of each photo's negatives (--max-neg-per-image, mostly at random);
most of the thousands of others are easy, and a head trained on a random few may still
score some background highly. A photo's pool is every proposal the build would label
negative (labelling.label_proposals: best IoU with every target box below --neg-iou, at
least --min-area pixels), each box once, less the boxes the head already trains on. Each
round scores the pool with the head as it stands and moves each photo's k highest out of
the pool into the training set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dnnlab.detect.labelling import label_proposals


def negative_pool(
    props: np.ndarray, targets: np.ndarray, neg_iou: float, min_area: float, taken: np.ndarray
) -> np.ndarray:
    """One photo's negative proposals (n, 4) float32, in proposal order, each box once, less
    the boxes in taken (m, 4) (exact coordinates: the caller gives both as the index has
    them)."""
    boxes, labels, _, _ = label_proposals(props, targets, neg_iou, neg_iou, min_area)
    seen = {tuple(b) for b in np.asarray(taken, np.float32).reshape(-1, 4).tolist()}
    keep = []
    for i, b in enumerate(boxes.tolist()):
        if labels[i] == 0 and tuple(b) not in seen:
            seen.add(tuple(b))
            keep.append(i)
    return boxes[keep].reshape(-1, 4)


def hardest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k highest scores, highest first; equal scores in position order."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]


@torch.no_grad()
def mine_round(
    model, pools: dict, features_of: Callable, k: int
) -> dict[object, tuple[np.ndarray, torch.Tensor]]:
    """{photo: (positions in its pool, their features (<= k, spec.dim))} of each photo's k
    hardest negatives: those of its pool (pools: {photo: boxes (n, 4)}) the model's head
    gives the highest probability of the target, on the features `features_of(photo)(boxes)`
    rounded to float16 as the training cache. Photos with an empty pool are left out."""
    model.eval()
    out = {}
    for photo, pool in pools.items():
        if len(pool) == 0:
            continue
        x = features_of(photo)(pool).cpu().half().float()
        pick = hardest(model.scores(x.to(model.mean.device)).cpu(), k)
        out[photo] = (pick.numpy(), x[pick])
    return out
