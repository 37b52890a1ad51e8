"""Fitting R-CNN's box regressors: ridge regressions from a box's features to the offsets
(dx, dy, dw, dh) that move it onto its target box (training only; detection applies them
with boxes.apply_deltas).

Selective search's boxes are loose; the classifier alone can only pick among them, so the
best-scoring box is often a cat's head or a cat plus a sofa. Girshick et al. (R-CNN, 2014,
appendix C) fit this regressor on the frozen features and gained 3-4 mAP points.
"""

from __future__ import annotations

import torch
from torch import nn

from dnnlab.detect.boxes import box_deltas
from dnnlab.detect.config import RegressorConfig
from dnnlab.errors import InputError


def fit_ridge(x: torch.Tensor, targets: torch.Tensor, lam: float) -> nn.Linear:
    """The ridge solution of x (n, d) -> targets (n, k) as a Linear layer d -> k, in float64.

    Solved in the dual (n x n) form: the features are wider (1280 x grid^2) than there are
    training boxes (a few thousand), so this is the cheaper and better-conditioned system.
    """
    if len(x) == 0:
        raise InputError(
            "no indexed box overlaps a target box enough to fit the box "
            "regressor on: nothing to fit"
        )
    x = x.double()
    t = targets.double()
    mu, tmu = x.mean(0), t.mean(0)
    xc = x - mu
    gram = xc @ xc.T
    gram.diagonal().add_(lam)
    w = xc.T @ torch.linalg.solve(gram, t - tmu)  # (D, 4)
    layer = nn.Linear(x.shape[1], t.shape[1])
    with torch.no_grad():
        layer.weight.copy_(w.T.float())
        layer.bias.copy_((tmu - mu @ w).float())
    return layer


def fit_regressor(
    feats: torch.Tensor, rows: list[dict], idx, lam: float, min_iou: float
) -> nn.Linear:
    """Ridge on the rows of idx that have a target box at IoU >= min_iou."""
    use = [i for i in idx if rows[i]["gt"] is not None and rows[i]["iou"] >= min_iou]
    props = torch.tensor([rows[i]["box"] for i in use], dtype=torch.float32).reshape(-1, 4)
    gt = torch.tensor([rows[i]["gt"] for i in use], dtype=torch.float32).reshape(-1, 4)
    return fit_ridge(feats[use], box_deltas(props, gt), lam)


def fit_regressors(feats: torch.Tensor, rows: list[dict], idx, cfg: RegressorConfig):
    """(first round's regressor, later rounds' or None): coarse then fine, or R-CNN's one."""
    fine = fit_regressor(feats, rows, idx, cfg.reg_lambda, cfg.reg_min_iou)
    if not cfg.two:
        return fine, None
    return fit_regressor(feats, rows, idx, cfg.reg_lambda, cfg.coarse_min_iou), fine
