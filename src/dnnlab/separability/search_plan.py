"""The memory model of separability()'s neighbour search, which the probe plans with too: the
budget split between the normalized copy, the search state and the blocks, and whether the
linear classifier may share the search's normalized copy and Gram.

    search state   3 * N * k' * (itemsize + 8) + 64 * N    (search_state_bytes)
    one block      (4 * B^2 * itemsize + B * row_bytes) * 4/3    (block_workspace_bytes)

k' = k + knn.EXTRA_CANDIDATES candidates a row; the blocks get 3/4 of the workspace
(knn.choose_block), hence the 4/3."""

from __future__ import annotations

import torch

import dnnlab.separability.knn as knn
from dnnlab.errors import BudgetError
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.separability.linear import linear_budget
from dnnlab.separability.samples import Samples
from dnnlab.utils.sizes import format_size, parse_size

# Elements per tile of the passes that stream rows after the search (refinement, NC1's
# float64 projections): 64 MiB of float64.
STREAM_ELEMS = 1 << 23


def search_state_bytes(n: int, kk: int, itemsize: int) -> int:
    """Bytes the search keeps for its whole run: three N x k' candidate tables (distances
    of `itemsize` bytes, int64 indices) and 64 bytes a row of tallies."""
    return n * kk * (itemsize + 8) * 3 + n * 64


def block_workspace_bytes(block: int, itemsize: int, row_bytes: int = 0) -> int:
    """The workspace whose block share (3/4) holds one block of `block` rows: four
    block x block buffers and, for a file, the block's rows as read (row_bytes each)."""
    return -(-(4 * block * block * itemsize + block * row_bytes) * 4 // 3)


def plan_memory(
    n: int, copy_d: int, d: int, kk: int, itemsize: int, budget: int, row_bytes: int = 0
):
    """Split the budget: the normalized copy (copy_d columns; 0 when normalizing in place or
    reading a file by blocks) and the search state first, the rest for blocks (row_bytes:
    what each block row of a file takes beside them, knn.choose_block)."""
    fixed = n * copy_d * itemsize + search_state_bytes(n, kk, itemsize)
    workspace = budget - fixed
    least_workspace = block_workspace_bytes(64, itemsize, row_bytes) + 4
    if workspace < least_workspace:
        need = fixed + least_workspace
        held = (
            f"the normalized features take {format_size(n * copy_d * itemsize)}, " if copy_d else ""
        )
        raise BudgetError(
            f"max_memory {format_size(budget)} is too small: {held}the search state and one "
            f"64-row block need the rest (N={n}, D={d}); allow at least "
            f"{format_size(need, up=True)}",
            need,
        )
    # Refinement gathers (rows x candidates x D) tiles: give it a quarter, up to
    # STREAM_ELEMS (larger tiles are no faster, only more memory).
    mem_elems = max(d * (kk + 1), min(STREAM_ELEMS, workspace // 4 // 8))
    return workspace * 3 // 4, int(mem_elems)


def plan_search(x, k, compute_dtype, overwrite_input, device, max_memory, block, dev):
    """Memory plan of the search: (normalize in place?, rows per block, refinement elements)."""
    n, d = x.shape
    itemsize = torch.finfo(compute_dtype).bits // 8
    kk = min(n - 1, k + knn.EXTRA_CANDIDATES) if k else 1
    streamed = isinstance(x, FeatureFile)
    in_place = (  # never for a FeatureFile: separability() made overwrite_input False
        overwrite_input
        and x.dtype == compute_dtype
        and x.is_contiguous()
        and (device in (None, "auto") or x.device == torch.device(device))
    )
    copy_d = 0 if in_place or streamed else d
    row_bytes = _streamed_row_bytes(x, itemsize)
    budget = parse_size(max_memory)
    workspace, mem_elems = plan_memory(n, copy_d, d, kk, itemsize, budget, row_bytes)
    if block is None:
        block = knn.choose_block(n, d, workspace, itemsize, dev, row_bytes)
    elif block < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    return in_place, block, mem_elems


def _streamed_row_bytes(x, itemsize: int) -> int:
    """Bytes a block row of a FeatureFile takes while the search reads it (0 in memory):
    the two kept normalized blocks (NormalizedRows), the raw rows as read, their
    conversion and the normalization's temporary."""
    if not isinstance(x, FeatureFile):
        return 0
    raw = max(x.file_dtype.itemsize, 4)
    return x.shape[1] * (2 * itemsize + 2 * raw + max(raw, itemsize))


def can_share(s: Samples, k: int, normalize_method: str, compute_dtype) -> bool:
    """Whether the linear classifier can take the search's normalized copy and Gram: a search
    runs, zscore (its shift is the classifier's centering), the dual form (D > N), float32 (the
    classifier's compute dtype) and two classes at least (else the fit refuses before any work).
    Under torch.distributed the processes sum their blocks (knn.GramBlocks)."""
    if not (k and normalize_method == "zscore" and s.d > s.n and len(s.names) >= 2):
        return False
    if isinstance(s.x, FeatureFile):  # the fit needs the rows in memory: it reads on its own
        return False
    return compute_dtype == torch.float32


def linear_need(s: Samples, budget: int) -> int:
    """Bytes the dual fit needs beside the normalized copy: its N x N Gram (counted in
    float64 for the fallback) and its float64 row chunks (linear.linear_budget)."""
    return linear_budget(s.n, s.d, budget)[1]
