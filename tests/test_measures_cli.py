"""`dnnlab si` with the measures beyond SI: knn, nc1 and linear with --test."""

import json

import numpy as np
import pytest

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
        (["--measures", "si", "--test", "X", "Y"], "only used by the measure linear"),
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
    extra = [str(d / "xt.npy") if a == "X" else str(d / "yt.npy") if a == "Y" else a for a in extra]
    assert main(["si", str(d / "x.npy"), str(d / "y.npy"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnnlab si: error:") and match in err
