"""CIFAR-10 as uint8 tensors: read once from any accepted source, cached, kept on the device.

Accepted sources (--data-root, default $DNNLAB_DATA):
- torchvision's original release: a directory holding `cifar-10-batches-py/` (or that folder
  itself); downloaded there only with --download;
- an image-folder tree `train/<class>/*`, `test/<class>/*` (class names as in CIFAR-10);
- the same tree inside a .tar or .tar.gz, read straight from the archive (nothing is
  extracted; a member whose path would leave the archive's root is refused).
The first use converts the source into `<cache>/cifar10-<key>.pt` (uint8 N x 3 x 32 x 32)
and reuses it afterwards. The key is what determines the content, cheap to compute: for a
folder, every member's relative path, size and modification time; for an archive or the
batches folder's files, their path, size and modification time. The cache also stores the
data's `identity`, a SHA-256 of the decoded tensors computed once at conversion: the same
images give the same identity whatever form they were read from, and a run records it.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dnnlab.errors import ConfigError, InputError
from dnnlab.utils.atomic import atomic_torch_save, remove_stale_temporaries
from dnnlab.utils.images import IMAGE_EXT, UnreadableImage, open_rgb
from dnnlab.utils.paths import missing_reason
from dnnlab.utils.records import content_hash
from dnnlab.utils.safe_load import load_plain

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
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
    source: str  # the resolved path the images were read from
    identity: str  # content hash of the four tensors (see tensor_identity)


def default_root() -> str | None:
    return os.environ.get("DNNLAB_DATA")


def cache_dir() -> Path:
    return Path(os.environ.get("DNNLAB_CACHE", Path.home() / ".cache" / "dnnlab")).expanduser()


CACHE_KEYS = {"train_x", "train_y", "test_x", "test_y", "identity"}
# Part of the key: caches of an older layout, or decoded by an older decoder (3: EXIF
# orientation and 16-bit modes by their range, utils/images.open_rgb), are never read.
CACHE_FORMAT = "3"


def _tree_stats(root: Path):
    """(relative path, size, mtime_ns) of every file under root, in a fixed order."""
    out = []
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=True):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=True):
                    st = e.stat(follow_symlinks=True)
                    rel = Path(e.path).relative_to(root).as_posix()
                    out.append((rel, st.st_size, st.st_mtime_ns))
    return sorted(out)


def _source_key(path: Path) -> str:
    """Cache key from what determines the content: every member's path, size and mtime."""
    parts = [CACHE_FORMAT, str(path.resolve())]
    if path.is_dir():
        for rel, size, mtime in _tree_stats(path):
            parts.append(f"{rel}\0{size}\0{mtime}")
    else:
        st = path.stat()
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    return content_hash(["\n".join(parts)])


def tensor_identity(train_x, train_y, test_x, test_y) -> str:
    """SHA-256 (first 16 hex digits) of the decoded images and labels, shapes included."""

    def chunks():
        for t in (train_x, train_y, test_x, test_y):
            t = t.contiguous()
            yield f"{t.dtype}{tuple(t.shape)}"
            yield t.numpy().tobytes()

    return content_hash(chunks())


def _decode(data: bytes, name: str) -> np.ndarray:
    """One image of the tree through the one decoder (utils/images.open_rgb: EXIF
    orientation, 16-bit and other modes by their range) as uint8 3 x 32 x 32."""
    try:
        im = open_rgb(data, name)
    except UnreadableImage as e:  # a CIFAR-10 source must be whole: a refusal, not a skip
        raise DataError(str(e)) from None
    if im.size != (32, 32):
        raise DataError(f"{name}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


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


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _from_tar(path: Path):
    try:
        tf = tarfile.open(path, "r:*")
    except _TAR_ERRORS as e:
        raise DataError(f"{path}: not a readable tar archive ({e})") from None
    with tf:
        members = []
        try:
            for m in tf:
                rel = _safe_member(m.name, path)
                if m.issym() or m.islnk():
                    continue  # links could point anywhere; images are plain files
                if m.isfile():
                    members.append((rel, tf.extractfile(m).read()))
            # A tar ends with zero blocks; without them it was cut, maybe between members.
            tf.fileobj.seek(tf.offset)
            end = tf.fileobj.read(tarfile.BLOCKSIZE)
        except DataError:
            raise
        except _TAR_ERRORS as e:
            raise DataError(
                f"{path}: truncated or damaged archive ({e or type(e).__name__}) "
                f"after {len(members)} files"
            ) from None
        if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
            last = members[-1][0] if members else "the start"
            raise DataError(
                f"{path}: the archive ends without its end-of-archive marker, "
                f"after {last!r}: it was cut short and images are missing"
            )
    out = _collect(((rel, (lambda b=b: b)) for rel, b in members), str(path))
    _check_counts(out, str(path))
    return out


def _check_counts(splits: dict, where: str) -> None:
    """CIFAR-10 has as many images of each class in a split: fewer means some are missing."""
    for split, (_, y) in splits.items():
        counts = torch.bincount(y, minlength=len(CLASSES)).tolist()
        if len(set(counts)) > 1:
            short = [f"{CLASSES[c]} {n}" for c, n in enumerate(counts) if n < max(counts)]
            raise DataError(
                f"{where}: {split}/ has {max(counts)} images in some classes but "
                f"only {', '.join(short)}: images are missing"
            )


def _from_tree(path: Path):
    def items():
        for p in path.rglob("*"):
            if p.is_file():
                yield p.relative_to(path).as_posix(), p.read_bytes

    return _collect(items(), str(path))


# What numpy arrays need to unpickle; any other global in a batch file is refused.
_NUMPY_GLOBALS = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
    for name in ("_reconstruct", "ndarray", "dtype", "scalar")
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing {module}.{name}: a CIFAR-10 batch holds only "
            "arrays, lists, numbers and strings"
        )


def _from_batches(path: Path, download: bool):
    """The original release's pickled batches (cifar-10-batches-py/), unpickled so that only
    plain data and numpy arrays can come out: a crafted batch file cannot run code."""
    root = path.parent if path.name == "cifar-10-batches-py" else path
    if download:
        # Here, not at the top: torchvision.datasets adds 1.2-1.4 s to this module's import
        # (benchmarks/lazy_imports.py, docs/RESULTS.md §9), and only a download needs it.
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=True, download=True)  # fetches and verifies the archive
        except Exception as e:  # no network, a failed checksum: say so, briefly
            raise DataError(f"{root}: downloading CIFAR-10 failed ({e})") from None
    folder = root / "cifar-10-batches-py"

    def read(names):
        xs, ys = [], []
        for name in names:
            f = folder / name
            try:
                with open(f, "rb") as fh:
                    d = _PlainUnpickler(fh, encoding="latin1").load()
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
    remove_stale_temporaries(cache_dir())  # a killed conversion's partial cache file
    made = download and not os.path.lexists(path)  # a download's folder, made for it
    try:
        return _load(path, download)
    except OSError as e:  # unreadable folders or files, a failed download
        raise DataError(f"{path}: cannot read the data ({e})") from None
    finally:
        if made and path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # a failed download leaves no empty folder behind


def _load(path: Path, download: bool) -> Cifar10:
    if not path.exists():
        if download:
            path.mkdir(parents=True, exist_ok=True)
        else:
            raise DataError(f"{path}: {missing_reason(path)}. {HOW_TO_GET}")
    kind = _detect(path)
    if kind == "none":
        if download:
            kind = "torchvision"
        else:
            raise DataError(f"{path}: no CIFAR-10 found here. {HOW_TO_GET}")
    source = str(path.resolve())
    cache = None
    if kind != "torchvision" or (path / "cifar-10-batches-py").exists():
        cache = cache_dir() / f"cifar10-{_source_key(_key_path(path, kind))}.pt"
        d = _read_cache(cache)
        if d is not None:
            tensors = (d["train_x"], d["train_y"], d["test_x"], d["test_y"])
            return Cifar10(*tensors, CLASSES, source, d["identity"])
    splits = {"tar": _from_tar, "tree": _from_tree}.get(kind)
    data = splits(path) if splits else _from_batches(path, download)
    (trx, try_), (tex, tey) = data["train"], data["test"]
    ident = tensor_identity(trx, try_, tex, tey)
    if cache is None:
        cache = cache_dir() / f"cifar10-{_source_key(_key_path(path, kind))}.pt"
    record = {"train_x": trx, "train_y": try_, "test_x": tex, "test_y": tey, "identity": ident}
    try:
        atomic_torch_save(record, cache)
    except OSError as e:  # the data are read; only the next load will be slower
        warnings.warn(f"could not write the CIFAR-10 cache {cache}: {e}", stacklevel=3)
    return Cifar10(trx, try_, tex, tey, CLASSES, source, ident)


def _key_path(path: Path, kind: str) -> Path:
    """What the cache key is computed from: the batches folder for torchvision's release."""
    if kind == "torchvision" and path.name != "cifar-10-batches-py":
        return path / "cifar-10-batches-py"
    return path


def _read_cache(cache: Path) -> dict | None:
    """The cached tensors, or None when absent or unusable (then it is rebuilt)."""
    if not cache.exists():
        return None
    try:
        d = load_plain(cache)
        if isinstance(d, dict) and CACHE_KEYS <= d.keys():
            return d
    except Exception:
        pass  # a damaged cache file is ours to rebuild, not the user's problem
    return None


def split_indices(labels: torch.Tensor, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded train/validation split of the training set (sorted indices)."""
    if not 0 < n_val < labels.numel():
        raise DataError(f"validation size {n_val} must be between 1 and {labels.numel() - 1}")
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per = [
        n_val // len(classes) + (1 if i < n_val % len(classes) else 0) for i in range(len(classes))
    ]
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


def make_split(data, n_val: int, train_subset: int | None, seed: int):
    """(train, val) indices into data.train_*: `n_val` validation images and the rest (or a
    stratified `train_subset` of it) for training, stratified and seeded; sizes checked
    first, naming the flag."""
    n = data.train_y.numel()
    if n_val >= n:
        raise ConfigError(f"--val-size: {n_val} leaves no training images; {data.source} has {n}")
    tr_idx, val_idx = split_indices(data.train_y, n_val, seed)
    if train_subset:
        if train_subset > tr_idx.numel():
            raise ConfigError(
                f"--train-subset: {train_subset} is more than the {tr_idx.numel()} "
                "training images left after the validation split"
            )
        pos = stratified_subset(data.train_y[tr_idx], train_subset, seed + 1)
        tr_idx = tr_idx[pos]
    return tr_idx, val_idx


def test_positions(data, test_subset: int | None, seed: int) -> torch.Tensor:
    """The test images a run tests on: all, or a stratified, seeded `test_subset`."""
    n = data.test_y.numel()
    if not test_subset:
        return torch.arange(n)
    if test_subset > n:
        raise ConfigError(f"--test-subset: {test_subset} is more than the {n} test images")
    return stratified_subset(data.test_y, test_subset, seed)
