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


def fit_ridge(x: torch.Tensor, targets: torch.Tensor, lam: float, block: int = 2048) -> nn.Linear:
    """The ridge solution of x (n, d) -> targets (n, k) on centred data, as a Linear layer
    d -> k, solved in float64.

    Solved in the smaller of the two equal forms: the primal (d x d: X'X + lam I) when there
    are more rows than features (the mirrored rows and the IoU predictor's), the dual (n x n:
    XX' + lam I) otherwise. Either system is summed from `block` rows at a time made float64
    and centred, so memory holds the system and a block, never a float64 copy of x.
    """
    n, d = x.shape
    if n == 0:
        raise InputError(
            "no indexed box overlaps a target box enough to fit the box "
            "regressor on: nothing to fit"
        )
    t = targets.double()
    tmu = t.mean(0)
    tc = t - tmu
    starts = range(0, n, block)
    mu = sum(x[s : s + block].double().sum(0) for s in starts) / n

    def rows(s: int) -> torch.Tensor:
        return x[s : s + block].double() - mu

    if n > d:
        system, rhs = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, t.shape[1]).double()
        for s in starts:
            xs = rows(s)
            system.addmm_(xs.T, xs)
            rhs.addmm_(xs.T, tc[s : s + block])
        system.diagonal().add_(lam)
        w = torch.linalg.solve(system, rhs)  # (d, k)
    else:
        system = torch.empty(n, n, dtype=torch.float64)
        for s in starts:
            xs = rows(s)
            for r in starts[s // block :]:
                part = xs @ rows(r).T
                system[s : s + block, r : r + block] = part
                system[r : r + block, s : s + block] = part.T
        system.diagonal().add_(lam)
        alpha = torch.linalg.solve(system, tc)  # (n, k)
        del system
        w = sum(rows(s).T @ alpha[s : s + block] for s in starts)
    layer = nn.Linear(d, t.shape[1])
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
