"""separability()'s neighbour search and its per-sample tallies: the features normalized on
the device, one k-nearest search (filling the linear classifier's Gram on the way when shared:
knn.GramBlocks, a reducer of the search's walk over block pairs), the tallies of each measure,
k-NN votes and NC1.

The tallies are a function of each row's certified neighbours, not of the block products: a
row's k nearest are known only after every block pair holding it has been walked, merged
across processes and certified (knn.finalize), so they are a row-wise map of the search's
answer, not reducers of its walk. NC1 and CSI need class centres first (a pass over row
blocks, knn.class_centers, whose chunk sums keep their order), then a second pass."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

import dnnlab.separability.knn as knn
from dnnlab.errors import InputError, UndefinedMeasure
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.separability.inputs import check_finite
from dnnlab.separability.knn import class_centers
from dnnlab.separability.linear import SharedWork
from dnnlab.separability.nc1 import nc1_values
from dnnlab.separability.normalize import NormalizedRows, feature_stats, normalize_with_norms
from dnnlab.separability.vocabulary import NO_SEARCH, ROW_KINDS, Measure
from dnnlab.utils.chunks import chunk_rows


def normalize_on_device(x, dev, normalize_method, compute_dtype, in_place, share=False):
    """x (N, D) -> (a (N, D) normalized in compute_dtype on dev, squared row norms sq (N,),
    and with share a linear.SharedWork holding a, its statistics and an empty N x N Gram for
    the search to fill; else None). A FeatureFile gives a NormalizedRows view: its rows
    are read and normalized block by block, never all at once."""
    streamed = isinstance(x, FeatureFile)
    xd = x.to(dev, non_blocking=True) if not streamed and x.device != dev else x
    stats = feature_stats(xd, normalize_method) if share or in_place or streamed else None
    if stats is not None and not all(bool(torch.isfinite(t).all()) for t in stats):
        check_finite(x)  # before normalizing in place spreads a NaN over every row
    if streamed:
        a = NormalizedRows(x, *stats, compute_dtype, dev)
        sq = knn.sq_norms(a)
    elif normalize_method == "none" and xd.dtype == compute_dtype and xd.is_contiguous():
        a, sq = xd, knn.sq_norms(xd)  # a is only read afterwards, so no copy is needed
    else:
        a, sq = normalize_with_norms(
            xd, normalize_method, compute_dtype, inplace=in_place, stats=stats
        )
    if not bool(torch.isfinite(sq).all()):
        check_finite(x)  # names the offending rows
        if normalize_method == "zscore":  # a spread beyond float64 (|x| near 1e154 or more)
            raise InputError(
                "features overflow once normalized: a feature's spread is too large for "
                "float64 (values near 1e154 or larger); rescale them"
            )
        raise InputError(
            f"features overflow {str(compute_dtype).removeprefix('torch.')} once normalized "
            "(squared row norms beyond its range); rescale them or use normalize='zscore'"
        )
    if not share:
        return a, sq, None
    n = a.shape[0]
    return a, sq, SharedWork(a, *stats, torch.empty((n, n), dtype=a.dtype, device=dev))


def _neighbour_tallies(
    a, sq, codes, wanted: list[Measure], k, block, mem_elems, *, group, progress, stats, work
):
    """One k-nearest search over a (N, D) -> (same, votes).

    same[r] (N,) int64: how many of each sample's r nearest share its label, for each order
    r a measure needs; votes[k] (N,) bool: the k nearest's majority label is the sample's own.
    """
    bar = _progress_bar(a.shape[0], block, group, progress)
    nbr = knn.k_nearest(
        a,
        k,
        block,
        sq=sq,
        mem_elems=mem_elems,
        progress=bar.update if bar else None,
        group=group,
        stats=stats if stats is not None else knn.SearchStats(),
        reducers=() if work is None else (knn.GramBlocks(work.gram, group),),
    )
    if bar:
        bar.close()
    eq = codes[nbr] == codes[:, None]
    cum = eq.to(torch.int64).cumsum(1)  # cum[:, r-1] = neighbours among the r nearest
    same = {r: cum[:, r - 1] for r in sorted({m.order for m in wanted if m.kind not in NO_SEARCH})}
    votes = {
        m.order: knn_vote(codes[nbr[:, : m.order]]) == codes for m in wanted if m.kind == "knn"
    }
    return same, votes


def nc1_step(a, codes, wanted, names, mem_elems: int, undefined: str, reason: str | None):
    """(None, []) when nc1 is not asked for; else ((nc1, [per class]), []), or NaNs and
    [the reason NC1 is undefined] when undefined="nan"."""
    if not any(m.kind == "nc1" for m in wanted):
        return None, []
    if reason is None:
        try:
            return nc1_values(a, codes, len(names), names, mem_elems), []
        except UndefinedMeasure as e:
            if undefined != "nan":
                raise
            # Named, not measured: NaN with the reason (the probe goes on to other layers).
            reason = str(e)
    return (float("nan"), [float("nan")] * len(names)), [reason]


def row_tallies(
    a,
    sq,
    codes,
    wanted,
    n_classes: int,
    k: int,
    block: int,
    mem_elems: int,
    *,
    group=None,
    progress: bool = False,
    stats: knn.SearchStats | None = None,
    work=None,
) -> dict[str, torch.Tensor]:
    """{measure name: (N,) int64 per-sample tally} for the measures that have one, from a
    search of order k (0: none) in blocks of `block` rows with `mem_elems` elements for
    refinement tiles; the search fills work.gram (linear.SharedWork) on the way when given."""
    same, votes, own_center = {}, {}, None
    if k:
        same, votes = _neighbour_tallies(
            a, sq, codes, wanted, k, block, mem_elems,
            group=group, progress=progress, stats=stats, work=work,
        )  # fmt: skip
    if any(m.kind == "csi" for m in wanted):
        centers = class_centers(a, codes, n_classes)
        own_center = knn.nearest_center(a, centers, block, mem_elems, sq=sq) == codes
    return {m.name: _row_hits(m, same, votes, own_center) for m in wanted if m.kind in ROW_KINDS}


def _row_hits(m: Measure, same: dict, votes: dict, own_center) -> torch.Tensor:
    """(N,) int64 tally of measure m per sample: 1/0 hits; for soft, same-label neighbours."""
    if m.kind == "csi":
        return own_center.to(torch.int64)
    if m.kind == "soft":
        return same[m.order]  # numerator; denominator r in _assemble
    if m.kind == "anti":
        return (same[m.order] == 0).to(torch.int64)
    if m.kind == "knn":
        return votes[m.order].to(torch.int64)
    return (same[m.order] == m.order).to(torch.int64)  # si, hsi


def knn_vote(lab: torch.Tensor, rows_per_step: int = 1 << 16) -> torch.Tensor:
    """Majority label of each row of `lab` (N, K), neighbours' labels in distance order.

    A tie between labels goes to the tied label met first in the row: each position's label
    is counted over the row, and the first position whose label has the top count wins.
    Memory O(rows_per_step * K^2), whatever the number of classes.
    """
    n, k = lab.shape
    out = torch.empty(n, dtype=lab.dtype, device=lab.device)
    step = chunk_rows(k * k, rows_per_step)
    for s in range(0, n, step):
        c = lab[s : s + step]
        counts = (c[:, :, None] == c[:, None, :]).sum(2)  # counts[i, j]: votes for c[i, j]
        top = counts == counts.max(1, keepdim=True).values
        first = top.to(torch.int8).argmax(1)  # argmax returns the first of equal maxima
        out[s : s + step] = c.gather(1, first[:, None])[:, 0]
    return out


def _progress_bar(n: int, block: int, group, progress: bool):
    if not progress:
        return None
    rank, world = knn._dist_info(group)
    nb = math.ceil(n / block)
    total = len(knn.pair_schedule(nb, rank, world))
    return tqdm(total=total, desc="neighbour search", unit="block", disable=rank != 0)
