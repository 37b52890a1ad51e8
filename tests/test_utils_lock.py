"""dnnlab.utils.lock: one writer per folder; a held folder is refused at once naming
its holder (on every torchrun rank); a killed writer never leaves it locked; the lock
removes only the folders it made."""

import os

import pytest

from tests.fakes import HOLD, free_port


# -- one writer per folder; a killed writer never leaves it locked ---------------------
@pytest.mark.slow
def test_a_held_folder_is_refused_at_once_naming_it_and_its_holder(tmp_path, holder):
    from dnnlab.utils.lock import FolderBusy, folder_lock

    out = tmp_path / "run"
    p = holder(out)
    with pytest.raises(FolderBusy) as e:
        with folder_lock(tmp_path / "." / "run"):
            pass
    assert str(out) in str(e.value) and f"pid {p.pid}" in str(e.value)
    p.kill()
    p.wait()
    with folder_lock(out):  # a killed holder leaves nothing locked
        with folder_lock(out):  # re-entrant within one process
            pass
    assert not any(n.endswith(".lock") for n in os.listdir(tmp_path))


def test_a_lock_file_left_behind_holds_nothing(tmp_path):
    from dnnlab.utils.lock import folder_lock, lock_path

    lock_path(tmp_path / "run").write_text("999999\n")  # a killed process's leftover
    with folder_lock(tmp_path / "run"):
        pass
    assert not lock_path(tmp_path / "run").exists()


def test_lock_removes_only_the_folders_it_made(tmp_path):
    from dnnlab.utils.lock import folder_lock

    with folder_lock(tmp_path / "a" / "b" / "run"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()


def _lock_worker(rank, world, port, folder, out):
    import torch.distributed as dist

    from dnnlab.utils.lock import job_lock

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with job_lock(folder, rank, world):
            dist.barrier()  # where the other ranks waited for ever before
            out[rank] = "granted"
    except Exception as e:
        out[rank] = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()


# -- torchrun: a folder lock refused to rank 0 ends every rank ------------------------------
@pytest.mark.slow
def test_a_lock_refused_to_rank_0_reaches_every_rank(tmp_path):
    import subprocess
    import sys

    import torch.multiprocessing as mp

    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", HOLD, str(folder)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        with mp.Manager() as m:
            out = m.dict()
            mp.spawn(_lock_worker, args=(2, free_port(), str(folder), out), nprocs=2)
            got = dict(out)
    finally:
        p.kill()
        p.wait()
    assert got[0] == got[1] and got[1].startswith("FolderBusy") and f"pid {p.pid}" in got[1]
