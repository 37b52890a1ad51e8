"""Findings of an outside test of the commands (bad and hostile inputs), one test each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dnnlab.cifar import epoch as E
from dnnlab.cifar import train as T
from dnnlab.cifar.rundir import RunError, load_checkpoint
from dnnlab.cli import main
from dnnlab.errors import ConfigError, DnnlabError
from dnnlab.probe.anynet import AnyConfig
from dnnlab.probe.layers import LayerError, describe_layers
from dnnlab.probe.probe import ProbeConfig
from dnnlab.separability import separability
from dnnlab.study.config import study_config
from dnnlab.study.study import run_study


def test_study_checks_the_budget_against_the_data_before_writing(tree, tmp_path):
    cfg = study_config(["base"], quick=True, data_root=str(tree), train_subset=99_999, n_val=20)
    with pytest.raises(ConfigError, match="--train-subset: 99999 is more than"):
        run_study(cfg, tmp_path / "s", log=lambda *_: None)
    assert not (tmp_path / "s" / "study.json").exists()


def test_a_diverged_run_stops_before_its_epoch_is_saved(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "train_one_epoch", lambda *a, **k: (math.nan, 0.1))
    cfg = T.TrainConfig(epochs=2, train_subset=40, n_val=20, test_subset=20, data_root=str(tree))
    with pytest.raises(RunError, match="epoch 1: the training loss is nan"):
        T.train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "summary.json").exists()
    assert not (tmp_path / "r" / "best.pt").exists()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "--epochs", "99999999999999999999"], "--epochs"),
        (["train", "--batch-size", "99999999999999999999"], "--batch-size"),
        (["train", "--lr", "1e30"], "--lr"),
        (["train", "--weight-decay", "1e30"], "--weight-decay"),
    ],
)
def test_huge_training_values_are_refused(argv, flag, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert f"{flag}: " in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_non_finite_features_are_a_dnnlab_error():
    x = np.ones((6, 3))
    x[2, 1] = np.nan
    with pytest.raises(DnnlabError, match="NaN or Inf in 1 rows"):
        separability(x, [0, 0, 0, 1, 1, 1])


def test_probe_names_the_layer_whose_output_is_not_finite():
    from dnnlab.probe.probe import probe_model

    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5))
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")  # NaN weights: layers 0 and 1 are fine, 2 is not
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    with pytest.raises(DnnlabError, match="layer '2' gives NaN or Inf for 40 of the 40 samples"):
        probe_model(m, {"val": (x, y)}, ProbeConfig(splits=("val",)))


def test_probe_settings_ranges():
    with pytest.raises(ConfigError, match="--seed"):
        AnyConfig(model="torchvision:resnet18", data="x", seed=-1)
    with pytest.raises(ConfigError, match="--image-size"):
        AnyConfig(model="torchvision:resnet18", data="x", image_size=99_999_999)
    with pytest.raises(ConfigError, match="--cka-splits: bogus is not among the probed splits"):
        ProbeConfig(splits=("val",), cka_splits="val,bogus")


def test_output_key_that_picks_nothing_is_refused():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with pytest.raises(LayerError, match="--output-key '3': every probed layer returns a plain"):
        describe_layers(m, torch.randn(2, 4), ["0", "1"], output_key="3")


def test_follow_up_folders_are_checked_before_the_probe(tree, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["probe", "--model", "torchvision:resnet18", "--data", str(tree), "--out", str(out)]
    assert main([*argv, "--compare", str(tmp_path / "nowhere")]) == 2
    assert "--compare" in capsys.readouterr().err and not out.exists()


def test_si_alpha_and_memory_name_their_flag(tmp_path, capsys):
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, np.random.default_rng(0).normal(size=(20, 3)))
    np.save(y, np.arange(20) % 2)
    assert main(["si", str(x), str(y), "--alpha", "inf"]) == 2
    assert "--alpha must be a finite number > 0" in capsys.readouterr().err
    assert main(["si", str(x), str(y), "--max-memory", "0"]) == 2
    assert "--max-memory: " in capsys.readouterr().err
    assert main(["si", str(x), str(y), "--max-memory", "1KB"]) == 2
    err = capsys.readouterr().err
    assert "0.00 GiB" not in err and "1000 B is too small" in err


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_refusing_a_crafted_checkpoint_does_not_suggest_the_unsafe_load(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(marker)}, tmp_path / "best.pt")
    with pytest.raises(RunError) as e:
        load_checkpoint(tmp_path / "best.pt")
    assert "could run code" in str(e.value) and "weights_only" not in str(e.value)
    assert not marker.exists()
