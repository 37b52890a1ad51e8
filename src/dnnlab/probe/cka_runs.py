"""CKA between the same layers of two trained runs on one split (`dnnlab probe RUN
--cka-with OTHER`, and the study's base against bn): each layer's features extracted from
both runs' best weights on the same images, one layer in memory at a time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from dnnlab.cifar.augment import to_input
from dnnlab.cifar.train import load_model_checkpoint, read_run_config
from dnnlab.errors import InputError
from dnnlab.probe.config import budget_share, forward_batch
from dnnlab.probe.extract import extract_group
from dnnlab.probe.layer_measures import cka_heatmaps
from dnnlab.probe.layers import describe_layers, resolve_layers
from dnnlab.probe.trained_run import run_splits
from dnnlab.separability.cka import CkaMatrix
from dnnlab.utils.atomic import atomic_write_json
from dnnlab.utils.records import RecordError, file_sha256, read_json
from dnnlab.utils.sizes import parse_size


def sample_ids(x: torch.Tensor) -> np.ndarray:
    """One id per sample: the first 8 bytes of a BLAKE2 hash of its input, as int64."""
    flat = x.reshape(x.shape[0], -1).contiguous().cpu().numpy()
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little", signed=True
            )
            for r in flat
        ]
    )


def check_same_val_images(run_a, run_b, max_per_split=None) -> None:
    """Refuse, before any work, two runs whose validation samples are not the same images in
    the same order (what CKA between them compares row by row): trained on other data, or
    another draw of the split (seed, --val-size, --train-subset), or, with --max-per-split,
    another seed's subset of it."""
    runs = [Path(run_a), Path(run_b)]
    recs = []
    for run in runs:
        try:
            recs.append(
                (
                    read_json(run / "config.json", ("seed",)),
                    read_json(run / "split.json", ("val",))["val"],
                )
            )
        except RecordError as e:
            raise InputError(f"--cka-with: {e}; is {run} a trained run?") from None
    (cfg_a, val_a), (cfg_b, val_b) = recs
    why = None
    if cfg_a.get("data_identity") != cfg_b.get("data_identity"):
        sources = f"{cfg_a.get('data_source')} and {cfg_b.get('data_source')}"
        why = f"they were trained on other data ({sources})"
    elif val_a != val_b:
        why = (
            f"their validation splits differ (seed {cfg_a['seed']} and {cfg_b['seed']}, "
            f"{len(val_a)} and {len(val_b)} images)"
        )
    elif max_per_split and cfg_a["seed"] != cfg_b["seed"]:
        seeds = f"{cfg_a['seed']} and {cfg_b['seed']}"
        why = f"--max-per-split draws each run's subset with its seed ({seeds})"
    if why:
        raise InputError(
            f"--cka-with {runs[1]}: its validation images are not those of {runs[0]}: {why}; "
            "CKA between two runs compares the same images, so give a run of the same data, "
            "seed and --val-size"
        )


def cka_between_runs(run_a, run_b, cfg, split: str = "val", data_root=None) -> Path:
    """Linear and unbiased CKA between the same layers of two trained runs on one split.

    Each layer's features (one layer in memory at a time) go into one CkaMatrix; the split's
    samples must be the same images in the same order in both runs (check_same_val_images
    refuses other runs at the command's edge; the ids, hashes of the inputs, check it again
    row by row). Writes RUN_A/cka_with_<B>_<split>.json (with both checkpoints'
    SHA-256) and a heatmap PNG; returns the JSON's path.
    """
    dev = torch.device(cfg.device)
    runs = [Path(run_a), Path(run_b)]
    loaded = [_load_run(run, cfg, split, data_root, dev) for run in runs]
    names_a = [i.name for i in loaded[0][3]]
    missing = [n for n in names_a if n not in {i.name for i in loaded[1][3]}]
    if missing:
        raise InputError(f"--cka-with: {runs[1]} has no layer {missing[0]!r} of {runs[0]}")
    labels = []
    budget = budget_share(parse_size(cfg.max_memory), "cka_runs")
    with CkaMatrix(max_memory=budget, spill_dir=runs[0]) as m:
        for tag, (run, model, x, infos, _) in zip("AB", loaded, strict=True):
            ids = sample_ids(x)
            by_name = {i.name: i for i in infos}
            for name in names_a:
                info = by_name[name]
                store = {name: np.empty((x.shape[0], info.dim), dtype=np.float32)}
                extract_group(
                    model, x, [info], forward_batch(cfg, dev), dev, to_input, cfg.output_key, store
                )
                try:
                    m.add(f"{tag}:{name}", store.pop(name), ids=ids)
                except InputError as e:
                    raise InputError(f"--cka-with: {run} on {split}: {e}") from None
                labels.append(f"{tag}:{name}")
        res = m.result()
    k = len(names_a)
    cross = {kind: [row[k:] for row in getattr(res, kind)[:k]] for kind in ("linear", "unbiased")}
    doc = {
        "run_a": str(runs[0]),
        "run_b": str(runs[1]),
        "split": split,
        "n": res.n,
        "checkpoint_sha256": {"a": loaded[0][4], "b": loaded[1][4]},
        "layers": names_a,
        **cross,
        "full": res.to_dict(),
    }
    path = runs[0] / f"cka_with_{runs[1].name}_{split}.json"
    atomic_write_json(path, doc)
    plot_cka_cross(doc, path.with_suffix(".png"))
    return path


def _load_run(run: Path, cfg, split: str, data_root, dev: torch.device):
    """(run, its best model on dev, the split's inputs, its layers, best.pt's SHA-256)."""
    for f in ("config.json", "best.pt"):
        if not (run / f).exists():
            raise InputError(f"--cka-with: {run} has no {f}; is it a trained run?")
    tcfg = read_run_config(run)
    model, _ = load_model_checkpoint(run / "best.pt", tcfg.model, run=run)
    model = model.to(dev).eval()
    x, y = run_splits(run, tcfg, (split,), data_root, cfg.max_per_split, seed=tcfg.seed)[split]
    names = resolve_layers(model, cfg.layers)
    infos = describe_layers(model, to_input(x[:2].to(dev)), names, cfg.output_key)
    sha = file_sha256(run / "best.pt")
    return run, model, x, infos, sha


def plot_cka_cross(doc: dict, path: Path) -> Path:
    """Heatmaps of CKA between layer i of run A (rows) and layer j of run B (columns)."""
    titles = {k: f"CKA ({k}) on {doc['split']}" for k in ("linear", "unbiased")}
    return cka_heatmaps(doc, path, titles, Path(doc["run_b"]).name, Path(doc["run_a"]).name)
