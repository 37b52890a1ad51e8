"""Any images for the probe: CIFAR-10 in any form `dnnlab train` reads (decoded once,
through its cache), image folders `train/<class>/`, `test/<class>/` (and `val/<class>/`),
only `<class>/` folders (then a seeded, stratified train/val split is made and recorded in
split.json), or a .tar / .tar.gz of such a tree. Images are decoded with PIL and resized in
batches as the probe reads them; an unreadable one is left out and named; nothing is written
into the data folder. `cfg` below is the probe's AnyConfig.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dnnlab.cifar.data import (
    DataError,
    _safe_member,
    load_cifar10,
    split_indices,
    stratified_subset,
)
from dnnlab.errors import InputError
from dnnlab.utils.images import IMAGE_EXT, open_rgb
from dnnlab.utils.paths import missing_reason
from dnnlab.utils.records import content_hash


class ImageSplit:
    """A list of images read, resized and normalized in batches: `split[a:b]` is a float
    tensor (b - a, 3, S, S). `identity` names the content (files, sizes, labels, transform)."""

    def __init__(self, items, labels, size, mean, std, read, source_id):
        self.items = list(items)  # names (for errors) / keys for `read`
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.size, self.mean, self.std = size, mean, std
        self.read = read  # key -> PIL image (RGB) or uint8 CHW tensor
        content = [json.dumps([source_id, size, mean, std]), self.labels.numpy().tobytes()]
        self.identity = content_hash(content)

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


def stratified_positions(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return stratified_subset(labels, n, seed)


def image_splits(cfg, size: int | None, mean, std, out: Path):
    """{split: ImageSplit} with the names runs use (train20, val, test) where the data has
    them, the classes, and a note on how the splits were made."""
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


def _cifar_splits(c10, root: Path, cfg, size: int, mean, std):
    """CIFAR-10 split as dnnlab runs split it: val a tenth of the training images."""
    n_train = c10.train_y.numel()
    if n_train < 20:
        raise InputError(f"--data {root}: {n_train} training images; at least 20 needed")
    tr, va = split_indices(c10.train_y, round(n_train / 10), cfg.seed)
    t20 = tr[stratified_positions(c10.train_y[tr], round(0.2 * len(tr)), cfg.seed)]
    src = f"cifar10:{c10.identity}"

    def mk(x, y, tag):
        return ImageSplit(range(len(y)), y, size, mean, std, lambda i, x=x: x[i], [src, tag])

    splits = {
        "train20": mk(c10.train_x[t20], c10.train_y[t20], "train20"),
        "val": mk(c10.train_x[va], c10.train_y[va], "val"),
        "test": mk(c10.test_x, c10.test_y, "test"),
    }
    how = (  # the counts of this tree, which need not be all of CIFAR-10
        f"CIFAR-10: val = a stratified tenth of the training images ({len(va):,} of "
        f"{n_train:,}; seed {cfg.seed}), train20 = a stratified 20% of the rest "
        f"({len(t20):,}), test = the test images ({c10.test_y.numel():,})"
    )
    return splits, list(c10.classes), how


def _folder_splits(root: Path, cfg, size: int | None, mean, std, out: Path):
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
        src = content_hash([json.dumps([str(root.resolve()), ids])])
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
        pos = stratified_positions(y, max(2, round(0.2 * len(keys))), seed)
        lists["train20"] = ([keys[p] for p in pos.tolist()], y[pos].tolist())
        how += f"; train20 = a stratified 20% of train/ (seed {seed})"
    return lists, how


def _class_folder_lists(folder: dict, cls_index: dict, cfg):
    """Class folders only: val = a stratified --val-fraction, train20 = 20% of the rest."""
    keys, labels = _listing(folder, cls_index)
    y = torch.tensor(labels)
    n_val = round(cfg.val_fraction * len(keys))
    if not 0 < n_val < len(keys):
        raise InputError(
            f"--val-fraction {cfg.val_fraction}: leaves no images for one of "
            f"train and val ({len(keys)} images)"
        )
    tr, va = split_indices(y, n_val, cfg.seed)
    t20 = tr[stratified_positions(y[tr], max(2, round(0.2 * len(tr))), cfg.seed)]
    lists = {
        "train20": ([keys[p] for p in t20.tolist()], y[t20].tolist()),
        "val": ([keys[p] for p in va.tolist()], y[va].tolist()),
    }
    how = (
        f"class folders only: val = a stratified {cfg.val_fraction:g} of the images "
        f"(seed {cfg.seed}), train20 = a stratified 20% of the rest; see split.json"
    )
    return lists, how
