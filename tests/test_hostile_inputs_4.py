"""The rest of issue 36's defect classes: inputs within their memory budget (5), the probe's
linear measure on one-sample classes (6), a resume message that names only what was given,
each fixed at its root. (The image decoder's tests: test_images.py; the readers' fuzzing:
test_fuzz_readers.py.)"""

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import dnnlab
from dnnlab.errors import InputError
from dnnlab.separability.io import load_array
from tests.fakes import refused

SRC = str(Path(dnnlab.__file__).resolve().parents[1])  # the code under test, in a child too


def traced_peak(fn):
    """(fn(), the peak of Python and numpy allocations while it ran, in bytes)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- 5: a budget bounds the reading ----------------------------------------------------------
def test_naming_one_npz_member_reads_only_that_member(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    big = np.zeros((4000, 4000))  # 128 MB inflated, a few hundred KB compressed
    np.savez_compressed(tmp_path / "f.npz", X=x, big=big)
    got, peak = traced_peak(lambda: load_array(f"{tmp_path / 'f.npz'}:X"))
    assert np.array_equal(got, x)
    assert peak < big.nbytes / 100  # was 128 MB: every member inflated to pick one


def test_a_csv_is_parsed_into_its_array_not_held_as_text(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 80))
    path = tmp_path / "x.csv"
    np.savetxt(path, x, delimiter=",", fmt="%.17g")  # every float64 exactly
    got, peak = traced_peak(lambda: load_array(str(path)))
    assert np.array_equal(got, x)
    # The result and a row at a time: was about 6x the file (every cell a Python string).
    assert peak < 1.2 * got.nbytes < path.stat().st_size


def test_a_csv_whose_numbers_exceed_the_budget_is_refused_before_it_is_parsed(tmp_path):
    from dnnlab.separability.io import open_features

    path = tmp_path / "x.csv"
    path.write_text("1,2,3,4\n" * 1000)  # 8 KB of text, 32 KB of float64
    with pytest.raises(
        InputError, match=r"x.csv: 1,000 rows of 4 numbers take 31.25 KiB as float64, more than"
    ):
        open_features(str(path), budget=20_000)
    assert open_features(str(path), budget=40_000).shape == (1000, 4)


def copies_of_two_rows(folder: Path, n: int, d: int, seed: int = 0):
    """X.npy of n rows, each one of two distinct rows, and y.npy of two random labels."""
    rng = np.random.default_rng(seed)
    two = rng.normal(size=(2, d)).astype(np.float32)
    which = rng.integers(0, 2, n)
    np.save(folder / "x.npy", two[which])
    y = rng.integers(0, 2, n)
    np.save(folder / "y.npy", y)
    return folder / "x.npy", folder / "y.npy", which, y


def test_copies_of_two_rows_are_measured_by_the_lowest_index_rule(tmp_path):
    """Among neighbours at equal distance the lowest index wins (docs/separability.md): each
    row's k nearest are the k lowest-indexed other copies of it."""
    from dnnlab.separability import separability
    from dnnlab.separability.io import open_features
    from dnnlab.separability.knn import SearchStats

    x_path, _, which, y = copies_of_two_rows(tmp_path, 1500, 256)
    k = 3
    nearest = np.empty((len(y), k), dtype=np.int64)
    for g in (0, 1):
        members = np.flatnonzero(which == g)
        for i in members:
            nearest[i] = members[members != i][:k]
    same = y[nearest] == y[:, None]
    st = SearchStats()
    res = separability(
        open_features(str(x_path), 100 << 20), y, ["si", "hsi:3"], max_memory="100MB", stats=st
    )
    assert res["si"] == pytest.approx(same[:, 0].mean(), abs=1e-12)
    assert res["hsi:3"] == pytest.approx(same.all(1).mean(), abs=1e-12)
    assert st.duplicate_rows == len(y) - 2 * (k + 1)  # only each row's first k+1 copies searched


def run_si(args, out_file: Path, timeout: float):
    """`dnnlab si ARGS` in its own process: (exit status, its output, seconds, its peak
    resident memory in bytes, the kernel's own count: wait4's ru_maxrss)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dnnlab", "si", *map(str, args), "--no-progress"]
    t0 = time.perf_counter()
    with open(out_file, "w+b") as fh:
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                p.kill()
                os.wait4(p.pid, 0)
                pytest.fail(f"dnnlab si {' '.join(map(str, args))}: no answer after {timeout} s")
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        fh.seek(0)
        out = fh.read().decode()
    return p.returncode, out, time.perf_counter() - t0, usage.ru_maxrss * 1024


@pytest.mark.slow
def test_copies_of_two_rows_answer_within_the_budget_at_once(tmp_path):
    """A scaled version of the issue's 20,000 x 16,384 file of two distinct rows under
    --max-memory 100MB (benchmarks/bench_si_file.py --distinct 2 runs the full size): the
    search was every row against every row, each row again against all in the fallback with
    half the file as its tied candidates (2.5 GB, no answer after 300 s)."""
    x, y, _, _ = copies_of_two_rows(tmp_path, 4000, 4096)  # 64 MB of features
    small = tmp_path / "small"
    small.mkdir()
    sx, sy, _, _ = copies_of_two_rows(small, 20, 4, seed=1)
    budget = ["--max-memory", "100MB"]
    code, out, _, interpreter = run_si([sx, sy, *budget], tmp_path / "out", 60)
    assert code == 0, out
    code, out, secs, peak = run_si([x, y, *budget], tmp_path / "out", 60)
    assert code == 0, out
    assert "si " in out
    assert peak - interpreter < 100e6, f"{(peak - interpreter) / 1e6:.0f} MB above the interpreter"


# -- 6: the probe's linear measure when train20 is no training set -----------------------------
def test_probe_linear_when_every_train20_class_has_one_sample(tmp_path):
    """The train20 rows are NaN with the reason (as for every measure there); val and test
    have no classifier to score with: NaN with that reason, also in a resumed probe (was
    AttributeError: 'NoneType' object has no attribute 'score')."""
    import math

    import torch
    from torch import nn

    from dnnlab.probe.probe import ProbeConfig, probe_model

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8))
    g = torch.Generator().manual_seed(1)

    def split(n):
        y = torch.arange(n) % 3
        return torch.randn(n, 6, generator=g) + y[:, None].float(), y

    splits = {"train20": split(3), "val": split(9), "test": split(9)}
    cfg = ProbeConfig(measures="si,linear", per_class=True)
    rows = probe_model(m, splits, cfg, out=tmp_path / "a").rows
    assert {r["split"] for r in rows} == {"train20", "val", "test"}
    for r in rows:
        assert math.isnan(r["linear"])
        assert "single sample" in r["note"]
        if r["split"] != "train20":  # (train20's per-class rows never hold linear)
            assert "linear: NaN, no classifier was fitted on train20" in r["note"]
            assert all(math.isnan(v["linear"]) for v in r["per_class"].values())
            assert not math.isnan(r["si"])  # the other measures are measured
    # Resumed after train20: the saved reason, not "rerun with --overwrite".
    part = ProbeConfig(splits=("train20",), measures="si,linear")
    probe_model(m, {"train20": splits["train20"]}, part, out=tmp_path / "b")
    resumed = probe_model(m, splits, ProbeConfig(measures="si,linear"), out=tmp_path / "b").rows
    assert [r["note"] for r in resumed] == [r["note"] for r in rows]


# -- a resume message names only the flags given ------------------------------------------------
@pytest.mark.parametrize(
    "flags, named",
    [
        # Merged with the run's settings first, the recipe check named the run's own batch
        # size: "--batch-size 64: contradicts --recipe budget, which fixes it (128)".
        (["--recipe", "budget"], "--recipe budget (the run has corrected)"),
        (["--recipe", "budget", "--epochs", "3"], "--recipe budget (the run has corrected)"),
        (["--seed", "3", "--weight-decay", "0.123"], "--weight-decay 0.123 (the run has"),
    ],
)
def test_a_resumed_runs_refusal_names_only_the_flags_given(run, tree, capsys, flags, named):
    err = refused(["train", "--resume", "--data-root", tree, "--out", run, *flags], capsys, named)
    given = {f for f in flags if f.startswith("--")} - {"--epochs"}  # epochs may change
    mentioned = {w.strip("(),;.") for w in err.split() if w.startswith("--")}
    assert mentioned - {"--overwrite", "--out"} == given, err
