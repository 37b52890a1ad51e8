"""SI/CSI of every probed layer's output, per data split, within a memory budget.

Layers are grouped so that one group's features for a whole split fit in the budget next
to the separability core's own working memory; each group costs one forward pass over the
split (forward passes are cheap next to the distance work). Results are written after each
(split, layer), so an interrupted probe resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dnnlab.probe.extra import ProbeExtras, plot_extra
from dnnlab.probe.layers import LayerError, LayerInfo, describe_layers, pick_tensor, resolve_layers
from dnnlab.separability import parse_measures, separability
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text
from dnnlab.utils.sizes import format_size, parse_size

# The core's blocks and bookkeeping, on top of its normalized copy of one layer.
CORE_WORKSPACE = 256 * 2**20


@dataclass
class ProbeConfig:
    splits: tuple[str, ...] = ("train20", "val", "test")
    layers: list[str] | str | None = None  # None: top-level children in execution order
    measures: str = "si,csi"
    normalize: str = "zscore"
    max_memory: str = "4GB"
    device: str = "cpu"
    batch_size: int = 500
    output_key: str | None = None  # for modules that return a tuple or dict
    memmap: str | None = None  # None (in memory), "float16" or "float32" files on disk
    per_class: bool = False
    cka_splits: str = ""  # CKA between all probed layers on these splits, e.g. "val"


@dataclass
class ProbeResult:
    rows: list[dict]
    layers: list[LayerInfo]
    forward_seconds: float = 0.0
    core_seconds: float = 0.0
    groups: dict[str, int] = field(default_factory=dict)


def plan_groups(infos: list[LayerInfo], n: int, budget: int, itemsize: int = 4):
    """Greedy groups of consecutive layers whose features fit beside the core's needs.

    The core normalizes each layer's features in place (the probe owns them), so beside the
    group it needs only its workspace, or, for memory-mapped features, one float32 copy.
    """
    core_need = CORE_WORKSPACE + (max(n * i.dim * 4 for i in infos) if itemsize == 0 else 0)
    room = budget - core_need
    groups: list[list[LayerInfo]] = []
    cur: list[LayerInfo] = []
    used = 0
    for info in infos:
        size = n * info.dim * itemsize
        if size > room:
            raise MemoryError(
                f"layer {info.name!r}: its features for {n} samples take {format_size(size)}, "
                f"and the separability core needs {format_size(core_need)} beside them; "
                f"raise --max-memory above {format_size(size + core_need)} or use --memmap"
            )
        if cur and used + size > room:
            groups.append(cur)
            cur, used = [], 0
        cur.append(info)
        used += size
    if cur:
        groups.append(cur)
    return groups


class _StopForward(Exception):
    """Raised by the hook of a group's last layer: nothing after it is needed."""


@torch.no_grad()
def extract_group(model, x, group, batch_size, device, input_fn, output_key, store):
    """Forward passes over x, cut short after the group's last layer (in execution order);
    fill store[name] (N x dim) for each layer of the group."""
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
    try:
        for s in range(0, x.shape[0], batch_size):
            pos["start"], pos["seen"] = s, set()
            try:
                model(input_fn(x[s : s + batch_size].to(device)))
            except _StopForward:
                pass
    finally:
        for h in hooks:
            h.remove()


def _load_existing(out: Path | None, cfg: ProbeConfig, overwrite: bool) -> list[dict]:
    if out is None or not (out / "probe.json").exists():
        return []
    prev = json.loads((out / "probe.json").read_text())
    same = all(prev["config"].get(k) == v for k, v in
               (("measures", cfg.measures), ("normalize", cfg.normalize)))  # fmt: skip
    if not same and not overwrite:
        raise RuntimeError(
            f"{out / 'probe.json'} holds results for measures={prev['config'].get('measures')}"
            f", normalize={prev['config'].get('normalize')}; pass --overwrite to replace them"
        )
    return prev["rows"] if same else []


def probe_model(
    model: nn.Module,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    cfg: ProbeConfig = ProbeConfig(),  # noqa: B008 (a frozen-by-convention default)
    out: Path | None = None,
    input_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ProbeResult:
    """Probe `model` on each split {name: (inputs, labels)}; write probe.csv/json to `out`."""
    dev = torch.device(cfg.device)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    input_fn = input_fn or (lambda b: b.float())
    model = model.to(dev).eval()
    parse_measures(cfg.measures)
    for name, (x, y) in splits.items():
        if x.shape[0] == 0:
            raise ValueError(f"split {name!r} is empty")
        if x.shape[0] != len(y):
            raise ValueError(f"split {name!r}: {x.shape[0]} inputs but {len(y)} labels")
    names = resolve_layers(model, cfg.layers)
    first = next(iter(splits.values()))[0]
    infos = describe_layers(model, input_fn(first[:2].to(dev)), names, cfg.output_key)
    rows = _load_existing(out, cfg, overwrite)
    extras = ProbeExtras(cfg, list(splits), out, resumed=bool(rows))
    done = {(r["split"], r["layer"]) for r in rows}
    budget = parse_size(cfg.max_memory)
    res = ProbeResult(rows, infos)
    order = {i.name: k for k, i in enumerate(infos)}

    def save():
        rows.sort(key=lambda r: (list(splits).index(r["split"]) if r["split"] in splits else 99,
                                 order.get(r["layer"], 99)))  # fmt: skip
        if out is not None:
            write_tables(out, rows, cfg, extras.cka)

    from tqdm.auto import tqdm

    total = sum(1 for s in splits for i in infos if (s, i.name) not in done)
    bar = tqdm(total=total, desc="probe", unit="layer", disable=not progress)
    for split, (x, y) in splits.items():
        todo = [i for i in infos if (split, i.name) not in done]
        if not todo:
            continue
        extras.start_split(split, [i.name for i in infos], [i.name for i in todo])
        n = x.shape[0]
        itemsize = 2 if cfg.memmap == "float16" else 4
        room = budget - extras.reserve(split, n)  # the linear probe's and CKA's memory
        groups = plan_groups(todo, n, room, 0 if cfg.memmap else itemsize)
        res.groups[split] = len(groups)
        for group in groups:
            spill = tempfile.TemporaryDirectory(dir=out, prefix=".probe-") if cfg.memmap else None
            with spill or contextlib.nullcontext() as tmp:
                store = {}
                for info in group:
                    if cfg.memmap:
                        store[info.name] = np.lib.format.open_memmap(
                            Path(tmp) / f"{info.name}.npy", mode="w+", dtype=cfg.memmap,
                            shape=(n, info.dim))  # fmt: skip
                    else:
                        store[info.name] = np.empty((n, info.dim), dtype=np.float32)
                t0 = time.perf_counter()
                extract_group(model, x, group, cfg.batch_size, dev, input_fn, cfg.output_key,
                              store)  # fmt: skip
                fwd = (time.perf_counter() - t0) / len(group)
                res.forward_seconds += time.perf_counter() - t0
                for info in group:
                    # What the group's features still hold in memory is not the core's to use.
                    held = 0 if cfg.memmap else sum(v.nbytes for v in store.values())
                    feats = store.pop(info.name)
                    t1 = time.perf_counter()
                    core_budget = budget - held
                    # In memory, the features are ours: the core may normalize them in place.
                    r = extras.measure(split, info.name, feats, y, budget=core_budget,
                                       core=separability, normalize_method=cfg.normalize,
                                       device=dev,
                                       overwrite_input=not cfg.memmap)  # fmt: skip
                    secs = time.perf_counter() - t1
                    res.core_seconds += secs
                    del feats
                    row = {"split": split, "layer": info.name, "dim": info.dim, "n": n,
                           **r.values, "seconds": round(secs + fwd, 3),
                           "note": info.note}  # fmt: skip
                    if cfg.per_class:
                        row["per_class"] = r.per_class
                    rows.append(row)
                    save()
                    bar.update(1)
        extras.end_split(split)
    bar.close()
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
    """The seed's four figures: SI and CSI vs layer, for train20 and for val + test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dnnlab.utils.atomic import atomic_savefig

    written = []
    for measure in ("si", "csi"):
        for fname, split_set in ((f"{measure}_train20.png", ("train20",)),
                                 (f"{measure}_val_test.png", ("val", "test"))):  # fmt: skip
            present = [s for s in split_set if any(r["split"] == s and measure in r for r in rows)]
            if not present:
                continue
            fig, ax = plt.subplots(figsize=(10, 4))
            for s in present:
                pts = [r for r in rows if r["split"] == s]
                ax.plot([r["layer"] for r in pts], [r[measure] for r in pts], marker="o",
                        label=s)  # fmt: skip
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


def layer_memory_estimate(infos: list[LayerInfo], n: int) -> int:
    """Bytes the seed's way needs: every layer's features for the whole split at once."""
    return int(math.fsum(n * i.dim * 4 for i in infos))


__all__ = ["LayerError", "ProbeConfig", "ProbeResult", "plan_groups", "plot_probe", "probe_model"]
