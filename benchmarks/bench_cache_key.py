"""What the CIFAR-10 cache key and the data identity cost, against the old top-level key.

    python benchmarks/bench_cache_key.py ../shared/data/cifar10-jpeg.tar.gz

Extracts the archive into a temporary folder (once), then times, in the same process and
back to back: the old key (the tree's top-level modification times only, which missed
deleted or moved images), the new key (every member's path, size and mtime), and the
identity hash of the decoded tensors (done once per conversion). Prints each with the
ratio to the old key.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from dnnlab.cifar.data import _source_key, load_cifar10, tensor_identity


def old_key(path: Path) -> str:
    """The key before this change: the root's and its top-level entries' mtimes."""
    st = path.stat()
    parts = [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    for p in sorted(path.iterdir()):
        parts += [p.name, str(p.stat().st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        with tarfile.open(args.archive) as tf:
            tf.extractall(root, filter="data")
        n_files = sum(1 for p in root.rglob("*") if p.is_file())
        t_old = timed(lambda: old_key(root), args.repeats)
        t_new = timed(lambda: _source_key(root), args.repeats)
        data = load_cifar10(root)  # converts once (into $DNNLAB_CACHE)
        t_id = timed(
            lambda: tensor_identity(data.train_x, data.train_y, data.test_x, data.test_y),
            args.repeats,
        )
        t_load = timed(lambda: load_cifar10(root), args.repeats)
    print(f"tree of {n_files} files; median of {args.repeats} runs each, same process")
    print(f"{'what':<42}{'seconds':>10}{'x old key':>11}")
    for name, t in (
        ("old key (top-level mtimes)", t_old),
        ("new key (every member's path/size/mtime)", t_new),
        ("identity hash (once per conversion)", t_id),
        ("cached load_cifar10 (new key + read)", t_load),
    ):
        print(f"{name:<42}{t:>10.3f}{t / t_old:>11.1f}")


if __name__ == "__main__":
    main()
