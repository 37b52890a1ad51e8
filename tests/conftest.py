import os
import shutil
import subprocess
import sys

import pytest
import torch

from dnnlab.cli import main
from tests.fakes import HOLD, TINY_TRAIN_ARGS, USER_MODEL, make_image_tree


def pytest_configure(config):
    """Under pytest-xdist (scripts/test.sh runs a worker per core) each worker's torch, and the
    processes a test starts, take their share of the cores: all of them each would make
    every worker wait on the others' threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        share = max(1, (cores or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    """A small fake CIFAR-10 image-folder tree: 14 train and 5 test images per class."""
    return make_image_tree(tmp_path_factory.mktemp("cifar"), n_train=14, n_test=5)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test converts data into its own cache, never the user's ~/.cache/dnnlab."""
    monkeypatch.setenv("DNNLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def finished(tree, tmp_path_factory):
    """A finished one-epoch run of `base` on the fake tree (once per test module)."""
    run = tmp_path_factory.mktemp("runs") / "r"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        argv = ["train", *TINY_TRAIN_ARGS, "--data-root", str(tree), "--out", str(run)]
        assert main(argv) == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run."""
    return shutil.copytree(finished, tmp_path / "r")


@pytest.fixture
def user_file(tmp_path):
    """usermodels.py with USER_MODEL's factories (make, needs_big_images, not_a_module)."""
    p = tmp_path / "usermodels.py"
    p.write_text(USER_MODEL)
    return p


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of a folder; yields (folder, process); killed after."""
    procs = []

    def start(folder):
        p = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()
