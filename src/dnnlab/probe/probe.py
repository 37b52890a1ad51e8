"""SI/CSI of every probed layer's output, per data split, within a memory budget.

Layers are grouped so that one group's features for a whole split fit in the budget next
to the separability core's own working memory (plan.py); each group costs one forward pass
over the split (extract.py; forward passes are cheap next to the distance work). Results
are written after each (split, layer), so an interrupted probe resumes where it stopped
(resume.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dnnlab.errors import BudgetError, InputError
from dnnlab.probe.beyond_si import ProbeExtras, plot_extra
from dnnlab.probe.config import ProbeConfig, forward_batch
from dnnlab.probe.extract import extract_group
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
from dnnlab.separability import knn, parse_measures, separability
from dnnlab.separability.inputs import NonFiniteError
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text
from dnnlab.utils.plots import pyplot, save_figure
from dnnlab.utils.sizes import format_size, parse_size


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
        """Batch size, memory reserve and each split's groups, all checked before any work;
        a budget too small is refused naming the smallest that plans (plan.plan_within)."""
        self.budget = parse_size(self.cfg.max_memory)
        self.batch, self.reserve, plans = plan_within(self.budget, self._plan_at)
        self.res.batch_size = self.batch
        return plans

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
            "fingerprint": row_fingerprint(prov),
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
    res.rows = load_existing(out, cfg, overwrite, expected, weights, res.notes)
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
            save_figure(fig, out / fname, 90)
            written.append(out / fname)
    return written + plot_extra(rows, out, title)


__all__ = [
    "BudgetError",
    "LayerError",
    "ProbeConfig",
    "ProbeResult",
    "plot_probe",
    "probe_model",
]
