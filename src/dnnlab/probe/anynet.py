"""Probe any network on any images: a model spec, optional weights and an image source.

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

import ast
import difflib
import hashlib
import importlib
import importlib.util
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dnnlab.errors import InputError
from dnnlab.settings import setting, validate
from dnnlab.utils.atomic import atomic_write_json
from dnnlab.utils.images import IMAGE_EXT, open_rgb
from dnnlab.utils.paths import check_in_file, missing_reason
from dnnlab.utils.safe_load import load_error_reason, load_plain

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        0, "random seed of the train/val split and the subsets", low=0, high=2**32 - 1
    )
    max_per_split: int | None = setting(None, "stratified cap per split", low=2)
    out: str = setting("probe-out", "output folder of --model")

    def __post_init__(self):
        validate(self)


# ---------------------------------------------------------------------------- model


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _constructor_args(spec: str, args: list[str]) -> dict:
    """'k=v,k2=v2' parts after NAME -> {k: literal v}; errors name the spec."""
    kwargs = {}
    for a in ",".join(args).split(","):
        if not a.strip():
            continue
        if "=" not in a:
            raise InputError(f"--model {spec!r}: constructor argument {a!r} is not k=v")
        k, v = a.split("=", 1)
        kwargs[k.strip()] = _value(v.strip())
    return kwargs


def _unknown_name(spec: str, library: str, name: str, known: list[str]) -> InputError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return InputError(f"--model {spec!r}: {library} has no model {name!r}{hint}")


def _torchvision_model(spec: str) -> nn.Module:
    import torchvision

    name, *args = spec[len("torchvision:") :].split(":")
    kwargs = _constructor_args(spec, args)
    known = torchvision.models.list_models()
    if name not in known:
        raise _unknown_name(spec, "torchvision", name, known)
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as e:
        raise InputError(f"--model {spec!r}: {e}") from None


def _timm():
    """The timm module, or an error naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise InputError(
            "--model timm:...: timm is not installed; install it with "
            "pip install 'dnnlab[timm]' (or pip install timm)"
        ) from None
    return timm


def _timm_model(spec: str) -> nn.Module:
    """timm:NAME[.TAG][:k=v,...] with random weights (pretrained=False: nothing is
    downloaded; --weights loads a file)."""
    timm = _timm()
    name, *args = spec[len("timm:") :].split(":")
    kwargs = _constructor_args(spec, args)
    if "pretrained" in kwargs:
        raise InputError(
            f"--model {spec!r}: nothing is downloaded here; drop pretrained= and pass the "
            "weights file with --weights"
        )
    known = timm.list_models()
    if name.split(".")[0] not in known:
        raise _unknown_name(spec, "timm", name, known)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, RuntimeError, ValueError) as e:
        raise InputError(f"--model {spec!r}: {e}") from None


def build_model(spec: str) -> nn.Module:
    """An nn.Module from SPEC (see the module docstring); errors name the spec."""
    if spec.startswith("torchvision:"):
        return _torchvision_model(spec)
    if spec.startswith("timm:"):
        return _timm_model(spec)
    if ":" not in spec:
        raise InputError(
            f"--model {spec!r}: expected torchvision:NAME, timm:NAME or module.path:function"
        )
    where, func = spec.rsplit(":", 1)
    try:
        if where.endswith(".py") or Path(where).is_file():
            path = Path(where)
            if not path.is_file():
                raise InputError(f"--model {spec!r}: no file {where}")
            mspec = importlib.util.spec_from_file_location(f"_dnnlab_user_{path.stem}", path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as e:  # the user's code may fail in any way while importing
        raise InputError(
            f"--model {spec!r}: cannot import {where} ({type(e).__name__}: {e})"
        ) from None
    factory = getattr(module, func, None)
    if not callable(factory):
        raise InputError(f"--model {spec!r}: {where} has no function {func!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model {spec!r}: {func}() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_state(path: str, key: str | None) -> dict:
    """The state dict in a weights file: a .safetensors or torch file, told apart by content
    and read as plain data (utils.safe_load.load_plain). key: the entry holding the state
    dict (torch files: {"model": {...}}), or the prefix of its names in a flat file
    ("model" takes "model.conv1.weight" as "conv1.weight")."""
    p = check_in_file(path, "--weights")
    try:
        obj = load_plain(p)
    except Exception as e:  # pickle, zip, safetensors and torch errors: not plain weights
        raise InputError(
            f"--weights {path}: cannot be read as plain weights ({load_error_reason(e)})"
        ) from None
    if key is not None:
        obj = _select(obj, key, path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        cands = [k for k, v in obj.items() if isinstance(v, dict)] if isinstance(obj, dict) else []
        hint = f"; name one with --weights-key ({', '.join(map(str, cands))})" if cands else ""
        raise InputError(f"--weights {path}: does not hold a state dict (name -> tensor){hint}")
    return obj


def _select(obj, key: str, path: str) -> dict:
    """obj[key], or the entries named KEY.rest as rest; errors list what the file holds."""
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    prefix = key + "."
    if isinstance(obj, dict):
        sub = {k[len(prefix) :]: v for k, v in obj.items() if str(k).startswith(prefix)}
        if sub:
            return sub
    keys = sorted({str(k).split(".")[0] for k in obj}) if isinstance(obj, dict) else []
    raise InputError(f"--weights-key {key!r}: not in {path} (keys or prefixes: {keys[:20]})")


def fit_weights(model: nn.Module, state: dict, where: str) -> None:
    """load_state_dict, but a mismatch names the first offending key and both shapes."""
    from dnnlab.utils.weights import load_fitting

    load_fitting(model, state, where, InputError)


# ---------------------------------------------------------------------------- images


class ImageSplit:
    """A list of images read, resized and normalized in batches: `split[a:b]` is a float
    tensor (b - a, 3, S, S). `identity` names the content (files, sizes, labels, transform)."""

    def __init__(self, items, labels, size, mean, std, read, source_id):
        self.items = list(items)  # names (for errors) / keys for `read`
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.size, self.mean, self.std = size, mean, std
        self.read = read  # key -> PIL image (RGB) or uint8 CHW tensor
        h = hashlib.sha256(json.dumps([source_id, size, mean, std]).encode())
        h.update(self.labels.numpy().tobytes())
        self.identity = h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, pos) -> ImageSplit:
        pos = [int(p) for p in pos]
        return ImageSplit(
            [self.items[p] for p in pos],
            self.labels[pos],
            self.size,
            self.mean,
            self.std,
            self.read,
            [self.identity, pos],
        )

    def __getitem__(self, sl: slice) -> torch.Tensor:
        import torch.nn.functional as F

        out = []
        for key in self.items[sl]:
            img = self.read(key)
            t = (
                img
                if isinstance(img, torch.Tensor)
                else torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            )
            t = t.float().div_(255)[None]
            if t.shape[-2:] != (self.size, self.size):
                t = F.interpolate(
                    t,
                    size=(self.size, self.size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            out.append(t[0])
        x = torch.stack(out)
        m = torch.tensor(self.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.std).view(1, -1, 1, 1)
        return x.sub_(m).div_(s)


def _open_image(data: bytes, name: str):
    """The image in `data` decoded whole, as RGB; an UnreadableImage naming `name`."""
    return open_rgb(data, name)


class _Tree:
    """Image files under a folder or inside a tar: {split or '': {class: [keys]}}."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs: dict[str, bytes] = {}
        if root.is_file():
            if not tarfile.is_tarfile(root):
                raise InputError(f"--data {root}: a file, but not a .tar/.tar.gz archive")
            rels = []
            try:
                with tarfile.open(root, "r:*") as tf:
                    for m in tf:
                        if m.isfile() and m.name.lower().endswith(IMAGE_EXT):
                            from dnnlab.cifar.data import _safe_member

                            rel = _safe_member(m.name, root)
                            self.blobs[rel] = tf.extractfile(m).read()
                            rels.append(rel)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise InputError(f"--data {root}: not a readable archive ({e})") from None
            self.stat = {r: len(self.blobs[r]) for r in rels}
        else:
            rels = sorted(
                p.relative_to(root).as_posix()
                for p in root.rglob("*")
                if p.is_file() and p.name.lower().endswith(IMAGE_EXT)
            )
            self.stat = {}
            for r in rels:
                st = (root / r).stat()
                self.stat[r] = (st.st_size, st.st_mtime_ns)
        parts = [r.split("/") for r in rels]
        # Allow one wrapping folder (root/name/train/cat/1.jpg).
        tops = {p[0] for p in parts}
        if len(tops) == 1 and all(len(p) >= 3 for p in parts):
            parts = [p[1:] for p in parts]
            self.prefix = next(iter(tops)) + "/"
        else:
            self.prefix = ""
        self.tree: dict[str, dict[str, list[str]]] = {}
        for p in parts:
            if len(p) == 3:
                self.tree.setdefault(p[0], {}).setdefault(p[1], []).append("/".join(p))
            elif len(p) == 2:
                self.tree.setdefault("", {}).setdefault(p[0], []).append("/".join(p))

    def read(self, rel: str):
        full = self.prefix + rel
        if self.blobs:
            return _open_image(self.blobs[full], f"{self.root}:{full}")
        path = self.root / full
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot be read ({e})") from None
        return _open_image(data, str(path))

    def readable(self, keys) -> tuple[list[str], list[str]]:
        """(the keys whose image decodes whole, "FILE (reason)" for each that does not): a
        truncated or corrupt image is found before any work and left out, never met in
        the middle of a forward pass."""
        good, bad = [], []
        for k in keys:
            try:
                self.read(k)
                good.append(k)
            except InputError as e:
                bad.append(str(e))
        return good, bad


def readable_split(s: ImageSplit, tree: _Tree) -> tuple[ImageSplit, list[str]]:
    """The split without its images that cannot be decoded, and those images named."""
    good, bad = tree.readable(s.items)
    if not bad:
        return s, bad
    keep = set(good)
    return s.subset([i for i, k in enumerate(s.items) if k in keep]), bad


def left_out_note(bad: list[str]) -> str:
    """The probe's note on the images it left out (a bad file never stops a data set)."""
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{len(bad)} unreadable image(s) left out: {'; '.join(bad[:3])}{more}"


def _stratified(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    from dnnlab.cifar.data import stratified_subset

    return stratified_subset(labels, n, seed)


def image_splits(cfg: AnyConfig, size: int | None, mean, std, out: Path):
    """{split: ImageSplit} with the names runs use (train20, val, test) where the data has
    them, the classes, and a note on how the splits were made."""
    from dnnlab.cifar.data import DataError, load_cifar10

    root = Path(cfg.data).expanduser()
    if not root.exists():
        raise InputError(f"--data {root}: {missing_reason(root)}")
    try:
        c10 = load_cifar10(root)
    except DataError:  # not CIFAR-10: an image-folder tree
        c10 = None
    if c10 is None:
        return _folder_splits(root, cfg, size, mean, std, out)
    return _cifar_splits(c10, root, cfg, size or 32, mean, std)


def _cifar_splits(c10, root: Path, cfg: AnyConfig, size: int, mean, std):
    """CIFAR-10 split as dnnlab runs split it: val a tenth of the training images."""
    from dnnlab.cifar.data import split_indices

    n_train = c10.train_y.numel()
    if n_train < 20:
        raise InputError(f"--data {root}: {n_train} training images; at least 20 needed")
    tr, va = split_indices(c10.train_y, round(n_train / 10), cfg.seed)
    t20 = tr[_stratified(c10.train_y[tr], round(0.2 * len(tr)), cfg.seed)]
    src = f"cifar10:{c10.identity}"

    def mk(x, y, tag):
        return ImageSplit(range(len(y)), y, size, mean, std, lambda i, x=x: x[i], [src, tag])

    splits = {
        "train20": mk(c10.train_x[t20], c10.train_y[t20], "train20"),
        "val": mk(c10.train_x[va], c10.train_y[va], "val"),
        "test": mk(c10.test_x, c10.test_y, "test"),
    }
    how = (
        f"CIFAR-10: val = a stratified tenth of the training images (5,000 of 50,000; "
        f"seed {cfg.seed}), "
        "train20 = a stratified 20% of the rest, test = the test images"
    )
    return splits, list(c10.classes), how


def _folder_splits(root: Path, cfg: AnyConfig, size: int | None, mean, std, out: Path):
    """An image-folder tree: its own train/val/test folders, or class folders only (then
    split here, and the split recorded in out/split.json by probe_any once it succeeds)."""
    tree = _Tree(root)
    if not tree.tree:
        raise InputError(
            f"--data {root}: no images found in <class>/ or train|val|test/<class>/ folders"
        )
    classes = sorted({c for t in tree.tree.values() for c in t})
    if len(classes) < 2:
        raise InputError(
            f"--data {root}: images of one class only ({classes}); separability "
            "needs at least two class folders"
        )
    cls_index = {c: i for i, c in enumerate(classes)}
    named = {k: v for k, v in tree.tree.items() if k in ("train", "val", "test")}
    if named:
        lists, how = _named_lists(named, cls_index, cfg.seed)
        record = {}
    else:
        lists, how = _class_folder_lists(tree.tree[""], cls_index, cfg)
        record = {k: v[0] for k, v in lists.items()}
    if size is None:
        size = first_size(tree, [k for keys, _ in lists.values() for k in keys])
    splits = {}
    for name, (keys, labels) in lists.items():
        ids = [[k, tree.stat[tree.prefix + k]] for k in keys]
        src = hashlib.sha256(json.dumps([str(root.resolve()), ids]).encode()).hexdigest()[:16]
        splits[name] = ImageSplit(keys, labels, size, mean, std, tree.read, [src, name])
    if record:  # written by probe_any once the probe has succeeded, never before
        splits["_split"] = {
            "seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
            "classes": classes,
            **record,
        }
    splits["_tree"] = tree
    return splits, classes, how


def first_size(tree: _Tree, keys: list[str]) -> int:
    """The shorter side of the first image of `keys` that can be read (the default image
    size when the model names none)."""
    for k in keys:
        try:
            return min(tree.read(k).size)
        except InputError:
            continue
    raise InputError(f"--data {tree.root}: none of its images can be read")


def _listing(folder: dict, cls_index: dict) -> tuple[list[str], list[int]]:
    """(image keys, class indices) of {class: keys}, in class then key order."""
    keys, labels = [], []
    for c in sorted(folder):
        for k in sorted(folder[c]):
            keys.append(k)
            labels.append(cls_index[c])
    return keys, labels


def _named_lists(named: dict, cls_index: dict, seed: int):
    """The data's own train/val/test folders; train20 = a stratified 20% of train/."""
    lists = {k: _listing(v, cls_index) for k, v in named.items()}
    how = "the data's own " + ", ".join(sorted(named)) + " folders"
    if "train" in lists:
        keys, labels = lists.pop("train")
        y = torch.tensor(labels)
        pos = _stratified(y, max(2, round(0.2 * len(keys))), seed)
        lists["train20"] = ([keys[p] for p in pos.tolist()], y[pos].tolist())
        how += f"; train20 = a stratified 20% of train/ (seed {seed})"
    return lists, how


def _class_folder_lists(folder: dict, cls_index: dict, cfg: AnyConfig):
    """Class folders only: val = a stratified --val-fraction, train20 = 20% of the rest."""
    from dnnlab.cifar.data import split_indices

    keys, labels = _listing(folder, cls_index)
    y = torch.tensor(labels)
    n_val = round(cfg.val_fraction * len(keys))
    if not 0 < n_val < len(keys):
        raise InputError(
            f"--val-fraction {cfg.val_fraction}: leaves no images for one of "
            f"train and val ({len(keys)} images)"
        )
    tr, va = split_indices(y, n_val, cfg.seed)
    t20 = tr[_stratified(y[tr], max(2, round(0.2 * len(tr))), cfg.seed)]
    lists = {
        "train20": ([keys[p] for p in t20.tolist()], y[t20].tolist()),
        "val": ([keys[p] for p in va.tolist()], y[va].tolist()),
    }
    how = (
        f"class folders only: val = a stratified {cfg.val_fraction:g} of the images "
        f"(seed {cfg.seed}), train20 = a stratified 20% of the rest; see split.json"
    )
    return lists, how


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


def input_defaults(spec: str, model: nn.Module):
    """(image size or None, mean, std) a model expects when the flags do not say: ImageNet's
    at 224 for torchvision models, timm's data config (input size, mean, std) for timm
    models, else 0.5 and the images' own size."""
    if spec.startswith("torchvision:"):
        return 224, IMAGENET_MEAN, IMAGENET_STD
    if spec.startswith("timm:"):
        conf = _timm().data.resolve_data_config(model=model)
        return int(conf["input_size"][-1]), tuple(conf["mean"]), tuple(conf["std"])
    return None, (0.5,) * 3, (0.5,) * 3


def prepare(cfg: AnyConfig):
    """The model (weights loaded, eval mode) and the input settings, all checked."""
    model = build_model(cfg.model)
    if cfg.weights:
        fit_weights(model, load_state(cfg.weights, cfg.weights_key), f"--weights {cfg.weights}")
    elif cfg.weights_key:
        raise InputError("--weights-key needs --weights")
    size, mean, std = input_defaults(cfg.model, model)
    mean = _channels(cfg.mean, mean, "--mean")
    std = _channels(cfg.std, std, "--std")
    return model.eval(), mean, std, (cfg.image_size or size)


def check_size(model: nn.Module, size: int, spec: str) -> None:
    """One forward pass of one blank image: an image size the network cannot take is named."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        raise InputError(
            f"--image-size {size}: too small (or wrong) for {spec}: a forward pass fails ({msg})"
        ) from None


def list_any(cfg: AnyConfig):
    from dnnlab.probe.layers import trace

    model, _, _, size = prepare(cfg)
    size = size or 32
    check_size(model, size, cfg.model)
    return trace(model, torch.zeros(2, 3, size, size), [], None).all_layers


def probe_any(cfg: AnyConfig, pcfg, overwrite=False, progress=False):
    """Probe cfg.model on cfg.data; write probe.csv/json and plots to cfg.out."""
    from dataclasses import replace

    from dnnlab.probe.probe import plot_probe, probe_model

    out = Path(cfg.out)
    model, mean, std, size = prepare(cfg)
    splits, classes, how = image_splits(cfg, size, mean, std, out)
    tree = splits.pop("_tree", None)
    split_record = splits.pop("_split", None)
    size = next(iter(splits.values())).size
    check_size(model, size, cfg.model)
    default = pcfg.splits == ("train20", "val", "test")
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
        if cfg.max_per_split and len(s) > cfg.max_per_split:
            s = s.subset(_stratified(s.labels, cfg.max_per_split, cfg.seed).tolist())
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


__all__ = ["AnyConfig", "ImageSplit", "build_model", "list_any", "load_state", "probe_any"]
