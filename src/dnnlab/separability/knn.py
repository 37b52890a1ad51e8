"""Exact k-nearest-neighbour search that never holds an N x N matrix.

Design (see docs/separability.md):
1. Approximate pass. Rows are cut into blocks of B. For every block pair (I, J) with J >= I,
   one matrix multiply gives the B x B squared distances |a|^2 + |b|^2 - 2 a.b, which update
   the running top-k' of the rows of I (columns J) *and* of the rows of J (columns I): each
   pair is computed once. Memory: the data, the N x k' state and O(B^2) workspace. The walk
   over pairs is one function (walk_pairs) handing each product block to reducers: the
   top-k' (TopCandidates) and, when the linear classifier shares the work, its Gram
   (GramBlocks).
2. Certification. The expanded form carries float rounding of about u*sqrt(D)*(|a|^2+|b|^2).
   A row whose k+1 best approximate distances are separated by more than a generous bound
   of that error is already exact. Other rows (duplicates, exact ties, near ties) have their
   candidates re-measured directly, (a - b)^2 summed in float64, and ordered by
   (distance, index): among equal distances the lowest index wins, on every device.
3. Fallback. If even the k' candidates may not hold every point tied with the k-th (a large
   group of points at one distance), the row is searched again against all N points, its
   tied candidates re-measured by chunks with a running top-k: memory O(chunk x D).
0. Duplicates first. Rows equal value for value are at distance exactly 0 from each other
   and at a positive distance from every other row, so a row with at least k copies has
   as its k nearest the k lowest-indexed of them, and no other row can have more than k+1
   members of one group of copies before the group's later members among its k nearest
   (they tie, and the lower index wins). Only the first k+1 members of each group are
   searched; the others get their group's first k. Two distinct rows repeated 20,000 times
   are a search of 2(k+1) rows, not 20,000 rows each falling back to a search of all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from dnnlab.errors import BudgetError
from dnnlab.utils.chunks import chunk_rows

# Bound on the rounding error of one expanded-form distance, as a multiple of
# u*sqrt(D)*(|a|^2+|b|^2). The measured worst case is about 1x that scale (1.1 at D=16, 0.03
# at D=16384; tests/test_knn.py checks it), so 8x leaves a wide margin.
TOL_FACTOR = 8.0
EXTRA_CANDIDATES = 8


@dataclass
class SearchStats:
    block: int = 0
    pairs: int = 0
    gemm_seconds: float = 0.0
    gemm_flops: float = 0.0
    refined_rows: int = 0
    fallback_rows: int = 0
    duplicate_rows: int = 0  # rows answered from their copies, not searched
    timings: dict = field(default_factory=dict)


def _unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def sq_norms(a: torch.Tensor) -> torch.Tensor:
    """Squared row norms (torch's norm kernel sums in cascades: accurate in float32)."""
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    step = chunk_rows(a.shape[1], 1 << 22)
    for s in range(0, a.shape[0], step):
        out[s : s + step] = torch.linalg.vector_norm(a[s : s + step], dim=1).square_()
    return out


def _merge(best_d, best_i, new_d, new_i, kk):
    """Keep the kk smallest of the running candidates and new ones (unordered)."""
    d = torch.cat([best_d, new_d], dim=1)
    i = torch.cat([best_i, new_i], dim=1)
    top_d, pos = torch.topk(d, kk, dim=1, largest=False, sorted=False)
    return top_d, torch.gather(i, 1, pos)


def _block_topk(d: torch.Tensor, col0: int, kk: int):
    k = min(kk, d.shape[1])
    top_d, pos = torch.topk(d, k, dim=1, largest=False, sorted=False)
    return top_d, pos.add_(col0)


def exact_sqdist(a: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor, mem_elems: int):
    """Direct squared distances sum((a[row] - a[c])^2) for each row and candidate column.

    Unlike the expanded form there is no cancellation: duplicates give exactly 0 and equal
    distances compare equal, so the (distance, index) order below is exact. Returned as
    float64 so callers can compare against float64 tolerances.
    """
    r, c = cand.shape
    out = torch.empty((r, c), dtype=torch.float64, device=a.device)
    step = chunk_rows(c * a.shape[1], mem_elems)
    for s in range(0, r, step):
        cs = cand[s : s + step]
        x = a.index_select(0, cs.reshape(-1)).view(cs.shape[0], c, -1)
        diff = x.sub_(a.index_select(0, rows[s : s + step])[:, None, :])
        out[s : s + step] = torch.linalg.vector_norm(diff, dim=2).square_()
    return out


def order_exact(dist64: torch.Tensor, idx: torch.Tensor):
    """Sort each row by (distance, index): sort by index, then stably by distance."""
    idx_sorted, p = torch.sort(idx, dim=1)
    d = torch.gather(dist64, 1, p)
    d_sorted, p2 = torch.sort(d, dim=1, stable=True)
    return d_sorted, torch.gather(idx_sorted, 1, p2)


def pair_schedule(n_blocks: int, rank: int = 0, world: int = 1):
    pairs = [(i, j) for i in range(n_blocks) for j in range(i, n_blocks)]
    return pairs[rank::world]


def walk_pairs(
    a: torch.Tensor,
    block: int,
    reducers: list,
    stats: SearchStats,
    progress: Callable | None = None,
    group=None,
) -> None:
    """The one walk over block pairs: for each pair (I, J), J >= I, of blocks of `block`
    rows, the product g = a[I] a[J]^T (rows i0:i1 against rows j0:j1) is formed once and
    handed to each reducer in turn, reducer(g, i0, i1, j0, j1): the shape of scikit-learn's
    pairwise_distances_chunked(X, reduce_func=...), but over pairs of row blocks (a pair
    stands for both (I, J) and (J, I): the reducer reads g for the one and g.T for the
    other) and with products, of which a distance is one step. As a row's columns come in
    many pairs, a reducer keeps a running state (sklearn's reduce_func returning None, for
    in-place operations); it may read g, and the last may overwrite it (TopCandidates turns
    it into distances in place: one B x B buffer, the memory model's).
    With several processes (group, or the world group), each walks its share of the pairs
    (pair_schedule, round-robin) and then every reducer's merge(group) makes its state the
    whole walk's.

    The reducers of this walk are what is a function of the block products: the search's
    candidates and the linear classifier's Gram. The measures' tallies are not (their rows'
    neighbours are known only once every pair holding them has been seen and certified:
    tallies.row_tallies), nor are the class centres of CSI and NC1 (a pass over row blocks
    whose sums must keep their order: knn.class_centers).
    """
    rank, world = _dist_info(group)
    timed = a.device.type == "cpu"
    stats.block = block
    for bi, bj in pair_schedule(math.ceil(a.shape[0] / block), rank, world):
        i0, i1 = bi * block, min(a.shape[0], (bi + 1) * block)
        j0, j1 = bj * block, min(a.shape[0], (bj + 1) * block)
        t0 = time.perf_counter() if timed else 0.0
        g = torch.mm(a[i0:i1], a[j0:j1].T)
        if timed:
            stats.gemm_seconds += time.perf_counter() - t0
        stats.gemm_flops += 2.0 * (i1 - i0) * (j1 - j0) * a.shape[1]
        for reduce in reducers:
            reduce(g, i0, i1, j0, j1)
        stats.pairs += 1
        if progress is not None:
            progress(1)
    if world > 1:
        for reducer in reducers:
            reducer.merge(group)


class TopCandidates:
    """Reducer of walk_pairs (the search's own, step 1): the running top-kk (unordered) of
    every row, `best_d` (N, kk) approximate squared distances and `best_i` their columns.
    Overwrites each block with its distances, so it is the walk's last reducer."""

    def __init__(self, sq: torch.Tensor, kk: int, dtype: torch.dtype):
        n, dev = sq.shape[0], sq.device
        self.sq, self.kk = sq, kk
        self.best_d = torch.full((n, kk), float("inf"), dtype=dtype, device=dev)
        self.best_i = torch.full((n, kk), -1, dtype=torch.long, device=dev)

    def __call__(self, g: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
        sq, kk, best_d, best_i = self.sq, self.kk, self.best_d, self.best_i
        # d = |a|^2 + |b|^2 - 2 a.b, in place to keep one B x B buffer.
        d = g.mul_(-2).add_(sq[i0:i1, None]).add_(sq[None, j0:j1])
        if i0 == j0:
            d.fill_diagonal_(float("inf"))
        nd, ni = _block_topk(d, j0, kk)
        best_d[i0:i1], best_i[i0:i1] = _merge(best_d[i0:i1], best_i[i0:i1], nd, ni, kk)
        if i0 != j0:
            nd, ni = _block_topk(d.T, i0, kk)
            best_d[j0:j1], best_i[j0:j1] = _merge(best_d[j0:j1], best_i[j0:j1], nd, ni, kk)

    def merge(self, group) -> None:
        """Every process's candidates gathered, and the kk best of them kept."""
        world = dist.get_world_size(group)
        all_d = _all_gather_cat(self.best_d, group, world)
        all_i = _all_gather_cat(self.best_i, group, world)
        self.best_d, pos = torch.topk(all_d, self.kk, dim=1, largest=False, sorted=False)
        self.best_i = torch.gather(all_i, 1, pos)


class GramBlocks:
    """Reducer of walk_pairs: the products a a^T written into `gram` (N, N), both triangles
    of every pair, for the linear classifier on the same features (linear.SharedWork). Under
    torch.distributed (group, or the world group) the buffer is zeroed first and merge sums
    the processes' blocks: every element comes from one process, so the sum is exact."""

    def __init__(self, gram: torch.Tensor, group=None):
        self.gram = gram
        if _dist_info(group)[1] > 1:
            gram.zero_()

    def __call__(self, g: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
        self.gram[i0:i1, j0:j1] = g
        if i0 != j0:
            self.gram[j0:j1, i0:i1] = g.T

    def merge(self, group) -> None:
        dist.all_reduce(self.gram, group=group)


def finalize(
    a: torch.Tensor,
    sq: torch.Tensor,
    best_d: torch.Tensor,
    best_i: torch.Tensor,
    k: int,
    rows: torch.Tensor,
    stats: SearchStats,
    mem_elems: int,
) -> torch.Tensor:
    """Turn approximate candidates of `rows` into the exact, tie-ordered k nearest."""
    n, dim = a.shape
    kk = best_d.shape[1]
    d_s, p = torch.sort(best_d, dim=1)
    i_s = torch.gather(best_i, 1, p)
    u = _unit_roundoff(a.dtype)
    # Per-value error bound; the largest norm in the data covers points outside the candidates.
    scale = (sq[rows] + sq.max()).to(torch.float64)
    tol = (TOL_FACTOR * u * math.sqrt(dim)) * scale
    d64 = d_s.to(torch.float64)
    upto = min(k + 1, kk)
    gaps = d64[:, 1:upto] - d64[:, : upto - 1]
    ambiguous = (gaps <= 2 * tol[:, None]).any(1) if upto > 1 else torch.zeros_like(tol, dtype=bool)
    out = i_s[:, :k].clone()
    amb = ambiguous.nonzero().squeeze(1)
    stats.refined_rows += int(amb.numel())
    if amb.numel() == 0:
        return out
    ex_d, ex_i = order_exact(exact_sqdist(a, rows[amb], i_s[amb], mem_elems), i_s[amb])
    out[amb] = ex_i[:, :k]
    if kk >= n - 1:
        return out  # the candidates are every other point: nothing can be missing
    # Candidates may be incomplete when the last one is within tolerance of the k-th: some
    # point outside could tie with or beat the k-th. Search those rows against all points.
    incomplete = d64[amb, kk - 1] - d64[amb, k - 1] <= 2 * tol[amb]
    redo = amb[incomplete]
    stats.fallback_rows += int(redo.numel())
    for r in redo.tolist():
        out[r] = _full_row(a, sq, int(rows[r]), k, float(tol[r]), mem_elems)
    return out


def _full_row(a, sq, row: int, k: int, tol: float, mem_elems: int) -> torch.Tensor:
    """The exact k nearest of `row` among all rows. Every point within the error bound of
    the k-th is re-measured directly, by chunks of candidates that fit mem_elems, keeping
    the k best by (distance, index): a distance shared by thousands of points costs time in
    proportion, never memory."""
    v = a[row : row + 1][0].clone()
    dots = torch.empty_like(sq)
    step = chunk_rows(a.shape[1], mem_elems)
    for s in range(0, a.shape[0], step):  # by row chunks: a may be read from a file
        dots[s : s + step] = torch.mv(a[s : s + step], v)
    d = (sq - 2 * dots).add_(sq[row]).to(torch.float64)
    d[row] = float("inf")
    kth = torch.kthvalue(d, k).values  # within tol of the true k-th: keep all within 2 tol
    cand = (d <= kth + 2 * tol).nonzero().squeeze(1)
    del d, dots
    this = torch.tensor([row], device=a.device)
    best_d = torch.empty((1, 0), dtype=torch.float64, device=a.device)
    best_i = torch.empty((1, 0), dtype=torch.long, device=a.device)
    for s in range(0, cand.numel(), step):
        c = cand[None, s : s + step]
        ex = exact_sqdist(a, this, c, mem_elems)
        best_d, best_i = order_exact(torch.cat([best_d, ex], 1), torch.cat([best_i, c], 1))
        best_d, best_i = best_d[:, :k], best_i[:, :k]
    return best_i[0]


class _RowsOf:
    """Rows `index` (ascending) of a (a tensor or separability's NormalizedRows) as the
    matrix the search reads: slices and index_select; nothing is copied beforehand."""

    def __init__(self, a, index: torch.Tensor):
        self.a, self.index = a, index
        self.shape = (index.numel(), a.shape[1])
        self.dtype, self.device = a.dtype, a.device

    def __getitem__(self, key: slice) -> torch.Tensor:
        return self.a.index_select(0, self.index[key])

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        return self.a.index_select(0, self.index[idx])


def _fingerprints(a, mem_elems: int) -> torch.Tensor:
    """(N, 2) int64: two weighted sums of each row's bit patterns, equal for rows that are
    equal value for value (-0.0 counted as 0.0) whatever their chunk. Integer sums are exact
    in any order; the weights keep them below 2**62 (no overflow)."""
    n = a.shape[0]
    bits_dtype = torch.int16 if a.dtype.itemsize == 2 else torch.int32
    cols = a.shape[1] * a.dtype.itemsize // bits_dtype.itemsize
    gen = torch.Generator().manual_seed(36)  # the same weights on every process
    top = 1 << max(1, 31 - cols.bit_length())  # |bits| < 2**31, weights < top, cols terms
    w = torch.randint(1, top, (2, cols), generator=gen, dtype=torch.int64).to(a.device)
    out = torch.empty((n, 2), dtype=torch.int64, device=a.device)
    step = chunk_rows(4 * cols, mem_elems)  # int64 bits and a product: 4 float32's worth
    for s in range(0, n, step):
        bits = (a[s : s + step] + 0.0).view(bits_dtype).to(torch.int64)  # -0.0 + 0.0 = 0.0
        for j in range(2):
            out[s : s + step, j] = (bits * w[j]).sum(1)
    return out


def _duplicate_answers(a, k: int, mem_elems: int):
    """(kept, dropped, answers) when some rows have more than k copies: `kept` the rows to
    search (ascending; of each group of equal rows only its first k+1), `dropped` the
    others and `answers` (len(dropped), k) their k nearest (their group's first k, in index
    order). None when no group of equal rows has more than k+1 members."""
    fp = _fingerprints(a, mem_elems)
    _, group, counts = torch.unique(fp, dim=0, return_inverse=True, return_counts=True)
    if int(counts.max()) <= k + 1:
        return None
    # Rows of fingerprint groups large enough to matter, by (group, index).
    members = (counts[group] > k + 1).nonzero().squeeze(1)
    members = members[torch.sort(group[members], stable=True).indices]
    g = group[members]
    starts = torch.ones_like(g, dtype=torch.bool)
    starts[1:] = g[1:] != g[:-1]
    rep = members[starts][torch.cumsum(starts, 0) - 1]  # each member's group's first row
    # A shared fingerprint is a hint: a row is grouped only when equal to its first.
    equal = torch.empty_like(members, dtype=torch.bool)
    step = chunk_rows(2 * a.shape[1], mem_elems)
    for s in range(0, members.numel(), step):
        rows = a.index_select(0, members[s : s + step])
        equal[s : s + step] = (rows == a.index_select(0, rep[s : s + step])).all(1)
    members, rep = members[equal], rep[equal]
    first = torch.ones_like(rep, dtype=torch.bool)
    first[1:] = rep[1:] != rep[:-1]
    start = torch.cumsum(first, 0) - 1  # group number of each member
    group_start = first.nonzero().squeeze(1)
    rank = torch.arange(members.numel(), device=a.device) - group_start[start]
    size = torch.bincount(start)[start]
    drop = (size > k + 1) & (rank > k)
    if not bool(drop.any()):
        return None
    dropped = members[drop]
    answers = members[group_start[start[drop]][:, None] + torch.arange(k, device=a.device)]
    keep = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    keep[dropped] = False
    return keep.nonzero().squeeze(1), dropped, answers


def choose_block(
    n: int, dim: int, workspace_bytes: int, itemsize: int, device: torch.device, row_bytes: int = 0
) -> int:
    """Block rows: as large as the workspace (about four B x B buffers, and row_bytes for
    each block row the caller holds beside them) allows, up to a cap.

    Smaller blocks waste less on the diagonal pairs, which are computed whole: the matrix
    work is (1 + 1/blocks) / 2 of the full N x N. On a CPU, MKL runs B x D x B products
    with B around 512-768 as fast as larger ones when D is large; when D is small the
    per-pair top-k dominates and larger blocks amortize it better.
    """
    if device.type == "cpu":
        cap = 768 if dim >= 2048 else 2048
    else:
        cap = 4096
    # 4 * itemsize * b^2 + row_bytes * b <= workspace
    w, q = max(workspace_bytes, 0), 4 * itemsize
    b = int((math.sqrt(row_bytes * row_bytes + 4 * q * w) - row_bytes) / (2 * q))
    b = min(cap, b - b % 64)
    if b < 64:
        raise BudgetError(
            f"the memory budget leaves {workspace_bytes / 2**20:.0f} MiB of workspace, "
            "less than one 64 x 64 block needs; raise max_memory"
        )
    return min(b, max(64, n))


def _dist_info(group):
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather_cat(t: torch.Tensor, group, world: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=1)


def k_nearest(
    a: torch.Tensor,
    k: int,
    block: int,
    *,
    sq: torch.Tensor | None = None,
    mem_elems: int = 1 << 26,
    progress: Callable | None = None,
    group=None,
    stats: SearchStats | None = None,
    reducers: tuple = (),
) -> torch.Tensor:
    """Indices (N, k) of each row's k nearest other rows, ordered by (distance, index).

    With torch.distributed initialized, block pairs are shared round-robin across the
    processes and the candidates merged, so every process returns the same exact answer.
    reducers: more reducers of the walk over block pairs (walk_pairs), such as GramBlocks,
    each seeing every pair's product and merged across processes like the candidates.
    """
    stats = stats if stats is not None else SearchStats()
    n = a.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and N-1 = {n - 1}; got {k}")
    sq = sq_norms(a) if sq is None else sq
    # Copies beyond a group's first k+1 are answered by it (docstring, step 0); not when other
    # reducers walk with the search (the Gram needs every pair).
    dup = _duplicate_answers(a, k, mem_elems) if not reducers else None
    if dup is not None:
        kept, dropped, answers = dup
        stats.duplicate_rows += int(dropped.numel())
        if progress is not None:  # the bar counts the block pairs of all N rows
            rank, world = _dist_info(group)
            spared = len(pair_schedule(math.ceil(n / block), rank, world)) - len(
                pair_schedule(math.ceil(kept.numel() / block), rank, world)
            )
            progress(spared)
        out = torch.empty((n, k), dtype=torch.long, device=a.device)
        out[dropped] = answers
        sub = _search(_RowsOf(a, kept), sq[kept], k, block, mem_elems, progress, group, stats)
        out[kept] = kept[sub]  # kept is ascending: the lowest index still wins a tie
        return out
    return _search(a, sq, k, block, mem_elems, progress, group, stats, reducers)


def _search(a, sq, k, block, mem_elems, progress, group, stats, reducers=()) -> torch.Tensor:
    """k_nearest's search proper (steps 1 to 3 of the module's docstring)."""
    n = a.shape[0]
    top = TopCandidates(sq, min(n - 1, k + EXTRA_CANDIDATES), a.dtype)
    walk_pairs(a, block, [*reducers, top], stats, progress, group)  # top overwrites g
    rows = torch.arange(n, device=a.device)
    return finalize(a, sq, top.best_d, top.best_i, k, rows, stats, mem_elems)


def class_centers(a: torch.Tensor, codes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """float64 means of each class's rows of a (chunk sums in a's dtype, totals in float64)."""
    sums = torch.zeros((n_classes, a.shape[1]), dtype=torch.float64, device=a.device)
    part = torch.empty((n_classes, a.shape[1]), dtype=a.dtype, device=a.device)
    step = chunk_rows(a.shape[1], 1 << 22)
    for s in range(0, a.shape[0], step):
        part.zero_().index_add_(0, codes[s : s + step], a[s : s + step])
        sums += part
    counts = torch.bincount(codes, minlength=n_classes).to(torch.float64)
    return sums / counts[:, None]


def nearest_center(
    a: torch.Tensor,
    centers: torch.Tensor,
    block: int,
    mem_elems: int = 1 << 26,
    sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Index of each row's nearest center; among equal distances the lowest index wins.

    `centers` are float64 (exact means); the fast pass uses them rounded to a's dtype.
    """
    n, dim = a.shape
    c = centers.shape[0]
    sq = sq_norms(a) if sq is None else sq
    c_fast = centers.to(a.dtype)
    csq = centers.square().sum(1).to(a.dtype)
    out = torch.empty(n, dtype=torch.long, device=a.device)
    if c == 1:
        return out.zero_()
    u = _unit_roundoff(a.dtype)
    for s in range(0, n, block):
        e = min(n, s + block)
        d = torch.mm(a[s:e], c_fast.T).mul_(-2).add_(sq[s:e, None]).add_(csq[None, :])
        top_d, top_i = torch.topk(d, 2, dim=1, largest=False, sorted=True)
        out[s:e] = top_i[:, 0]
        tol = (TOL_FACTOR * u * math.sqrt(dim)) * (sq[s:e] + csq.max()).to(torch.float64)
        amb = ((top_d[:, 1] - top_d[:, 0]).to(torch.float64) <= 2 * tol).nonzero().squeeze(1)
        if amb.numel():
            # Re-measure every center exactly for the ambiguous rows.
            rows = amb + s
            step = chunk_rows(c * dim, mem_elems)
            for r0 in range(0, rows.numel(), step):
                rr = rows[r0 : r0 + step]
                ex = (centers[None] - a[rr].to(torch.float64)[:, None]).square_().sum(2)
                out[rr] = ex.argmin(1)  # argmin returns the first (lowest) index among ties
    return out
