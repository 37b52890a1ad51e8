"""Neural collapse NC1 (Papyan, Han and Donoho 2020): trace(Sigma_W Sigma_B^+) / C, streamed
over rows in float64, without a D x D matrix."""

from __future__ import annotations

import numpy as np
import torch

from dnnlab.errors import UndefinedMeasure
from dnnlab.separability.knn import class_centers
from dnnlab.utils.chunks import chunk_rows


def check_nc1_classes(names: list[str], counts: np.ndarray) -> None:
    """NC1 needs two classes, each with two samples (a lone sample has no within-class spread)."""
    if len(names) < 2:
        raise UndefinedMeasure(f"nc1 needs at least 2 classes; all samples have label {names[0]!r}")
    lone = [c for c, k in zip(names, counts, strict=True) if k < 2]
    if lone:
        raise UndefinedMeasure(
            f"nc1: class {lone[0]!r} has one sample; NC1 needs at least 2 per class"
            + (f" ({len(lone)} such classes: {lone[:5]})" if len(lone) > 1 else "")
        )


def nc1_values(a: torch.Tensor, codes: torch.Tensor, n_classes: int, names, mem_elems: int):
    """NC1 = trace(Sigma_W Sigma_B^+) / C and its per-class terms, without a D x D matrix.

    With M = [mu_c - mu_G] (D x C) = U S V^T (thin SVD), Sigma_B = M M^T / C has
    pseudo-inverse C U S^-2 U^T, so NC1 = sum_j (u_j^T Sigma_W u_j) / s_j^2: only the
    within-class residuals projected on the <= C directions u_j are needed, streamed over
    rows in float64. Directions with s_j <= s_max * max(D, C) * eps span the null space
    (numpy's matrix_rank rule). Per class c, Sigma_W is replaced by class c's own covariance
    (1/n_c) sum_{y_i = c} ...; NC1 is their average weighted by n_c / N.
    Returns (nc1, [per-class value]).
    """
    n, d = a.shape
    centers = class_centers(a, codes, n_classes)  # float64
    counts = torch.bincount(codes, minlength=n_classes).to(torch.float64)
    mu_g = (centers * counts[:, None]).sum(0) / n
    u, s, _ = torch.linalg.svd((centers - mu_g).T, full_matrices=False)
    keep = s > s.max() * max(d, n_classes) * torch.finfo(torch.float64).eps
    if not bool(keep.any()):
        raise UndefinedMeasure("nc1: every class has the same mean; Sigma_B is 0 and NC1 undefined")
    u, s = u[:, keep], s[keep]
    sums = torch.zeros((n_classes, u.shape[1]), dtype=torch.float64, device=a.device)
    step = chunk_rows(d, mem_elems)
    for r0 in range(0, n, step):
        c = codes[r0 : r0 + step]
        proj = (a[r0 : r0 + step].to(torch.float64) - centers[c]) @ u
        sums.index_add_(0, c, proj.square())
    per_class = (sums / s.square()).sum(1) / counts  # u^T Sigma_W,c u / s^2, summed over j
    total = float((per_class * counts).sum() / n)
    return total, [float(v) for v in per_class]
