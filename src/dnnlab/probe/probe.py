"""SI/CSI of every probed layer's output, per data split, within a memory budget.

Layers are grouped so that one group's features for a whole split fit in the budget next
to the separability core's own working memory; each group costs one forward pass over the
split (forward passes are cheap next to the distance work). Results are written after each
(split, layer), so an interrupted probe resumes where it stopped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dnnlab.errors import BudgetError, ConfigError, InputError
from dnnlab.probe.extra import ProbeExtras, plot_extra
from dnnlab.probe.layers import LayerError, LayerInfo, pick_tensor, resolve_layers, trace
from dnnlab.probe.provenance import fingerprint, model_hash, split_identity, stale_reason
from dnnlab.probe.spill import SpillFolder, to_float32
from dnnlab.separability import knn, parse_measures, separability
from dnnlab.separability.inputs import NonFiniteError
from dnnlab.separability.normalize import NORMALIZATIONS
from dnnlab.settings import setting, validate
from dnnlab.utils.atomic import atomic_savefig, atomic_write_json, atomic_write_text
from dnnlab.utils.device import DEVICE_HELP
from dnnlab.utils.plots import pyplot
from dnnlab.utils.sizes import format_size, parse_size

# The core's share of the budget (its blocks and bookkeeping), at most; the rest holds features.
CORE_WORKSPACE = 256 * 2**20
# Largest block (rows) the core reads from a feature file at once (its own CPU cap).
SPILL_MAX_BLOCK = 768
FLOAT32 = 4
# Default images per forward pass: on this 2-core CPU a `base` pass with every layer hooked
# ran 15-25 % faster at 64 than at 500 (docs/RESULTS.md, section 7); a GPU wants large passes.
CPU_BATCH, GPU_BATCH = 64, 500


def _check_regex(layers) -> None:
    if isinstance(layers, str) and layers.startswith("re:"):
        try:
            re.compile(layers[3:])
        except re.error as e:
            msg = f"--layers {layers!r}: not a valid regular expression ({e})"
            raise ConfigError(msg) from None


@dataclass
class ProbeConfig:
    splits: tuple[str, ...] = setting(
        ("train20", "val", "test"), "splits to probe, comma-separated"
    )
    layers: list[str] | str | None = setting(
        None,
        "comma-separated module names (dotted), re:REGEX, or 'list' to print the layers "
        "with their output shapes and stop; default: the top-level children in execution order",
    )
    measures: str = setting("si,csi", "measures, e.g. si,csi,hsi:3")
    normalize: str = setting("zscore", "per-feature normalization", choices=NORMALIZATIONS)
    max_memory: str = setting(
        "4GB",
        "what the probe may add to the process's memory (features, the core, forward "
        "passes), a size > 0 such as 4GB or 512MiB; a layer that does not fit streams "
        "through a file",
    )
    device: str = setting("cpu", DEVICE_HELP)
    batch_size: int | None = setting(
        None,
        f"images per forward pass, at most (default {CPU_BATCH} on a CPU, whose caches "
        f"hold a small pass's activations, {GPU_BATCH} on a GPU; fewer if the budget needs it)",
        low=1,
        high=65_536,
    )
    output_key: str | None = setting(None, "tuple index or dict key to probe in an output")
    memmap: str | None = setting(
        None,
        "write every layer's features to a memory-mapped file of this type (default: "
        "only layers that do not fit, as float32; float16 halves the disk and rounds values)",
        choices=("float16", "float32"),
    )
    spill_dir: str | None = setting(
        None,
        "folder for the feature files of layers that do not fit (default: the output "
        "folder, else the system's temporary folder)",
    )
    per_class: bool = setting(False, "also per-class values (in probe.json)")
    cka_splits: str = setting(
        "",
        "CKA between all probed layers on these splits, e.g. val (17 layers on 5,000 "
        "samples take about 10 minutes on 2 CPU cores)",
    )

    def __post_init__(self):
        if isinstance(self.splits, str):
            self.splits = tuple(s.strip() for s in self.splits.split(",") if s.strip())
        self.splits = tuple(self.splits)
        if not self.splits:
            raise ConfigError("--splits: names no split; give e.g. train20,val,test")
        if len(set(self.splits)) != len(self.splits):
            raise ConfigError(f"--splits: {','.join(self.splits)} names a split twice")
        validate(self)
        try:
            parse_measures(self.measures)
        except ValueError as e:
            raise ConfigError(f"--measures: {e}") from None
        try:
            parse_size(self.max_memory)
        except ValueError as e:
            raise ConfigError(f"--max-memory: {e}") from None
        unknown = [c for c in self.cka_split_names if c not in self.splits]
        if unknown:
            raise ConfigError(
                f"--cka-splits: {', '.join(unknown)} is not among the probed splits "
                f"({','.join(self.splits)})"
            )
        _check_regex(self.layers)

    @property
    def cka_split_names(self) -> list[str]:
        """The splits named in cka_splits, in order."""
        return [c for c in (x.strip() for x in self.cka_splits.split(",")) if c]


@dataclass
class ProbeResult:
    rows: list[dict]
    layers: list[LayerInfo]
    forward_seconds: float = 0.0
    core_seconds: float = 0.0
    groups: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    spilled: list[dict] = field(default_factory=list)  # {split, layer, bytes, dtype, folder}
    batch_size: int = 0
    chain: bool = False


@dataclass
class Group:
    layers: list[LayerInfo]
    to_file: bool = False  # the features go to a memory-mapped file
    from_boundary: bool = True  # may start its pass from the previous group's last output


def core_minimum(n: int, kk: int) -> int:
    """The core's least working memory on in-memory features it normalizes in place: its
    N x k' search state and a few 64 x 64 blocks (see separability.measures.plan_memory)."""
    return n * kk * (FLOAT32 + 8) * 3 + n * 64 + 128 * 2**10


def forward_batch(cfg: ProbeConfig, dev: torch.device) -> int:
    """Images per forward pass: cfg.batch_size, else the device's default."""
    return cfg.batch_size or (CPU_BATCH if dev.type == "cpu" else GPU_BATCH)


def plan_budget(
    budget: int, forward_per_sample: int, batch_size: int, core_min: int = 0
) -> tuple[int, int, int]:
    """(batch, reserve, room): a forward pass takes at most an eighth of the budget; the
    reserve covers the larger of a pass and the core's working memory; room holds features."""
    batch = max(1, min(batch_size, (budget // 8) // max(1, forward_per_sample)))
    reserve = max(batch * forward_per_sample, min(CORE_WORKSPACE, budget // 4), core_min)
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
    fixed = n * kk * (FLOAT32 + 8) * 3 + n * 64

    def need(b):  # noqa: E306
        core = fixed + (4 * b * b * FLOAT32) * 4 // 3 + 2**20
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


class _StopForward(Exception):
    """Raised by the hook of a group's last layer: nothing after it is needed."""


@torch.no_grad()
def extract_group(
    model, x, group, batch_size, device, input_fn, output_key, store, start=None, progress=None
):
    """Forward passes over x, cut short after the group's last layer (in execution order);
    fill store[name] (N x dim) for each layer of the group.

    start: (modules, boundary, shape): run only `modules` in turn on the stored output
    `boundary` (N x prod(shape)) of the module before them, instead of the whole model.
    """
    modules = dict(model.named_modules())
    pos = {"start": 0}
    hooks = []
    last = group[-1].name
    for info in group:

        def hook(_m, _i, out, name=info.name):
            if name in pos["seen"]:
                return  # a module called twice in one pass is probed at its first call
            pos["seen"].add(name)
            t, _ = pick_tensor(out, output_key)
            s = pos["start"]
            dst = torch.from_numpy(store[name][s : s + t.shape[0]])  # torch copies in threads
            dst.copy_(t.detach().reshape(t.shape[0], -1))
            if name == last:
                raise _StopForward

        hooks.append(modules[info.name].register_forward_hook(hook))
    n = len(x)
    try:
        for s in range(0, n, batch_size):
            pos["start"], pos["seen"] = s, set()
            try:
                if start is None:
                    model(input_fn(x[s : s + batch_size].to(device)))
                else:
                    mods, boundary, shape = start
                    h = torch.from_numpy(np.asarray(boundary[s : s + batch_size]))
                    h = h.reshape(-1, *shape).to(device)
                    for m in mods:
                        h = m(h)
            except _StopForward:
                pass
            if progress is not None:
                progress(min(batch_size, n - s))
    finally:
        for h in hooks:
            h.remove()


def _load_existing(
    out: Path | None,
    cfg: ProbeConfig,
    overwrite: bool,
    expected: dict,
    weights: str,
    notes: list[str],
) -> list[dict]:
    """Earlier rows whose fingerprint matches what this probe would compute; the others are
    dropped (recomputed) with a note saying which input changed."""
    if out is None or not (out / "probe.json").exists():
        return []
    path = out / "probe.json"
    try:
        prev = json.loads(path.read_text())
        old_cfg, old_rows = prev["config"], list(prev["rows"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        if not overwrite:
            raise InputError(
                f"{path}: not a probe.json dnnlab can read ({e}); pass --overwrite to replace it"
            ) from None
        return []
    same = all(
        old_cfg.get(k) == v for k, v in (("measures", cfg.measures), ("normalize", cfg.normalize))
    )
    if not same and not overwrite:
        raise InputError(
            f"{path} holds results for measures={old_cfg.get('measures')}"
            f", normalize={old_cfg.get('normalize')}; pass --overwrite to replace them"
        )
    if not same:
        return []
    keep, stale = [], 0
    for r in old_rows:
        key = (r.get("split"), r.get("layer"))
        if key in expected:
            if r.get("fingerprint") == fingerprint(expected[key]):
                keep.append(r)
                continue
            stale += 1
            if stale <= 3:
                notes.append(
                    f"recomputing {key[0]}/{key[1]}: the stored row was made from "
                    f"{stale_reason(r.get('provenance') or {}, expected[key])}"
                )
        elif (r.get("provenance") or {}).get("weights") == weights:
            keep.append(r)  # another split or layer of these same weights: still valid
        else:
            stale += 1
            notes.append(
                f"dropped {key[0]}/{key[1]}: made from other weights or by an older "
                "dnnlab, and not recomputed in this probe"
            )
    if stale > 3:
        notes.append(f"... {stale} stale rows in all")
    return keep


def _max_order(measures: str) -> int:
    """The highest neighbour order among the measures (CSI's excluded); 1 if none."""
    return max((m.order for m in parse_measures(measures) if m.kind != "csi"), default=1)


def _check_splits(splits: dict, order_max: int) -> None:
    """Every split non-empty, with one label per input and more samples than `order_max`."""
    for name, (x, y) in splits.items():
        if len(x) == 0:
            raise InputError(f"split {name!r} is empty")
        if len(x) != len(y):
            raise InputError(f"split {name!r}: {len(x)} inputs but {len(y)} labels")
        if len(x) <= order_max:
            raise InputError(
                f"split {name!r} has {len(x)} samples; measures of order "
                f"{order_max} need more than {order_max}"
            )


def expected_provenance(
    splits: dict, infos: list[LayerInfo], cfg: ProbeConfig, weights: str, source: dict | None
) -> dict[tuple[str, str], dict]:
    """{(split, layer): provenance}: what each row of this probe is computed from."""
    measures = ",".join(m.name for m in parse_measures(cfg.measures))
    expected = {}
    for split, (x, y) in splits.items():
        data = split_identity(x, y)
        for info in infos:
            expected[(split, info.name)] = {
                "weights": weights,
                "data": data,
                "split": split,
                "n": len(x),
                "layer": info.name,
                "measures": measures,
                "normalize": cfg.normalize,
                "output_key": cfg.output_key,
                "per_class": cfg.per_class,
                "features": "float16" if cfg.memmap == "float16" else "float32",
                **(source or {}),
            }
    return expected


def _check_spill_budget(split: str, n: int, info: LayerInfo, kk_max: int, budget: int) -> None:
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
    extras: ProbeExtras,
    room: int,
    kk_max: int,
    budget: int,
) -> dict[str, list[Group]]:
    """{split: groups of its layers still to do}; every plan is checked before any work, so
    a too-small budget is refused up front."""
    plans = {}
    for split, (x, _) in splits.items():
        todo = [i for i in infos if (split, i.name) not in done]
        # The linear probe's and CKA's memory comes off the features' room.
        groups = plan_groups(
            todo, len(x), room - extras.reserve(split, len(x)), to_file=cfg.memmap is not None
        )
        for g in groups:
            if g.to_file:
                _check_spill_budget(split, len(x), g.layers[0], kk_max, budget)
        plans[split] = groups
    return plans


class _ProbeRun:
    """The work of one probe: forward passes per group, then one row per (split, layer),
    written as soon as it is measured. `held` maps layer -> its features (N x dim), in
    memory or in a file, until its row is written."""

    def __init__(self, model, splits, cfg, out, dev, input_fn, tr, expected, res, extras):
        self.model, self.splits, self.cfg, self.out = model, splits, cfg, out
        self.dev, self.input_fn, self.tr, self.expected = dev, input_fn, tr, expected
        self.res, self.extras, self.rows = res, extras, res.rows
        self.order = {i.name: k for k, i in enumerate(tr.layers)}
        self.modules = dict(model.named_modules())
        self.kk_max = 1 + knn.EXTRA_CANDIDATES + _max_order(cfg.measures)
        self.folder: SpillFolder | None = None  # made when the first layer goes to a file
        self.bar = None

    def plan(self) -> dict[str, list[Group]]:
        """Batch size, memory reserve and each split's groups, all checked before any work.

        A budget too small is refused naming the smallest that plans: raising the budget
        moves layers between memory and files, so that figure is found by planning again
        at each figure the refusals name, until one plans."""
        self.budget = parse_size(self.cfg.max_memory)
        try:
            self.batch, self.reserve, plans = self._plan_at(self.budget)
        except BudgetError as e:
            if not e.least:
                raise
            least, works = self._least_budget(self.budget, e.least)
            works = "the smallest budget that works is" if works else "it needs more than"
            raise BudgetError(f"{e}; {works} {format_size(least, up=True)}", least) from None
        self.res.batch_size = self.batch
        return plans

    def _least_budget(self, failed: int, named: int) -> tuple[int, bool]:
        """(a budget that plans, True), searched from the figure a refusal named: up until
        one plans, then down by halving the gap to the last that did not (to 64 KiB);
        (the last figure tried, False) if none plans within 16 tries."""
        lo, hi = failed, named
        for _ in range(16):
            try:
                self._plan_at(hi)
                break
            except BudgetError as again:
                lo, hi = hi, max(again.least, hi + 2**20)
        else:
            return hi, False
        while hi - lo > 2**16:
            mid = (lo + hi) // 2
            try:
                self._plan_at(mid)
                hi = mid
            except BudgetError:
                lo = mid
        return hi, True

    def _plan_at(self, budget: int):
        """(batch, reserve, {split: groups}) within `budget`; BudgetError (with .least) if none."""
        core_min = core_minimum(max(len(x) for x, _ in self.splits.values()), self.kk_max)
        batch, reserve, room = plan_budget(
            budget, self.tr.forward_bytes_per_sample, forward_batch(self.cfg, self.dev), core_min
        )
        done = {(r["split"], r["layer"]) for r in self.rows}
        plans = plan_splits(
            self.splits, self.tr.layers, done, self.cfg, self.extras, room, self.kk_max, budget
        )
        return batch, reserve, plans

    def run(self, plans: dict[str, list[Group]], progress: bool) -> None:
        from tqdm.auto import tqdm

        self.progress = progress
        total = sum(len(g.layers) for groups in plans.values() for g in groups)
        self.bar = tqdm(total=total, desc="probe", unit="layer", disable=not progress)
        try:
            for split, (x, y) in self.splits.items():
                if plans[split]:
                    self.probe_split(split, x, y, plans[split])
        finally:
            self.bar.close()
            if self.folder is not None:
                self.folder.close()
        for split in self.extras.cka_splits:
            if split not in self.extras.cka:  # every row of the split came from earlier runs
                why = "not computed: the split's rows were reused; rerun with --overwrite"
                self.extras.cka[split] = {"note": why}
                self.res.notes.append(f"CKA on {split}: {why}")
        self.save()

    def save(self) -> None:
        """Rows in split and execution order, written to probe.csv/json."""
        names = list(self.splits)
        self.rows.sort(
            key=lambda r: (
                names.index(r["split"]) if r["split"] in self.splits else 99,
                self.order.get(r["layer"], 99),
            )
        )
        if self.out is not None:
            write_tables(self.out, self.rows, self.cfg, self.extras.cka)

    def probe_split(self, split: str, x, y, groups: list[Group]) -> None:
        """One forward pass per group; a group's last layer is measured after the next
        group's pass, which may start from its output (a chain model)."""
        infos = self.tr.layers
        self.extras.start_split(
            split, [i.name for i in infos], [i.name for g in groups for i in g.layers]
        )
        n = len(x)
        self.res.groups[split] = len(groups)
        held: dict[str, np.ndarray] = {}
        prev = None  # (info, forward seconds): the last layer of the previous group
        for g in groups:
            start = None
            if prev is not None:
                start = self.chain_start(g, prev[0], held[prev[0].name], n)
                if start is None:
                    self.core(split, y, held, *prev)
                    prev = None
            self.allocate(split, n, g, held)
            fwd = self.forward(split, x, g, held, start)
            del start  # core() frees the features: hold no other reference to them
            if prev is not None:
                self.core(split, y, held, *prev)
            for info in g.layers[:-1]:
                self.core(split, y, held, info, fwd)
            prev = (g.layers[-1], fwd)
        if prev is not None:
            self.core(split, y, held, *prev)
        self.extras.end_split(split)

    def chain_start(self, g: Group, info: LayerInfo, b: np.ndarray, n: int):
        """(modules, boundary, shape) to start group g's pass from the stored output `b` of
        the previous group's last layer `info`, or None when the pass runs the whole model."""
        chain = self.tr.chain
        usable = (
            g.from_boundary and chain is not None and info.name in chain and b.dtype == np.float32
        )
        if usable and isinstance(b, np.memmap) and not g.to_file:
            # Its core runs after this group's pass, beside this group's features.
            size = sum(n * i.dim * FLOAT32 for i in g.layers)
            try:
                spill_block(n, info.dim, self.kk_max, self.budget - size)
            except BudgetError:
                usable = False
        if not usable:
            return None
        k = chain.index(info.name)
        return [self.modules[m] for m in chain[k + 1 :]], b, info.shape

    def allocate(self, split: str, n: int, g: Group, held: dict) -> None:
        """held[layer] = an empty N x dim float32 array, or a file for a group `to_file`."""
        for info in g.layers:
            if g.to_file:
                held[info.name] = self.spill_array(split, n, info)
            else:
                held[info.name] = np.empty((n, info.dim), dtype=np.float32)

    def spill_array(self, split: str, n: int, info: LayerInfo) -> np.memmap:
        """A memory-mapped N x dim file for the layer's features, recorded and noted."""
        cfg = self.cfg
        if self.folder is None:
            parent = cfg.spill_dir or self.out
            self.folder = SpillFolder(Path(parent) if parent else None)
        folder = self.folder
        arr = folder.array(info.name, (n, info.dim), cfg.memmap or "float32")
        self.res.spilled.append(
            {
                "split": split,
                "layer": info.name,
                "bytes": arr.nbytes,
                "dtype": cfg.memmap or "float32",
                "folder": str(folder.path),
            }
        )
        self.res.notes.append(
            f"{split}/{info.name}: {format_size(arr.nbytes)} of "
            f"features streamed through {folder.path} "
            f"({cfg.memmap or 'float32'})"
        )
        return arr

    def forward(self, split: str, x, g: Group, held: dict, start) -> float:
        """Fill the group's features by one forward pass; returns seconds per layer."""
        from tqdm.auto import tqdm

        store = {i.name: held[i.name] for i in g.layers}
        t0 = time.perf_counter()
        pbar = tqdm(
            total=len(x),
            desc=f"{split}: forward to {g.layers[-1].name}",
            unit="img",
            leave=False,
            disable=not self.progress,
        )
        extract_group(
            self.model,
            x,
            g.layers,
            self.batch,
            self.dev,
            self.input_fn,
            self.cfg.output_key,
            store,
            start,
            pbar.update,
        )
        pbar.close()
        del store, start
        spent = time.perf_counter() - t0
        self.res.forward_seconds += spent
        return spent / len(g.layers)

    def core(self, split: str, y, held: dict, info: LayerInfo, fwd: float) -> None:
        """Measure one layer's features (freeing them) and write its row."""
        folder, budget = self.folder, self.budget
        n = len(y)
        feats = held.pop(info.name)
        t1 = time.perf_counter()
        on_file = isinstance(feats, np.memmap)
        half = on_file and feats.dtype == np.float16
        if on_file:
            if half:
                f32 = to_float32(feats, folder, info.name)
                folder.free(feats)
                feats = f32
            in_mem = sum(v.nbytes for v in held.values() if not isinstance(v, np.memmap))
            block, core_mem = spill_block(n, info.dim, self.kk_max, budget - in_mem)
        else:
            block, core_mem = None, self.reserve if self.dev.type == "cpu" else budget
        # The features are the probe's own, so the core may normalize them in place.
        try:
            r = self.extras.measure(
                split,
                info.name,
                feats,
                y,
                budget=core_mem,
                core=separability,
                normalize_method=self.cfg.normalize,
                device=self.dev,
                block=block,
                overwrite_input=True,
                undefined="nan",
            )
        except NonFiniteError as e:
            why = (
                "stored as float16, whose largest value is 65504: use --memmap float32, or "
                "check the model's weights and inputs"
                if half
                else "check the model's weights and inputs"
            )
            raise InputError(
                f"layer {info.name!r} gives NaN or Inf for {e.rows} of the {n} samples of "
                f"split {split!r} ({why})"
            ) from None
        except InputError as e:  # say where: the core's message names no layer
            e.args = (f"layer {info.name!r}, split {split!r}: {e}", *e.args[1:])
            raise
        secs = time.perf_counter() - t1
        self.res.core_seconds += secs
        if on_file:
            folder.free(feats)
        del feats
        self.rows.append(self.row(split, info, n, r, secs + fwd, on_file))
        self.save()
        self.bar.update(1)

    def row(self, split: str, info: LayerInfo, n: int, r, secs: float, on_file: bool) -> dict:
        """One (split, layer)'s row: its measures, timing, storage and provenance."""
        prov = self.expected[(split, info.name)]
        row = {
            "split": split,
            "layer": info.name,
            "dim": info.dim,
            "n": n,
            **r.values,
            "seconds": round(secs, 3),
            "note": "; ".join(x for x in (info.note, *r.notes) if x),
            "stored": f"file:{prov['features']}" if on_file else "memory",
            "fingerprint": fingerprint(prov),
            "provenance": prov,
        }
        if self.cfg.per_class:
            row["per_class"] = r.per_class
        return row


def probe_model(
    model: nn.Module,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    cfg: ProbeConfig = ProbeConfig(),  # noqa: B008 (a frozen-by-convention default)
    out: Path | None = None,
    input_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    source: dict | None = None,
) -> ProbeResult:
    """Probe `model` on each split {name: (inputs, labels)}; write probe.csv/json to `out`.

    inputs: a tensor, or any object with len() whose [start:stop] gives a batch tensor (and
    an `identity` string naming its content). `source`: extra provenance for every row.
    """
    dev = torch.device(cfg.device)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    input_fn = input_fn or (lambda b: b.float())
    model = model.to(dev).eval()
    _check_splits(splits, _max_order(cfg.measures))
    names = resolve_layers(model, cfg.layers)
    first = next(iter(splits.values()))[0]
    tr = trace(model, input_fn(first[:2].to(dev)), names, cfg.output_key)
    weights = model_hash(model)
    expected = expected_provenance(splits, tr.layers, cfg, weights, source)
    res = ProbeResult([], tr.layers, chain=tr.chain is not None)
    res.rows = _load_existing(out, cfg, overwrite, expected, weights, res.notes)
    extras = ProbeExtras(cfg, list(splits), out, resumed=bool(res.rows), weights=weights)
    work = _ProbeRun(model, splits, cfg, out, dev, input_fn, tr, expected, res, extras)
    plans = work.plan()  # raises BudgetError before any work
    work.run(plans, progress)
    return res


def write_tables(out: Path, rows: list[dict], cfg: ProbeConfig, cka: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    measures = [m.name for m in parse_measures(cfg.measures)]
    cols = ["split", "layer", "dim", "n", *measures, "seconds", "note"]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(_csv_cell(r.get(c, "")) for c in cols))
    atomic_write_text(out / "probe.csv", "\n".join(lines) + "\n")
    atomic_write_json(out / "probe.json", {"config": asdict(cfg), "rows": rows, "cka": cka or {}})


def _csv_cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return f'"{s}"' if "," in s else s


def plot_probe(rows: list[dict], out: Path, title: str = "") -> list[Path]:
    """The course's four figures: SI and CSI vs layer, for train20 and for val + test."""
    plt = pyplot()
    written = []
    for measure in ("si", "csi"):
        for fname, split_set in (
            (f"{measure}_train20.png", ("train20",)),
            (f"{measure}_val_test.png", ("val", "test")),
        ):
            present = [s for s in split_set if any(r["split"] == s and measure in r for r in rows)]
            if not present:
                continue
            fig, ax = plt.subplots(figsize=(10, 4))
            for s in present:
                pts = [r for r in rows if r["split"] == s]
                ax.plot([r["layer"] for r in pts], [r[measure] for r in pts], marker="o", label=s)
            ax.set_ylabel(measure.upper())
            ax.set_xlabel("layer (execution order)")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{title} {measure.upper()} per layer".strip())
            ax.grid(alpha=0.3)
            ax.legend()
            plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
            fig.tight_layout()
            atomic_savefig(fig, out / fname, dpi=90)
            plt.close(fig)
            written.append(out / fname)
    return written + plot_extra(rows, out, title)


__all__ = [
    "BudgetError",
    "LayerError",
    "ProbeConfig",
    "ProbeResult",
    "plan_groups",
    "plot_probe",
    "probe_model",
]
