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

from dnnlab.errors import ConfigError, InputError
from dnnlab.probe.extra import ProbeExtras, plot_extra
from dnnlab.probe.layers import LayerError, LayerInfo, pick_tensor, resolve_layers, trace
from dnnlab.probe.provenance import fingerprint, model_hash, split_identity, stale_reason
from dnnlab.probe.spill import SpillFolder, to_float32
from dnnlab.separability import knn, parse_measures, separability
from dnnlab.separability.normalize import NORMALIZATIONS
from dnnlab.settings import setting, validate
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text
from dnnlab.utils.sizes import format_size, parse_size

# The core's share of the budget (its blocks and bookkeeping), at most; the rest holds features.
CORE_WORKSPACE = 256 * 2**20
# Largest block (rows) the core reads from a feature file at once (its own CPU cap).
SPILL_MAX_BLOCK = 768
FLOAT32 = 4


class BudgetError(InputError, MemoryError):
    """A memory budget too small for even one block of the work; `least` works."""

    def __init__(self, msg: str, least: int = 0):
        super().__init__(msg)
        self.least = least


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
        "passes); a layer that does not fit streams through a file",
    )
    device: str = setting("cpu", "cpu, cuda or cuda:N")
    batch_size: int = setting(
        500, "images per forward pass, at most (fewer if the budget needs it)", low=1
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
        _check_regex(self.layers)


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
            f"({format_size(core_min)}); allow at least "
            f"{format_size(forward_per_sample + core_min + 2**20)}"
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
        f"{format_size(need(8)[0])}",
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
            chunk = t.detach().reshape(t.shape[0], -1).float().cpu().numpy()
            store[name][s : s + chunk.shape[0]] = chunk
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
    parse_measures(cfg.measures)
    order_max = max((m.order for m in parse_measures(cfg.measures) if m.kind != "csi"), default=1)
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
    names = resolve_layers(model, cfg.layers)
    first = next(iter(splits.values()))[0]
    tr = trace(model, input_fn(first[:2].to(dev)), names, cfg.output_key)
    infos = tr.layers
    weights = model_hash(model)
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
    res = ProbeResult([], infos, chain=tr.chain is not None)
    rows = _load_existing(out, cfg, overwrite, expected, weights, res.notes)
    res.rows = rows
    extras = ProbeExtras(cfg, list(splits), out, resumed=bool(rows), weights=weights)
    done = {(r["split"], r["layer"]) for r in rows}
    budget = parse_size(cfg.max_memory)
    order = {i.name: k for k, i in enumerate(infos)}
    kk_max = (
        1
        + knn.EXTRA_CANDIDATES
        + max((m.order for m in parse_measures(cfg.measures) if m.kind != "csi"), default=1)
    )
    core_min = core_minimum(max(len(x) for x, _ in splits.values()), kk_max)
    batch, reserve, room = plan_budget(
        budget, tr.forward_bytes_per_sample, cfg.batch_size, core_min
    )
    res.batch_size = batch

    # Every split's plan is checked before any work: a too-small budget is refused up front.
    plans = {}
    for split, (x, _) in splits.items():
        todo = [i for i in infos if (split, i.name) not in done]
        # The linear probe's and CKA's memory comes off the features' room.
        groups = plan_groups(
            todo, len(x), room - extras.reserve(split, len(x)), to_file=cfg.memmap is not None
        )
        for g in groups:
            if g.to_file:
                try:
                    spill_block(len(x), g.layers[0].dim, kk_max, budget)
                except BudgetError as e:
                    least = e.least
                    raise BudgetError(
                        f"--max-memory {format_size(budget)} is too small for one block of the "
                        f"core's work on layer {g.layers[0].name!r} ({len(x)} samples x "
                        f"{g.layers[0].dim} features, split {split!r}); the smallest budget "
                        f"that works is {format_size(least)}",
                        least,
                    ) from None
        plans[split] = groups

    def save():
        rows.sort(
            key=lambda r: (
                list(splits).index(r["split"]) if r["split"] in splits else 99,
                order.get(r["layer"], 99),
            )
        )
        if out is not None:
            write_tables(out, rows, cfg, extras.cka)

    from tqdm.auto import tqdm

    total = sum(1 for s in splits for i in infos if (s, i.name) not in done)
    bar = tqdm(total=total, desc="probe", unit="layer", disable=not progress)
    spill: dict = {"folder": None}  # made when the first layer goes to a file
    modules = dict(model.named_modules())

    def core(split, y, held, info, fwd):
        folder = spill["folder"]
        n = len(y)
        feats = held.pop(info.name)
        t1 = time.perf_counter()
        on_file = isinstance(feats, np.memmap)
        if on_file:
            if feats.dtype == np.float16:
                f32 = to_float32(feats, folder, info.name)
                folder.free(feats)
                feats = f32
            in_mem = sum(v.nbytes for v in held.values() if not isinstance(v, np.memmap))
            block, core_mem = spill_block(n, info.dim, kk_max, budget - in_mem)
        else:
            block, core_mem = None, reserve if dev.type == "cpu" else budget
        # Linear probe and CKA first, then the core's measures; the features are the probe's
        # own, so the core may normalize them in place.
        r = extras.measure(
            split,
            info.name,
            feats,
            y,
            budget=core_mem,
            core=separability,
            normalize_method=cfg.normalize,
            device=dev,
            block=block,
            overwrite_input=True,
            undefined="nan",
        )
        secs = time.perf_counter() - t1
        res.core_seconds += secs
        if on_file:
            folder.free(feats)
        del feats
        prov = expected[(split, info.name)]
        row = {
            "split": split,
            "layer": info.name,
            "dim": info.dim,
            "n": n,
            **r.values,
            "seconds": round(secs + fwd, 3),
            "note": "; ".join(x for x in (info.note, *r.notes) if x),
            "stored": f"file:{prov['features']}" if on_file else "memory",
            "fingerprint": fingerprint(prov),
            "provenance": prov,
        }
        if cfg.per_class:
            row["per_class"] = r.per_class
        rows.append(row)
        save()
        bar.update(1)

    try:
        for split, (x, y) in splits.items():
            groups = plans[split]
            if not groups:
                continue
            extras.start_split(
                split, [i.name for i in infos], [i.name for g in groups for i in g.layers]
            )
            n = len(x)
            res.groups[split] = len(groups)
            held: dict[str, np.ndarray] = {}  # features in memory, by layer

            prev = None  # (info, forward seconds): the last layer of the previous group
            for g in groups:
                start = None
                if prev is not None:
                    b = held[prev[0].name]
                    usable = (
                        g.from_boundary
                        and tr.chain is not None
                        and prev[0].name in tr.chain
                        and b.dtype == np.float32
                    )
                    if usable and isinstance(b, np.memmap) and not g.to_file:
                        # Its core runs after this group's pass, beside this group's features.
                        size = sum(n * i.dim * FLOAT32 for i in g.layers)
                        try:
                            spill_block(n, prev[0].dim, kk_max, budget - size)
                        except BudgetError:
                            usable = False
                    if usable:
                        k = tr.chain.index(prev[0].name)
                        start = ([modules[m] for m in tr.chain[k + 1 :]], b, prev[0].shape)
                    del b  # core() frees the features: hold no other reference to them
                    if not usable:
                        core(split, y, held, *prev)
                        prev = None
                for info in g.layers:
                    if g.to_file:
                        if spill["folder"] is None:
                            parent = cfg.spill_dir or out
                            spill["folder"] = SpillFolder(Path(parent) if parent else None)
                        folder = spill["folder"]
                        held[info.name] = folder.array(
                            info.name, (n, info.dim), cfg.memmap or "float32"
                        )
                        res.spilled.append(
                            {
                                "split": split,
                                "layer": info.name,
                                "bytes": held[info.name].nbytes,
                                "dtype": cfg.memmap or "float32",
                                "folder": str(folder.path),
                            }
                        )
                        res.notes.append(
                            f"{split}/{info.name}: {format_size(held[info.name].nbytes)} of "
                            f"features streamed through {folder.path} "
                            f"({cfg.memmap or 'float32'})"
                        )
                    else:
                        held[info.name] = np.empty((n, info.dim), dtype=np.float32)
                store = {i.name: held[i.name] for i in g.layers}
                t0 = time.perf_counter()
                pbar = tqdm(
                    total=n,
                    desc=f"{split}: forward to {g.layers[-1].name}",
                    unit="img",
                    leave=False,
                    disable=not progress,
                )
                extract_group(
                    model,
                    x,
                    g.layers,
                    batch,
                    dev,
                    input_fn,
                    cfg.output_key,
                    store,
                    start,
                    pbar.update,
                )
                pbar.close()
                del store, start
                spent = time.perf_counter() - t0
                res.forward_seconds += spent
                fwd = spent / len(g.layers)
                if prev is not None:
                    core(split, y, held, *prev)
                for info in g.layers[:-1]:
                    core(split, y, held, info, fwd)
                prev = (g.layers[-1], fwd)
            if prev is not None:
                core(split, y, held, *prev)
            extras.end_split(split)
    finally:
        bar.close()
        if spill["folder"] is not None:
            spill["folder"].close()
    save()
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
    from dnnlab.utils.plots import pyplot

    plt = pyplot()

    from dnnlab.utils.atomic import atomic_savefig

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
