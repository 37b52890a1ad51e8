"""The probe's memory plan: the budget split between a forward pass, the separability
core's working memory and the features held, the layers grouped so that one group's features
fit (or go to a file), the blocks of a layer read from a file, and the smallest budget that
plans when one is refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dnnlab.errors import BudgetError
from dnnlab.probe.config import ProbeConfig, budget_share
from dnnlab.probe.layers import LayerInfo
from dnnlab.separability.search_plan import block_workspace_bytes, search_state_bytes
from dnnlab.utils.sizes import format_size

# The core's share of the budget (its blocks and bookkeeping), at most; the rest holds features.
CORE_WORKSPACE = 256 * 2**20
# Largest block (rows) the core reads from a feature file at once (its own CPU cap).
SPILL_MAX_BLOCK = 768
FLOAT32 = 4


@dataclass
class Group:
    layers: list[LayerInfo]
    to_file: bool = False  # the features go to a memory-mapped file
    from_boundary: bool = True  # may start its pass from the previous group's last output


def core_minimum(n: int, kk: int) -> int:
    """The core's least working memory on in-memory features it normalizes in place: its
    N x k' search state and one 64-row block (separability.search_plan's memory model)."""
    return search_state_bytes(n, kk, FLOAT32) + block_workspace_bytes(64, FLOAT32) + 4


def plan_budget(
    budget: int, forward_per_sample: int, batch_size: int, core_min: int = 0
) -> tuple[int, int, int]:
    """(batch, reserve, room): a forward pass takes at most its share of the budget; the
    reserve covers the larger of a pass and the core's working memory; room holds features."""
    batch = budget_share(budget, "forward") // max(1, forward_per_sample)
    batch = max(1, min(batch_size, batch))
    core = min(CORE_WORKSPACE, budget_share(budget, "core"))
    reserve = max(batch * forward_per_sample, core, core_min)
    if reserve >= budget:
        raise BudgetError(
            f"--max-memory {format_size(budget)} does not hold one forward pass of one sample "
            f"({format_size(forward_per_sample)}) and the core's working memory "
            f"({format_size(core_min)})",
            forward_per_sample + core_min + 2**20,
        )
    return batch, reserve, budget - reserve


def plan_groups(infos: list[LayerInfo], n: int, room: int, to_file: bool = False) -> list[Group]:
    """Consecutive layers whose float32 features fit in `room` together, in execution order.

    The last layer of a group is kept while the next group's pass runs (a chain model starts
    from it), so it counts against the next group too. A layer too big for the room alone,
    or every layer when `to_file`, gets a group of its own written to a file.
    """
    groups: list[Group] = []
    cur: list[LayerInfo] = []
    used = carry = 0
    from_boundary = True
    for info in infos:
        size = n * info.dim * FLOAT32
        if to_file or size > room:
            if cur:
                groups.append(Group(cur, False, from_boundary))
            groups.append(Group([info], True, True))
            cur, used, carry, from_boundary = [], 0, 0, True
            continue
        if cur and used + size + carry > room:
            groups.append(Group(cur, False, from_boundary))
            carry = n * cur[-1].dim * FLOAT32
            cur, used, from_boundary = [], 0, True
            if size + carry > room:
                carry, from_boundary = 0, False  # finish the previous layer first
        cur.append(info)
        used += size
    if cur:
        groups.append(Group(cur, False, from_boundary))
    return groups


def spill_block(n: int, dim: int, kk: int, avail: int) -> tuple[int, int]:
    """(block rows, the core's max_memory) for features read from a file within `avail`
    bytes: the rows resident at once (about three blocks), the core's N x k state and its
    B x B buffers. Raises BudgetError naming the smallest budget that works."""
    fixed = search_state_bytes(n, kk, FLOAT32)

    def need(b):  # noqa: E306
        core = fixed + block_workspace_bytes(b, FLOAT32) + 2**20
        return 3 * b * dim * FLOAT32 + core, core

    for b in [*range(SPILL_MAX_BLOCK, 63, -64), 32, 16, 8]:
        total, core = need(b)
        if total <= avail:
            return min(b, n), core
    raise BudgetError(
        f"{format_size(avail)} holds no block of {dim} features; allow at least "
        f"{format_size(need(8)[0], up=True)}",
        need(8)[0],
    )


def check_spill_budget(split: str, n: int, info: LayerInfo, kk_max: int, budget: int) -> None:
    """A layer streamed through a file needs one block of the core's work within `budget`."""
    try:
        spill_block(n, info.dim, kk_max, budget)
    except BudgetError as e:
        raise BudgetError(
            f"--max-memory {format_size(budget)} is too small for one block of the "
            f"core's work on layer {info.name!r} ({n} samples x "
            f"{info.dim} features, split {split!r})",
            e.least,
        ) from None


def plan_splits(
    splits: dict,
    infos: list[LayerInfo],
    done: set,
    cfg: ProbeConfig,
    need: Callable[[str, int], int],
    room: int,
    kk_max: int,
    budget: int,
) -> dict[str, list[Group]]:
    """{split: groups of its layers still to do}; every plan is checked before any work, so
    a too-small budget is refused up front. need(split, n): the bytes the measures need on
    the split beside the features (layer_measures.LayerMeasure.reserve)."""
    plans = {}
    for split, (x, _) in splits.items():
        todo = [i for i in infos if (split, i.name) not in done]
        # The measures' own memory (the linear fit's, CKA's) comes off the features' room.
        groups = plan_groups(
            todo, len(x), room - need(split, len(x)), to_file=cfg.memmap is not None
        )
        for g in groups:
            if g.to_file:
                check_spill_budget(split, len(x), g.layers[0], kk_max, budget)
        plans[split] = groups
    return plans


def plan_within(budget: int, plan_at: Callable[[int], tuple]):
    """plan_at(budget), or a BudgetError naming the smallest budget that plans: raising the
    budget moves layers between memory and files, so that figure is found by planning again
    at each figure the refusals name, until one plans."""
    try:
        return plan_at(budget)
    except BudgetError as e:
        if not e.least:
            raise
        least, works = least_budget(plan_at, budget, e.least)
        works = "the smallest budget that works is" if works else "it needs more than"
        raise BudgetError(f"{e}; {works} {format_size(least, up=True)}", least) from None


def least_budget(plan_at: Callable[[int], tuple], failed: int, named: int) -> tuple[int, bool]:
    """(a budget that plans, True), searched from the figure a refusal named: up until
    one plans, then down by halving the gap to the last that did not (to 64 KiB);
    (the last figure tried, False) if none plans within 16 tries."""
    lo, hi = failed, named
    for _ in range(16):
        try:
            plan_at(hi)
            break
        except BudgetError as again:
            lo, hi = hi, max(again.least, hi + 2**20)
    else:
        return hi, False
    while hi - lo > 2**16:
        mid = (lo + hi) // 2
        try:
            plan_at(mid)
            hi = mid
        except BudgetError:
            lo = mid
    return hi, True
