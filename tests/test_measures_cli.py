"""`dnnlab si` with the measures beyond SI: knn, nc1 and linear with --test."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dnnlab.cli import main
from dnnlab.separability import separability


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 80)
    x = rng.normal(size=(80, 5)) + y[:, None]
    np.save(tmp_path / "x.npy", x[:60])
    np.save(tmp_path / "y.npy", y[:60])
    np.save(tmp_path / "xt.npy", x[60:])
    np.save(tmp_path / "yt.npy", y[60:])
    return tmp_path, x, y


def test_si_with_new_measures(files, capsys):
    d, x, y = files
    argv = [
        "si",
        str(d / "x.npy"),
        str(d / "y.npy"),
        "--measures",
        "si,knn:5,nc1,linear",
        "--test",
        str(d / "xt.npy"),
        str(d / "yt.npy"),
        "--alpha",
        "3",
        "--json",
    ]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    want = separability(x[:60], y[:60], "si,knn:5,nc1,linear", test=(x[60:], y[60:]), alpha=3)
    for k in ("si", "knn:5", "nc1", "linear"):
        assert got[k] == pytest.approx(want[k]), k
    assert any("alpha=3" in n for n in got["notes"])


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--measures", "linear"], "linear needs a test set"),
        (["--measures", "si", "--test", "X", "Y"], "--test: a test set is only used by"),
        (["--measures", "linear", "--test", "X4", "Y"], "--test "),
        (["--alpha", "abc"], "argument --alpha: invalid float value: 'abc'"),
        (["--measures", "knn:60"], "knn:60 needs fewer than the N=60 samples"),
        (
            ["--measures", "linear", "--test", "X", "Y", "--max-memory", "1KB"],
            "too small for the linear classifier",
        ),
        (["--measures", "linear", "--test", "X", "Y", "--alpha", "0"], "--alpha must be"),
    ],
)
def test_si_errors(files, capsys, extra, match):
    d, _, _ = files
    np.save(d / "x4.npy", np.load(d / "xt.npy")[:, :4])  # a test set one column short
    names = {"X": "xt.npy", "Y": "yt.npy", "X4": "x4.npy"}
    extra = [str(d / names[a]) if a in names else a for a in extra]
    try:
        rc = main(["si", str(d / "x.npy"), str(d / "y.npy"), *extra])
    except SystemExit as e:  # a flag argparse cannot read
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    # One line, naming the flag, whoever found the fault (argparse or dnnlab).
    assert err.startswith("dnnlab si: error:") and match in err and err.count("\n") == 1


def test_si_too_small_budget_names_one_that_works(files, capsys):
    # The refusal names --max-memory and a budget; that budget then works (a .npy file is
    # read by blocks, whose rows the figure counts too).
    d, _, _ = files
    argv = ["si", str(d / "x.npy"), str(d / "y.npy"), "--measures", "si,knn:5"]
    assert main([*argv, "--max-memory", "1KB"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnnlab si: error: --max-memory 1KB: ")
    least = err.split("allow at least ")[1].strip().replace(" ", "")
    assert main([*argv, "--max-memory", least, "--json"]) == 0


def test_si_too_small_budget_counts_the_inputs_read_whole(tmp_path, capsys):
    # A .pt file is read whole: the figure to allow is the inputs plus the core's least.
    rng = np.random.default_rng(1)
    torch.save(torch.from_numpy(rng.normal(size=(600, 256)).astype(np.float32)), tmp_path / "x.pt")
    np.save(tmp_path / "y.npy", np.arange(600) % 3)
    argv = ["si", str(tmp_path / "x.pt"), str(tmp_path / "y.npy")]
    assert main([*argv, "--max-memory", "700KB"]) == 2
    err = capsys.readouterr().err
    assert "the inputs read whole hold" in err and "in all" in err
    least = err.split("so --max-memory ")[1].split(" in all")[0].replace(" ", "")
    assert main([*argv, "--max-memory", least, "--json"]) == 0


@pytest.mark.slow
def test_si_stops_quietly_when_its_reader_does(files):
    # `dnnlab si ... | head`: the reader goes away; no traceback, exit status 1.
    d, _, _ = files
    cmd = [sys.executable, "-m", "dnnlab", "si", str(d / "x.npy"), str(d / "y.npy"), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the process has written anything (it is importing torch)
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "Traceback" not in err
