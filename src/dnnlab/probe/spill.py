"""Features that do not fit the memory budget: .npy files mapped into memory, kept small.

The separability core reads an (N, D) tensor block by block. Given a tensor backed by a
memory-mapped file it works unchanged, but every page it has touched would stay resident and
count towards the process's memory. A `PageReleaser` thread tells the kernel every few
milliseconds that the process no longer needs the mapped pages (madvise MADV_DONTNEED); on a
shared file mapping the contents stay in the file (dirty pages are written back, clean ones
re-read on the next touch), so only what the core is reading right now stays resident.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from dnnlab.utils.atomic import pid_alive
from dnnlab.utils.outputs import is_ours, mark, remove_ours

RELEASE_INTERVAL = 0.02  # seconds between two releases


class PageReleaser:
    """Drops the resident pages of registered memory maps every `interval` seconds."""

    def __init__(self, interval: float | None = None):
        self.interval = RELEASE_INTERVAL if interval is None else interval
        self.maps: dict[int, mmap.mmap] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, arr: np.memmap) -> None:
        with self.lock:
            self.maps[id(arr)] = arr._mmap
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True, name="page-releaser")
            self.thread.start()

    def remove(self, arr: np.memmap) -> None:
        with self.lock:
            self.maps.pop(id(arr), None)

    def release(self) -> None:
        with self.lock:
            for m in self.maps.values():
                try:
                    m.madvise(mmap.MADV_DONTNEED)
                except (ValueError, OSError):
                    pass  # closed meanwhile

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.release()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


PREFIX = ".probe-spill-"


def sweep_stale(parent: Path) -> list[Path]:
    """Remove feature folders left by probes that were killed (their process is gone)."""
    removed = []
    for d in Path(parent).glob(PREFIX + "*"):
        try:
            pid = int((d / "pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being created: leave it
        if pid != os.getpid() and not pid_alive(pid) and is_ours(d, "scratch"):
            remove_ours(d, "scratch")
            removed.append(d)
    return removed


class SpillFolder:
    """A private folder under `parent` for one probe's feature files; removed on close."""

    def __init__(self, parent: Path | None):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = mark(tempfile.mkdtemp(prefix=PREFIX, dir=parent), "scratch")  # private
        (self.path / "pid").write_text(str(os.getpid()))
        sweep_stale(self.path.parent)
        self.releaser = PageReleaser()
        self.bytes_written = 0
        self.files = 0

    def array(self, name: str, shape: tuple[int, int], dtype: str) -> np.memmap:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        path = self.path / f"{self.files:03d}-{safe}.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.releaser.add(arr)
        self.files += 1
        self.bytes_written += arr.nbytes
        return arr

    def free(self, arr: np.memmap) -> None:
        """Forget one array and delete its file (the caller holds no view of it any more)."""
        self.releaser.remove(arr)
        path = Path(arr.filename)
        del arr
        path.unlink(missing_ok=True)  # a file of this probe's own folder, named here

    def close(self) -> None:
        self.releaser.close()
        remove_ours(self.path, "scratch")


def to_float32(src: np.memmap, folder: SpillFolder, name: str, rows: int = 4096) -> np.memmap:
    """A float32 copy of a float16 feature file, written block by block."""
    dst = folder.array(name + ".f32", src.shape, "float32")
    for s in range(0, src.shape[0], rows):
        dst[s : s + rows] = src[s : s + rows]
    return dst
