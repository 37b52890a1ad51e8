"""R-CNN's bounding-box regression: a ridge regression from a proposal's features to the
offsets (dx, dy, dw, dh) that move it onto its ground-truth box.

Selective search's boxes are loose; the classifier alone can only pick among them, so the
best-scoring box is often a cat's head or a cat plus a sofa. Girshick et al. (R-CNN, 2014,
appendix C) fit this regressor on the frozen features and gained 3-4 mAP points; on
cats-voc it moves the top box over the IoU 0.5 line on many photos (docs/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn


def box_deltas(props: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """R-CNN's targets: centre shift in units of the proposal's size, log size ratio."""
    pw, ph = props[:, 2] - props[:, 0], props[:, 3] - props[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = (gt[:, 0] + gw / 2 - props[:, 0] - pw / 2) / pw
    dy = (gt[:, 1] + gh / 2 - props[:, 1] - ph / 2) / ph
    return torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph)], 1)


def apply_deltas(props: torch.Tensor, d: torch.Tensor, width: float, height: float) -> torch.Tensor:
    pw, ph = props[:, 2] - props[:, 0], props[:, 3] - props[:, 1]
    cx = props[:, 0] + pw / 2 + d[:, 0] * pw
    cy = props[:, 1] + ph / 2 + d[:, 1] * ph
    # A size change beyond e^±2 is never a real correction; clamp as Fast R-CNN does.
    w = pw * torch.exp(d[:, 2].clamp(-2, 2))
    h = ph * torch.exp(d[:, 3].clamp(-2, 2))
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clamp(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clamp(0, height)
    return out


def fit_ridge(x: torch.Tensor, targets: torch.Tensor, lam: float) -> nn.Linear:
    """The ridge solution as a Linear layer, in float64.

    Solved in the dual (n x n) form: the features are wider (1280 x grid^2) than there are
    training boxes (a few thousand), so this is the cheaper and better-conditioned system.
    """
    if len(x) == 0:
        raise ValueError("no proposal overlaps a ground-truth box at IoU >= 0.5: nothing to "
                         "fit the box regressor on")  # fmt: skip
    x = x.double()
    t = targets.double()
    mu, tmu = x.mean(0), t.mean(0)
    xc = x - mu
    gram = xc @ xc.T
    gram.diagonal().add_(lam)
    w = xc.T @ torch.linalg.solve(gram, t - tmu)  # (D, 4)
    layer = nn.Linear(x.shape[1], 4)
    with torch.no_grad():
        layer.weight.copy_(w.T.float())
        layer.bias.copy_((tmu - mu @ w).float())
    return layer
