"""A training run is tied to its settings and data, and nothing is lost or run by accident."""

import json

import pytest
import torch

from dnnlab.cifar.data import load_cifar10
from dnnlab.cifar.rundir import RunError, check_run_data
from dnnlab.cifar.train import load_model_checkpoint
from dnnlab.cli import main
from tests.fakes import TINY_TRAIN_ARGS, make_image_tree, make_tar, snapshot


def train(tree, run, *extra):
    return main(["train", *TINY_TRAIN_ARGS, "--data-root", str(tree), "--out", str(run), *extra])


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--lr", "nan"], "--lr: nan is not a finite number"),
        (["--lr", "0"], "--lr: 0.0 is out of range"),
        (["--batch-size", "-4"], "--batch-size: -4 is out of range"),
        (["--epochs", "0"], "--epochs: 0 is out of range"),
        (["--train-subset", "0"], "--train-subset: 0 is out of range"),
        (["--val-size", "0"], "--val-size: 0 is out of range"),
        (["--val-size", "50000"], "--val-size: 50000 is out of range"),
        (["--momentum", "1.5"], "--momentum: 1.5 is out of range"),
        (["--gamma", "-1"], "--gamma: -1.0 is out of range"),
        (["--seed", "-1"], "--seed: -1 is out of range"),
        (["--device", "gpu"], "--device: 'gpu' is not cpu, cuda or cuda:N"),
        (["--model", "vgg"], "--model: 'vgg' is not a model"),
        (["--val-size", "200"], "--val-size: 200 leaves no training images"),
        (["--train-subset", "500"], "--train-subset: 500 is more than the 120 training"),
        (["--test-subset", "51"], "--test-subset: 51 is more than the 50 test images"),
    ],
)
def test_bad_flags_are_named_before_any_work(tree, tmp_path, capsys, flags, named):
    out = tmp_path / "r"
    assert train(tree, out, *flags) == 2
    err = capsys.readouterr().err
    assert "dnnlab train: error: " + named in err, err
    assert not out.exists()


def test_help_documents_ranges(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in (
        "--lr LR peak SGD learning rate (in (0, 10]; default 0.01; budget recipe 0.1; "
        "clipped recipe 0.1)",
        "training epochs (in [1, 100000]; default 100; budget recipe 3; clipped recipe 10)",
        "(in (0, 1000000]; default none; clipped recipe 1.0)",
        "--val-size VAL_SIZE",
        "in [1, 49999]",
        "--momentum MOMENTUM",
        "--schedule {step,linear}",
        "--recipe {corrected,course,budget,clipped}",
    ):
        assert part in text, part


def test_run_records_its_data(finished, tree):
    cfg = json.loads((finished / "config.json").read_text())
    data = load_cifar10(tree)
    assert cfg["data_identity"] == data.identity and cfg["data_source"] == str(tree.resolve())
    check_run_data(finished, data)  # the same data passes


def test_overwrite_checks_every_input_before_replacing(run, tree, tmp_path, capsys):
    before = snapshot(run)
    assert train(tmp_path / "nonexistent", run, "--overwrite") == 2
    assert "does not exist" in capsys.readouterr().err
    assert train(tree, run, "--overwrite", "--val-size", "200") == 2
    assert train(tree, run, "--overwrite", "--model", "nope") == 2
    assert snapshot(run) == before
    assert not list(run.parent.glob(".r.*"))


def test_overwrite_replaces_the_whole_run(run, tree):
    (run / "probe.json").write_text("{}")  # a result of the old weights
    assert train(tree, run, "--overwrite", "--seed", "1") == 0
    assert not (run / "probe.json").exists()
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    assert not list(run.parent.glob(".r.*"))  # no old copy left


def test_overwrite_refuses_a_folder_that_is_not_a_run(tree, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert train(tree, folder, "--overwrite") == 2
    assert "--out" in (err := capsys.readouterr().err) and "a folder dnnlab did not make" in err
    assert (folder / "thesis.tex").read_text() == "precious"


def test_resume_refuses_changed_settings(run, tree, capsys):
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (the run has 0.01)" in err
    assert main(["train", "--out", str(run), "--resume", "--seed", "3", "--val-size", "30"]) == 2
    err = capsys.readouterr().err
    assert "--val-size 30 (the run has 20)" in err and "--seed 3 (the run has 0)" in err
    assert snapshot(run) == before


def test_resume_without_flags_keeps_a_finished_run(run, tree, capsys):
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--data-root", str(tree)]) == 0
    assert snapshot(run) == before
    out = capsys.readouterr().out  # said, not silent
    assert f"{run} is finished already (1 epochs" in out and "--epochs N" in out, out


def test_resume_names_a_setting_the_run_was_without(run, capsys):
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--train-subset", "100"]) == 2
    err = capsys.readouterr().err
    assert "--train-subset 100 (the run was without --train-subset)" in err and "None" not in err
    assert snapshot(run) == before


def test_resume_with_more_epochs_extends_the_run(run, tree, tmp_path, capsys):
    same = make_tar(tree, tmp_path / "same.tar.gz")  # the same images in another form
    assert (
        main(["train", "--out", str(run), "--resume", "--epochs", "2", "--data-root", str(same)])
        == 0
    )
    assert json.loads((run / "config.json").read_text())["data_root"] == str(tree)
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 2
    assert "already completed 2 epochs" in capsys.readouterr().err


def test_resume_on_other_data_is_refused(run, tree, tmp_path, capsys):
    other = make_image_tree(tmp_path / "other", n_train=14, n_test=5, seed=1)
    before = snapshot(run)
    assert (
        main(["train", "--out", str(run), "--resume", "--epochs", "2", "--data-root", str(other)])
        == 2
    )
    err = capsys.readouterr().err
    assert "trained on other data" in err and str(tree.resolve()) in err
    assert str(other.resolve()) in err
    assert snapshot(run) == before
    with pytest.raises(RunError, match="trained on other data"):
        check_run_data(run, load_cifar10(other))
    check_run_data(run, load_cifar10(make_tar(tree, tmp_path / "same.tar.gz")))  # same images


class Evil:
    """Unpickling this creates the marker file: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_checkpoint_cannot_run_code(run, tree, tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(marker), "epoch": 1}, run / "best.pt")
    torch.save({"model": Evil(marker), "epoch": 1}, run / "last.pt")
    with pytest.raises(RunError, match="best.pt: not a loadable dnnlab checkpoint"):
        load_model_checkpoint(run / "best.pt", "base")
    assert (
        main(["train", "--out", str(run), "--resume", "--epochs", "2", "--data-root", str(tree)])
        == 2
    )
    assert "last.pt: not a loadable dnnlab checkpoint" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["last.pt", "config.json", "split.json", "metrics.json"])
def test_damaged_run_files_are_named(run, tree, capsys, name):
    (run / name).write_bytes(b"\x00garbage{")
    before = snapshot(run)
    assert (
        main(["train", "--out", str(run), "--resume", "--epochs", "2", "--data-root", str(tree)])
        == 2
    )
    assert f"{run / name}:" in capsys.readouterr().err
    assert snapshot(run) == before


def test_damaged_best_checkpoint_is_named(run):
    (run / "best.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunError, match="best.pt: not a loadable"):
        load_model_checkpoint(run / "best.pt")


def test_resume_and_overwrite_together_are_refused(run, tree, capsys):
    before = snapshot(run)
    assert train(tree, run, "--resume", "--overwrite") == 2
    assert "give one" in capsys.readouterr().err
    assert snapshot(run) == before


def test_overwrite_replaces_a_damaged_run(run, tree):
    (run / "config.json").write_text("{not json")
    assert train(tree, run, "--overwrite") == 0
    assert "data_identity" in json.loads((run / "config.json").read_text())
