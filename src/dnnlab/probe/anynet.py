"""Probe any network on any images (`dnnlab probe --model SPEC --data ROOT`): the settings,
and the run that ties any model (probe/anymodel.py) to any images (probe/images.py).

SPEC: `torchvision:NAME[:k=v,...]` (torchvision.models.get_model), `timm:NAME[:k=v,...]`
(timm.create_model, with timm's data config for the input; the optional extra
`dnnlab[timm]`), both with random weights (nothing is downloaded; --weights loads a file),
or `module.path:function` / `path/to/file.py:function` (a function returning an nn.Module).
ROOT: CIFAR-10 in any form `dnnlab train` reads (decoded once, through its cache), or image
folders `train/<class>/`, `test/<class>/` (and `val/<class>/`), or only `<class>/` folders
(then a seeded, stratified train/val split is made and recorded in split.json), or a .tar /
.tar.gz of such a tree. Images are decoded with PIL and resized in batches as the probe
reads them; nothing is written into the data folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.probe.anymodel import (
    check_size,
    fit_weights,
    input_defaults,
    load_state,
    model_from_spec,
)
from dnnlab.probe.config import SPLITS
from dnnlab.probe.images import (
    image_splits,
    left_out_note,
    readable_split,
    stratified_positions,
)
from dnnlab.probe.layers import trace
from dnnlab.probe.probe import plot_probe, probe_model
from dnnlab.settings import setting, validate
from dnnlab.utils.atomic import atomic_write_json


@dataclass
class AnyConfig:
    model: str = setting(
        "", "torchvision:NAME[:k=v,...], timm:NAME[:k=v,...] or module.path:function"
    )
    data: str = setting("", "image folders, CIFAR-10 or a .tar/.tar.gz of a tree")
    weights: str | None = setting(None, "state dict file, loaded as weights only")
    weights_key: str | None = setting(None, "key of the state dict in that file")
    image_size: int | None = setting(
        None,
        "images resized to this square side; none: 224 for torchvision models, the data "
        "config's for timm models, else the images' own size",
        low=1,
        high=4096,
    )
    mean: str | None = setting(
        None,
        "per-channel mean, 1 or 3 finite numbers, e.g. 0.485,0.456,0.406; none: ImageNet's "
        "for torchvision models, the data config's for timm models, else 0.5",
    )
    std: str | None = setting(None, "per-channel std, 1 or 3 numbers > 0; none: as --mean")
    val_fraction: float = setting(
        0.2,
        "images held out as 'val' when the data has only class folders",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    seed: int = setting(
        0,
        "random seed: the random weights (without --weights), the train/val split and the subsets",
        low=0,
        high=2**32 - 1,
    )
    out: str = setting("probe-out", "output folder of --model")

    def __post_init__(self):
        validate(self)


def _channels(text: str | None, default, flag: str) -> tuple[float, ...]:
    if text is None:
        return tuple(default)
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected 1 or 3 comma-separated numbers") from None
    if len(vals) not in (1, 3) or not all(np.isfinite(vals)):
        raise InputError(f"{flag} {text!r}: expected 1 or 3 comma-separated finite numbers")
    if flag == "--std" and min(vals) <= 0:
        raise InputError(f"--std {text!r}: must be > 0")
    return vals * 3 if len(vals) == 1 else vals


def prepare(cfg: AnyConfig):
    """The model (weights loaded, eval mode) and the input settings, all checked. Without
    --weights its weights are random, drawn from `seed`: the same for every probe of it."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(cfg.seed)
        model = model_from_spec(cfg.model)
    if cfg.weights:
        fit_weights(model, load_state(cfg.weights, cfg.weights_key), f"--weights {cfg.weights}")
    elif cfg.weights_key:
        raise InputError("--weights-key needs --weights")
    size, mean, std = input_defaults(cfg.model, model)
    mean = _channels(cfg.mean, mean, "--mean")
    std = _channels(cfg.std, std, "--std")
    return model.eval(), mean, std, (cfg.image_size or size)


def list_any(cfg: AnyConfig):
    model, _, _, size = prepare(cfg)
    size = size or 32
    check_size(model, size, cfg.model)
    return trace(model, torch.zeros(2, 3, size, size), [], None).all_layers


def probe_any(cfg: AnyConfig, pcfg, overwrite=False, progress=False):
    """Probe cfg.model on cfg.data; write probe.csv/json and plots to cfg.out."""
    out = Path(cfg.out)
    model, mean, std, size = prepare(cfg)
    splits, classes, how = image_splits(cfg, size, mean, std, out)
    tree = splits.pop("_tree", None)
    split_record = splits.pop("_split", None)
    size = next(iter(splits.values())).size
    check_size(model, size, cfg.model)
    default = pcfg.splits == SPLITS
    wanted = [s for s in pcfg.splits if s in splits] if default else list(pcfg.splits)
    missing = [s for s in wanted if s not in splits]
    if missing or not wanted:
        raise InputError(
            f"--splits: {cfg.data} has no split {missing or list(pcfg.splits)}; "
            f"it has {sorted(splits)}"
        )
    chosen, left_out = {}, []
    for name in wanted:
        s = splits[name]
        if pcfg.max_per_split and len(s) > pcfg.max_per_split:
            s = s.subset(stratified_positions(s.labels, pcfg.max_per_split, cfg.seed).tolist())
        if tree is not None:
            s, bad = readable_split(s, tree)
            left_out += bad
        if len(s) < 2:
            why = f" ({len(bad)} unreadable: {bad[0]})" if tree is not None and bad else ""
            raise InputError(
                f"split {name!r} of {cfg.data} has {len(s)} readable image(s){why}; need >= 2"
            )
        chosen[name] = (s, s.labels)
    pcfg = replace(pcfg, splits=tuple(wanted))
    res = probe_model(
        model,
        chosen,
        pcfg,
        out=out,
        input_fn=lambda b: b,
        overwrite=overwrite,
        progress=progress,
        source={"model": cfg.model},
    )
    if split_record is not None:  # the split drawn here, recorded beside the rows it made
        atomic_write_json(out / "split.json", split_record)
    res.notes.insert(0, f"splits: {how}; classes: {len(classes)}; image size {size}")
    if left_out:
        res.notes.insert(1, left_out_note(left_out))
    plot_probe(res.rows, out, title=cfg.model)
    return res, out, cfg.model


__all__ = ["AnyConfig", "list_any", "prepare", "probe_any"]
