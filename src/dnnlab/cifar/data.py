"""CIFAR-10 as uint8 tensors: read once from any accepted source, cached, kept on the device.

Accepted sources (--data-root, default $DNNLAB_DATA):
- torchvision's original release: a directory holding `cifar-10-batches-py/` (or that folder
  itself); downloaded there only with --download;
- an image-folder tree `train/<class>/*`, `test/<class>/*` (class names as in CIFAR-10);
- the same tree inside a .tar or .tar.gz, read straight from the archive (nothing is
  extracted; a member whose path would leave the archive's root is refused).
The first use converts the source into `<cache>/cifar10-<key>.pt` (uint8 N x 3 x 32 x 32),
keyed by the source's path, size and modification time, and reuses it afterwards.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.utils.atomic import atomic_torch_save

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")  # fmt: skip
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HOW_TO_GET = (
    "Accepted: a directory with cifar-10-batches-py/ (torchvision's CIFAR10; add --download "
    "to fetch it where the network allows), an image-folder tree train/<class>/*.jpg and "
    "test/<class>/*.jpg, or that tree as a .tar/.tar.gz (such as cifar10-jpeg.tar.gz)."
)


class DataError(InputError):
    """The data root does not hold CIFAR-10 in an accepted form."""


@dataclass
class Cifar10:
    train_x: torch.Tensor  # uint8 (50000, 3, 32, 32)
    train_y: torch.Tensor  # int64 (50000,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str


def default_root() -> str | None:
    return os.environ.get("DNNLAB_DATA")


def cache_dir() -> Path:
    return Path(os.environ.get("DNNLAB_CACHE", Path.home() / ".cache" / "dnnlab"))


def _source_key(path: Path) -> str:
    st = path.stat()
    parts = [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    if path.is_dir():  # a tree: include the top-level entries' times
        for p in sorted(path.iterdir()):
            parts += [p.name, str(p.stat().st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (32, 32):
                raise DataError(f"{name}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{name}: unreadable image ({e})") from None


def _check_classes(found: dict[str, set[str]], where: str) -> None:
    for split in ("train", "test"):
        have = found.get(split, set())
        if not have:
            raise DataError(f"{where}: no {split}/<class>/ images found. {HOW_TO_GET}")
        missing = sorted(set(CLASSES) - have)
        extra = sorted(have - set(CLASSES))
        if missing or extra:
            raise DataError(
                f"{where}: {split}/ must hold exactly the 10 CIFAR-10 class folders; "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}"
            )


def _collect(items, where: str):
    """items: iterable of (relative posix path, bytes loader) -> tensors per split."""
    found: dict[str, set[str]] = {}
    files: dict[str, list] = {"train": [], "test": []}
    for rel, load in items:
        parts = rel.split("/")
        # Allow one wrapping folder (e.g. cifar10/train/cat/1.jpg).
        if len(parts) == 4 and parts[1] in ("train", "test"):
            parts = parts[1:]
        if len(parts) != 3 or parts[0] not in ("train", "test"):
            continue
        if not parts[2].lower().endswith(IMAGE_EXT):
            continue
        found.setdefault(parts[0], set()).add(parts[1])
        files[parts[0]].append((parts[1], parts[2], rel, load))
    _check_classes(found, where)
    out = {}
    from tqdm.auto import tqdm

    for split in ("train", "test"):
        entries = sorted(files[split], key=lambda e: (CLASSES.index(e[0]), e[1]))
        xs = np.empty((len(entries), 3, 32, 32), dtype=np.uint8)
        ys = np.empty(len(entries), dtype=np.int64)
        for i, (cls, _, rel, load) in enumerate(
            tqdm(entries, desc=f"reading {split}", unit="img", mininterval=1.0)
        ):
            xs[i] = _decode(load(), f"{where}/{rel}")
            ys[i] = CLASSES.index(cls)
        out[split] = (torch.from_numpy(xs), torch.from_numpy(ys))
    return out


def _safe_member(name: str, archive: Path) -> str:
    norm = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or norm == ".." or norm.startswith("../") or ":" in norm:
        raise DataError(f"{archive}: refusing member {name!r}, which would land outside the root")
    return norm


def _from_tar(path: Path):
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable tar archive ({e})") from None
    with tf:
        members = []
        for m in tf:
            rel = _safe_member(m.name, path)
            if m.issym() or m.islnk():
                continue  # links could point anywhere; images are plain files
            if m.isfile():
                members.append((rel, tf.extractfile(m).read()))
    return _collect(((rel, (lambda b=b: b)) for rel, b in members), str(path))


def _from_tree(path: Path):
    def items():
        for p in path.rglob("*"):
            if p.is_file():
                yield p.relative_to(path).as_posix(), p.read_bytes

    return _collect(items(), str(path))


def _from_batches(path: Path, download: bool):
    """The original release's pickled batches (cifar-10-batches-py/)."""
    import pickle

    root = path.parent if path.name == "cifar-10-batches-py" else path
    if download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)  # fetches and verifies the archive
    folder = root / "cifar-10-batches-py"

    def read(names):
        xs, ys = [], []
        for name in names:
            f = folder / name
            try:
                with open(f, "rb") as fh:
                    d = pickle.load(fh, encoding="latin1")
                xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d["labels"], dtype=np.int64))
            except FileNotFoundError:
                raise DataError(f"{f}: missing from the CIFAR-10 batches folder") from None
            except Exception as e:
                raise DataError(f"{f}: not a CIFAR-10 batch file ({e})") from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train = read([f"data_batch_{i}" for i in range(1, 6)])
    return {"train": train, "test": read(["test_batch"])}


def _detect(path: Path) -> str:
    if path.is_file():
        if tarfile.is_tarfile(path):
            return "tar"
        raise DataError(f"{path}: a file, but not a .tar/.tar.gz archive. {HOW_TO_GET}")
    if (path / "cifar-10-batches-py").is_dir() or path.name == "cifar-10-batches-py":
        return "torchvision"
    if (path / "train").is_dir() or any(
        (p / "train").is_dir() for p in path.iterdir() if p.is_dir()
    ):
        return "tree"
    return "none"


def load_cifar10(root: str | os.PathLike | None = None, download: bool = False) -> Cifar10:
    """Load CIFAR-10 from `root` (or $DNNLAB_DATA), through the cache."""
    root = root if root is not None else default_root()
    if not root:
        raise DataError(f"no data root: pass --data-root PATH or set DNNLAB_DATA. {HOW_TO_GET}")
    path = Path(root).expanduser()
    if not path.exists():
        if download:
            path.mkdir(parents=True, exist_ok=True)
        else:
            raise DataError(f"{path}: does not exist. {HOW_TO_GET}")
    kind = _detect(path)
    if kind == "none":
        if download:
            kind = "torchvision"
        else:
            raise DataError(f"{path}: no CIFAR-10 found here. {HOW_TO_GET}")
    cache = None
    if kind != "torchvision" or (path / "cifar-10-batches-py").exists():
        key = _source_key(path)
        cache = cache_dir() / f"cifar10-{key}.pt"
        if cache.exists():
            d = torch.load(cache, weights_only=True)
            return Cifar10(d["train_x"], d["train_y"], d["test_x"], d["test_y"], CLASSES,
                           str(path))  # fmt: skip
    splits = {"tar": _from_tar, "tree": _from_tree}.get(kind)
    data = splits(path) if splits else _from_batches(path, download)
    (trx, try_), (tex, tey) = data["train"], data["test"]
    if cache is None:
        cache = cache_dir() / f"cifar10-{_source_key(path)}.pt"
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"train_x": trx, "train_y": try_, "test_x": tex, "test_y": tey}, cache)
    return Cifar10(trx, try_, tex, tey, CLASSES, str(path))


def split_indices(labels: torch.Tensor, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded train/validation split of the training set (sorted indices)."""
    if not 0 < n_val < labels.numel():
        raise DataError(f"validation size {n_val} must be between 1 and {labels.numel() - 1}")
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per = [n_val // len(classes) + (1 if i < n_val % len(classes) else 0)
           for i in range(len(classes))]  # fmt: skip
    val = []
    for c, k in zip(classes.tolist(), per, strict=True):
        idx = (labels == c).nonzero().squeeze(1)
        val.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    val_idx = torch.cat(val).sort().values
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[val_idx] = False
    return mask.nonzero().squeeze(1), val_idx


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Positions (into `labels`) of a stratified, seeded subset of size n."""
    if n >= labels.numel():
        return torch.arange(labels.numel())
    _, picked = split_indices(labels, n, seed)
    return picked
