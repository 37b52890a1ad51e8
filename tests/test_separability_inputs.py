"""Inputs whose numbers would silently be wrong or mean nothing: the scale of the features
(normalization is scale-invariant) and classes of one sample (named, not measured)."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnlab.cli import main
from dnnlab.errors import InputError
from dnnlab.probe.probe import ProbeConfig, probe_model
from dnnlab.separability import separability
from tests import oracle

MEASURES = "si,csi,hsi:2,soft:3,knn:3,nc1"


def clustered(n=240, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return rng.normal(size=(n, d)) + y[:, None] * 0.6 + 3.0, y


@pytest.mark.parametrize("method", ["zscore", "minmax"])
@pytest.mark.parametrize("c", [1e-38, 1e-120, 1e-200, 1e-300, 1e30, 1e150, 1e300])
def test_every_measure_is_scale_invariant(method, c):
    x, y = clustered()
    want = separability(x, y, MEASURES, normalize_method=method)
    got = separability(x * c, y, MEASURES, normalize_method=method)
    for k, v in want.values.items():
        if k == "nc1":
            assert got[k] == pytest.approx(v, rel=1e-6)
        else:
            assert got[k] == v, (k, c)
    # and the oracle agrees on the unscaled features
    assert want["si"] == oracle.measures(x, y, (1,), method)["si"]


def test_float32_features_near_the_bottom_of_their_range():
    x, y = clustered()
    want = separability(x.astype(np.float32), y, MEASURES)
    got = separability((x * 1e-36).astype(np.float32), y, MEASURES)
    assert got["si"] == want["si"] and got["csi"] == want["csi"]


def test_a_spread_beyond_float64_is_refused_with_the_reason():
    x, y = clustered()
    with pytest.raises(InputError, match="too small or too large for float64"):
        separability(x * 1e-315, y, "si")  # subnormal: 1 / spread overflows


def test_every_class_of_one_sample_is_named_not_measured(capsys):
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(InputError, match="every one of the 6 classes has a single sample"):
        separability(x, np.arange(6), "si,csi")
    r = separability(x, np.arange(6), "si,csi,knn:2", undefined="nan")
    assert all(np.isnan(v) for v in r.values.values())
    assert "single sample" in r.notes[0]
    assert main_si(capsys, x, np.arange(6)) == 2


def main_si(capsys, x, y):
    d = Path(tempfile.mkdtemp())
    np.save(d / "x.npy", np.asarray(x))
    np.save(d / "y.npy", np.asarray(y))
    rc = main(["si", str(d / "x.npy"), str(d / "y.npy")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UserWarning" not in err
    if rc:
        assert "single sample" in err or "one label" in err
    return rc


def test_some_classes_of_one_sample_are_noted():
    x, y = clustered(n=60)
    y = y.copy()
    y[0] = 7  # class 7 has one sample
    r = separability(x, y, "si,csi")
    assert any("1 of the 4 classes has a single sample (first: '7')" in n for n in r.notes)


def test_one_label_note_without_a_raw_warning(capsys):
    assert main_si(capsys, np.random.default_rng(0).normal(size=(2, 3)), [1, 1]) == 0


def test_a_probe_split_of_singletons_gives_nan_rows_with_the_reason(tmp_path):
    x = torch.randn(2, 5)
    y = torch.tensor([0, 1])
    m = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(5, 4))
    res = probe_model(m, {"val": (x, y)}, ProbeConfig(layers="0,1"), out=tmp_path / "p")
    assert len(res.rows) == 2
    for r in res.rows:
        assert np.isnan(r["si"]) and np.isnan(r["csi"])
        assert "every one of the 2 classes has a single sample" in r["note"]
