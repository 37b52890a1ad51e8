"""SI/CSI and the other measures of every probed layer's output, per data split, within a
memory budget.

    plan (plan.py)
    for split:
        for layer group: one forward pass (extract.py) fills the group's features
            for layer: each measure (layer_measures.py) adds the layer's features; its row
                is written
Layers are grouped so that one group's features for a whole split fit in the budget next to
the separability core's own working memory; a layer that does not fit streams through a file
(spill.py). Forward passes are cheap next to the distance work. When the model is a chain of
its children, a group's pass starts from the stored output of the previous group's last layer,
which is then measured after that pass: on the `base` model that takes half of the forward
passes' time away (docs/RESULTS.md section 7, benchmarks/bench_chain.py). Results are
written after each (split, layer), so an interrupted probe resumes where it stopped
(resume.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dnnlab.errors import BudgetError, InputError
from dnnlab.probe.config import ProbeConfig, forward_batch
from dnnlab.probe.extract import extract_group
from dnnlab.probe.layer_measures import (
    CkaMatrices,
    LayerValues,
    LinearClassifiers,
    Separability,
)
from dnnlab.probe.layers import LayerError, LayerInfo, resolve_layers, trace
from dnnlab.probe.plan import (
    FLOAT32,
    Group,
    core_minimum,
    plan_budget,
    plan_splits,
    plan_within,
    spill_block,
)
from dnnlab.probe.provenance import model_hash, row_fingerprint
from dnnlab.probe.resume import expected_provenance, load_existing
from dnnlab.probe.spill import SpillFolder, to_float32
from dnnlab.separability import knn, parse_measures
from dnnlab.separability.inputs import NonFiniteError
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text
from dnnlab.utils.plots import pyplot, save_figure
from dnnlab.utils.sizes import format_size, parse_size


@dataclass
class ProbeResult:
    rows: list[dict]
    layers: list[LayerInfo]
    forward_seconds: float = 0.0
    core_seconds: float = 0.0  # every measure's time, the separability core's and the others'
    groups: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    spilled: list[dict] = field(default_factory=list)  # {split, layer, bytes, dtype, folder}
    batch_size: int = 0
    chain: bool = False


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
    res.rows = load_existing(out, cfg, overwrite, expected, weights, res.notes)

    # The measures, in the order they read a layer's features: the separability core
    # normalizes them in place, so it reads them last.
    cka = CkaMatrices(cfg, out, resumed=bool(res.rows))
    linear = None
    if any(m.kind == "linear" for m in parse_measures(cfg.measures)):
        linear = LinearClassifiers(cfg, list(splits), out, weights)
    measures = [m for m in (cka, linear, Separability(cfg, linear)) if m is not None]

    # The plan: the forward batch, the core's reserve and each split's groups, all checked
    # before any work; a budget too small is refused naming the smallest that plans.
    budget = parse_size(cfg.max_memory)
    kk_max = 1 + knn.EXTRA_CANDIDATES + _max_order(cfg.measures)
    done = {(r["split"], r["layer"]) for r in res.rows}

    def plan_at(budget: int):
        """(batch, reserve, {split: groups}) within `budget`; BudgetError (with .least) if none."""
        core_min = core_minimum(max(len(x) for x, _ in splits.values()), kk_max)
        batch, reserve, room = plan_budget(
            budget, tr.forward_bytes_per_sample, forward_batch(cfg, dev), core_min
        )
        # Each measure's own memory on a split comes off the features' room.
        need = lambda split, n: max(m.reserve(split, n) for m in measures)  # noqa: E731
        return batch, reserve, plan_splits(splits, tr.layers, done, cfg, need, room, kk_max, budget)

    res.batch_size, reserve, plans = plan_within(budget, plan_at)
    # The core's memory for a layer held in memory; one read from a file gets a block plan.
    core_memory = reserve if dev.type == "cpu" else budget
    order = {i.name: k for k, i in enumerate(tr.layers)}

    def save() -> None:
        """Rows in split and execution order, written to probe.csv/json."""
        names = list(splits)
        res.rows.sort(
            key=lambda r: (
                names.index(r["split"]) if r["split"] in splits else 99,
                order.get(r["layer"], 99),
            )
        )
        if out is not None:
            write_tables(out, res.rows, cfg, cka.matrices)

    total = sum(len(g.layers) for groups in plans.values() for g in groups)
    bar = tqdm(total=total, desc="probe", unit="layer", disable=not progress)
    features = _FeatureArrays(cfg, out, res)
    modules = dict(model.named_modules())
    try:
        for split, (x, y) in splits.items():
            groups = plans[split]
            if not groups:
                continue
            n = len(x)
            res.groups[split] = len(groups)
            todo = [i.name for g in groups for i in g.layers]
            for m in measures:
                m.start_split(split, [i.name for i in tr.layers], todo)
            held: dict[str, np.ndarray] = {}  # layer -> its N x dim features until measured
            carried = None  # (info, forward seconds): the layer the next pass starts from
            for k, g in enumerate(groups):
                start = None  # (the chain's modules after it, its features, their shape)
                if carried is not None:
                    before = carried[0]
                    after = tr.chain[tr.chain.index(before.name) + 1 :]
                    start = [modules[m] for m in after], held[before.name], before.shape
                for info in g.layers:
                    held[info.name] = features.array(split, n, info, g.to_file)
                t0 = time.perf_counter()
                pbar = tqdm(
                    total=n,
                    desc=f"{split}: forward to {g.layers[-1].name}",
                    unit="img",
                    leave=False,
                    disable=not progress,
                )
                store = {i.name: held[i.name] for i in g.layers}
                extract_group(
                    model, x, g.layers, res.batch_size, dev, input_fn, cfg.output_key, store,
                    start, pbar.update,
                )  # fmt: skip
                pbar.close()
                del store, start  # measuring frees the features: hold no other reference
                spent = time.perf_counter() - t0
                res.forward_seconds += spent
                fwd = spent / len(g.layers)
                # The layer carried into this pass, then the group's layers; the last of them
                # waits for the next pass when that pass starts from it.
                ready = [*([carried] if carried else []), *((i, fwd) for i in g.layers)]
                last = g.layers[-1]
                nxt = groups[k + 1] if k + 1 < len(groups) else None
                starts_next = nxt is not None and _starts_next(
                    tr.chain, last, held[last.name], nxt, n, kk_max, budget
                )
                carried = ready.pop() if starts_next else None
                for info, secs in ready:
                    t1 = time.perf_counter()
                    found, on_file = _measure_layer(
                        measures, split, info, held, y, features.folder, kk_max, budget, core_memory
                    )
                    spent = time.perf_counter() - t1
                    res.core_seconds += spent
                    res.rows.append(
                        _row(split, info, n, found, cfg, expected, spent + secs, on_file)
                    )
                    save()
                    bar.update(1)
            for m in measures:
                m.end_split(split)
    finally:
        bar.close()
        features.close()
    cka.note_reused(res.notes)
    save()
    return res


def _starts_next(chain, last: LayerInfo, stored, nxt: Group, n: int, kk: int, budget: int) -> bool:
    """Whether the next group's pass starts from `stored`, the output of this group's last
    layer, instead of the model's input: the model is a chain of its children through it,
    the plan allows it (Group.from_boundary), it is float32, and, when it is in a file while
    the next group's features are in memory, it can still be measured beside them."""
    usable = nxt.from_boundary and chain is not None and last.name in chain
    if not usable or stored.dtype != np.float32:
        return False
    if isinstance(stored, np.memmap) and not nxt.to_file:
        size = sum(n * i.dim * FLOAT32 for i in nxt.layers)
        try:
            spill_block(n, last.dim, kk, budget - size)
        except BudgetError:
            return False
    return True


def _measure_layer(measures, split, info, held, y, folder, kk, budget, core_memory):
    """(every measure's values of the layer's features, whether they were in a file): the
    features taken out of `held` (and freed), read within `budget` beside the features still
    held (`core_memory` for features in memory); the core's values, classes and notes first,
    then the others' (each only for the core's classes)."""
    n = len(y)
    feats = held.pop(info.name)
    on_file = isinstance(feats, np.memmap)
    half = on_file and feats.dtype == np.float16
    block, memory = None, core_memory
    if half:  # the measures read float32
        f32 = to_float32(feats, folder, info.name)
        folder.free(feats)
        feats = f32
    if on_file:
        in_memory = sum(v.nbytes for v in held.values() if not isinstance(v, np.memmap))
        block, memory = spill_block(n, info.dim, kk, budget - in_memory)
    try:
        *others, core = [m.add(split, info.name, feats, y, memory, block) for m in measures]
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
    except InputError as e:  # say where: the measures' messages name no layer
        e.args = (f"layer {info.name!r}, split {split!r}: {e}", *e.args[1:])
        raise
    if on_file:
        folder.free(feats)
    del feats
    found = LayerValues(dict(core.values), core.per_class, list(core.notes))
    for f in others:
        found.values.update(f.values)
        for c, vals in found.per_class.items():
            vals.update(f.per_class.get(c, {}))
        found.notes += f.notes
    return found, on_file


def _row(split, info: LayerInfo, n, found: LayerValues, cfg, expected, secs, on_file) -> dict:
    """One (split, layer)'s row: its measures, timing, storage and provenance."""
    prov = expected[(split, info.name)]
    row = {
        "split": split,
        "layer": info.name,
        "dim": info.dim,
        "n": n,
        **{m.name: found.values[m.name] for m in parse_measures(cfg.measures)},
        "seconds": round(secs, 3),
        "note": "; ".join(x for x in (info.note, *found.notes) if x),
        "stored": f"file:{prov['features']}" if on_file else "memory",
        "fingerprint": row_fingerprint(prov),
        "provenance": prov,
    }
    if cfg.per_class:
        row["per_class"] = found.per_class
    return row


class _FeatureArrays:
    """Each layer's N x dim feature array: in memory, or, for a group that goes to a file, a
    memory-mapped file in a spill folder made when the first one does (removed on close),
    recorded in res.spilled and noted."""

    def __init__(self, cfg: ProbeConfig, out: Path | None, res: ProbeResult):
        self.cfg, self.out, self.res = cfg, out, res
        self.folder: SpillFolder | None = None

    def array(self, split: str, n: int, info: LayerInfo, to_file: bool) -> np.ndarray:
        if not to_file:
            return np.empty((n, info.dim), dtype=np.float32)
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

    def close(self) -> None:
        if self.folder is not None:
            self.folder.close()


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
    """A probe.csv cell: a float to 6 significant digits; text quoted as CSV quotes it (a
    comma, quote or line break inside; its quotes doubled)."""
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n\r') else s


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
            save_figure(fig, out / fname, 90)
            written.append(out / fname)
    return written + plot_other_measures(rows, out, title)


def plot_other_measures(rows: list[dict], out: Path, title: str = "") -> list[Path]:
    """One figure per measure beyond SI/CSI present in the rows: value per layer, per split."""
    plt = pyplot()

    names = []
    for r in rows:
        for k in r:
            base = k.split(":")[0]
            if base in ("knn", "nc1", "linear") and k not in names:
                names.append(k)
    written = []
    for name in names:
        fig, ax = plt.subplots(figsize=(10, 4))
        for split in dict.fromkeys(r["split"] for r in rows):
            pts = [r for r in rows if r["split"] == split and r.get(name) is not None]
            ys = [r[name] for r in pts]
            if pts and all(math.isfinite(v) for v in ys):
                ax.plot([r["layer"] for r in pts], ys, marker="o", label=split)
        if name == "nc1":
            ax.set_yscale("log")  # NC1 spans orders of magnitude and falls as layers collapse
        else:
            ax.set_ylim(0, 1.02)
        ax.set_ylabel(name)
        ax.set_xlabel("layer (execution order)")
        ax.set_title(f"{title} {name} per layer".strip())
        ax.grid(alpha=0.3)
        ax.legend()
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        fig.tight_layout()
        path = out / f"{name.replace(':', '')}_per_layer.png"
        save_figure(fig, path, 90)
        written.append(path)
    return written


__all__ = [
    "BudgetError",
    "LayerError",
    "ProbeConfig",
    "ProbeResult",
    "plot_probe",
    "probe_model",
]
