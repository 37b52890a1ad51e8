"""A trained run's files must match its records: `dnnlab train --resume` and `dnnlab
probe RUN` refuse edited or missing records by name, never start over in silence, put
an old run back when an overwrite stops, and never write over their data or a run
another process writes (the trained run: conftest.finished); huge training values, a run
that diverges and a crafted checkpoint are stopped by name."""

import json
import math
import os
import shutil

import pytest
import torch

from dnnlab.cifar import train as T
from dnnlab.cifar.rundir import RunError, load_checkpoint
from dnnlab.cli import main
from dnnlab.utils.outputs import mark
from tests.fakes import TINY_TRAIN_ARGS, Evil, busy, refused, refused_to_write_over, snapshot


# -- no command writes over one of its inputs, with or without --overwrite -------------
def test_train_never_writes_over_its_data(tree, tmp_path, capsys):
    data = shutil.copytree(tree, tmp_path / "run" / "data")
    names = sorted(p.name for p in data.rglob("*"))
    base = ["train", "--model", "base", "--epochs", "1"]
    refused_to_write_over([*base, "--data-root", data, "--out", data], capsys, data)
    refused_to_write_over(
        [*base, "--data-root", data, "--out", tmp_path / "run", "--overwrite"], capsys, data
    )
    assert sorted(p.name for p in data.rglob("*")) == names


# -- one writer per folder; a killed writer never leaves it locked ---------------------
def test_train_refuses_a_run_another_process_writes(tree, tmp_path, capsys, holder):
    run = tmp_path / "run"
    p = holder(run)
    base = ["train", "--model", "base", "--epochs", "1", "--data-root", tree, "--out", run]
    busy(base, capsys, run, p.pid)
    busy([*base, "--resume"], capsys, run, p.pid)
    assert not run.exists()


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, **changes}))


def probe_run(run):
    return ["probe", run, "--splits", "val", "--layers", "conv1", "--max-per-split", "10"]


def resume(run, tree):
    return ["train", "--out", run, "--resume", "--epochs", "2", "--data-root", tree]


# -- a trained run (conftest.finished), for the checks of its records ------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "train, val, why",
    [
        ([0, 1, 2, 10_000], [3, 4], "not positions among 140 images"),
        ([0, 1, -1], [3, 4], "not positions among 140 images"),
        ([0, 1, 2], [], "not positions among 140 images"),
        ([0, 1, 2, 2], [3, 4], "repeat an image"),
        ([0, 1, 2, 3], [3, 4], "in both train and val"),
    ],
)
def test_a_bad_split_record_is_named_by_probe_and_resume(run, tree, capsys, train, val, why):
    (run / "split.json").write_text(json.dumps({"train": train, "val": val}))
    before = snapshot(run)
    for argv in (probe_run(run), resume(run, tree)):
        err = refused(argv, capsys, run / "split.json")
        assert why in err, err
    assert snapshot(run) == before


def edit_checkpoint(path, **changes):
    ck = torch.load(path, weights_only=True)
    ck["config"] = {**ck["config"], **changes}
    torch.save(ck, path)


# -- a run's files must match its records ----------------------------------------------
@pytest.mark.parametrize("change", [{"seed": 1}, {"lr": 0.5}, {"model": "bn"}])
def test_probe_refuses_weights_of_another_run(run, tree, capsys, change):
    edit_checkpoint(run / "best.pt", **change)  # e.g. best.pt of a run with another split
    before = snapshot(run)
    err = refused(probe_run(run), capsys, run / "best.pt", next(iter(change)))
    assert "config.json" in err
    assert snapshot(run) == before


@pytest.mark.parametrize("change", [{"lr": 0.5}, {"model": "bn"}, {"seed": 3}, {"momentum": 0.5}])
def test_resume_refuses_an_edited_config(run, tree, capsys, change):
    edit_json(run / "config.json", **change)
    before = snapshot(run)
    err = refused(resume(run, tree), capsys, run / "config.json", next(iter(change)))
    assert "edited" in err and "not a loadable" not in err
    assert snapshot(run) == before


@pytest.mark.parametrize("keep", [["best.pt", "metrics.json"], ["best.pt"], ["metrics.json"]])
def test_resume_without_last_pt_never_starts_over(run, tree, capsys, keep):
    for name in ("last.pt", "summary.json", "best.pt", "metrics.json"):
        if name not in keep:
            (run / name).unlink()
    before = snapshot(run)
    err = refused(resume(run, tree), capsys, run / "last.pt")
    assert "epoch 1" in err
    assert snapshot(run) == before


def test_resume_of_a_run_killed_before_its_first_epoch_starts_it(run, tree):
    for name in ("last.pt", "summary.json", "best.pt", "metrics.json", "metrics.csv"):
        (run / name).unlink()
    assert main([str(a) for a in resume(run, tree)]) == 0
    assert len(json.loads((run / "metrics.json").read_text())) == 2


# -- no leftovers, no small lies ------------------------------------------------------
@pytest.mark.parametrize("stop", [KeyboardInterrupt, "error"])
def test_an_overwrite_stopped_in_its_first_epoch_puts_the_old_run_back(
    run, tree, capsys, monkeypatch, stop
):
    import dnnlab.cifar.train as T
    from dnnlab.cifar.rundir import RunError

    def stopped(*a, **k):
        raise stop() if stop is KeyboardInterrupt else RunError("a failure in epoch 1")

    monkeypatch.setattr(T, "train_one_epoch", stopped)
    before = snapshot(run)
    argv = [
        "train",
        *TINY_TRAIN_ARGS,
        "--seed",
        "5",
        "--data-root",
        tree,
        "--out",
        run,
        "--overwrite",
    ]
    assert main([str(a) for a in argv]) == (130 if stop is KeyboardInterrupt else 2)
    err = capsys.readouterr().err
    assert f"back in {run}" in err and "Traceback" not in err, err
    if stop is KeyboardInterrupt:  # --resume would continue the run put back, not replace it
        assert "again with --overwrite" in err and "--resume" not in err, err
    assert snapshot(run) == before
    assert not [n for n in os.listdir(run.parent) if n.endswith(".old")]  # none left behind


def test_a_replaced_run_a_killed_overwrite_left_is_put_back(run, tree, capsys):
    before = snapshot(run)
    hidden = run.with_name(".r.999999999.old")  # a pid no process has
    run.rename(hidden)
    mark(run, "train")  # the killed replacement had written only its marker and config
    (run / "config.json").write_text(json.dumps({"model": "base"}))
    argv = ["train", "--out", run, "--resume", "--data-root", tree]
    assert main([str(a) for a in argv]) == 0  # the put-back run is finished: nothing to do
    assert f"back in {run}" in capsys.readouterr().err
    assert snapshot(run) == before and not hidden.exists()


def test_a_replaced_run_killed_before_its_marker_was_written_is_put_back(run, tree, capsys):
    # kill -9 just after the old run was moved aside: the new folder holds only the
    # marker's temporary, so no marker proves it ours (an outside tester's case).
    before = snapshot(run)
    hidden = run.with_name(".r.999999999.old")

    def killed_replacement():
        run.rename(hidden)
        run.mkdir()
        (run / "..dnnlab-output.999999999.abcd1234.tmp").write_text("{")

    killed_replacement()
    argv = ["train", *TINY_TRAIN_ARGS, "--data-root", tree, "--out", run]  # a plain rerun
    err = refused(argv, capsys, "holds a finished run")  # put back first, then judged
    assert f"back in {run}" in err
    assert snapshot(run) == before and not hidden.exists()
    killed_replacement()
    assert main([str(a) for a in ["train", "--out", run, "--resume", "--data-root", tree]]) == 0
    assert f"back in {run}" in capsys.readouterr().err  # the run is finished: nothing to do
    assert snapshot(run) == before and not hidden.exists()


def cut_first_tensor(ck):
    k = next(iter(ck["model"]))
    ck["model"][k] = ck["model"][k][:1]


@pytest.mark.parametrize(
    "name, damage",
    [
        ("last.pt", lambda ck: ck.pop("optimizer")),
        ("last.pt", lambda ck: ck.update(rng={})),
        ("last.pt", cut_first_tensor),
        ("best.pt", cut_first_tensor),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_before_the_run_changes(
    run, tree, capsys, name, damage
):
    ck = torch.load(run / name, weights_only=True)
    damage(ck)
    torch.save(ck, run / name)
    before = snapshot(run)
    refused(resume(run, tree), capsys, run / name)
    assert snapshot(run) == before  # summary.json and config.json untouched


@pytest.mark.parametrize("edit", ["swap", "seed"])
def test_a_split_record_of_another_draw_is_named_by_probe_and_resume(run, tree, capsys, edit):
    f = run / "split.json"
    s = json.loads(f.read_text())
    if edit == "swap":  # still valid positions, disjoint: only the draw tells
        s["train"][0], s["val"][0] = s["val"][0], s["train"][0]
    else:  # another seed's split of the same sizes
        from dnnlab.cifar.data import load_cifar10, make_split

        tr, va = make_split(load_cifar10(tree), 20, None, 7)
        s = {"train": tr.tolist(), "val": va.tolist()}
    f.write_text(json.dumps(s))
    before = snapshot(run)
    for argv in (probe_run(run), resume(run, tree)):
        assert "not the split that seed 0" in refused(argv, capsys, f)
    assert snapshot(run) == before


@pytest.mark.parametrize("rows", [[1, 2], "other"])
def test_a_metrics_record_of_another_run_is_refused_before_the_run_changes(run, tree, capsys, rows):
    f = run / "metrics.json"
    if rows == "other":  # another run's epoch 1 (same keys): its val_acc is not last.pt's
        edit = json.loads(f.read_text())
        edit[0]["val_acc"] += 0.01
        rows = edit
    f.write_text(json.dumps(rows))
    before = snapshot(run)
    refused(resume(run, tree), capsys, f)
    assert snapshot(run) == before


def test_stop_after_within_the_epochs_done_trains_and_writes_nothing(run, tree, capsys):
    before = snapshot(run)
    argv = ["train", "--out", run, "--resume", "--epochs", "3", "--stop-after", "1"]
    assert main([str(a) for a in [*argv, "--data-root", tree]]) == 0
    assert "has completed 1 epochs already" in capsys.readouterr().out
    assert snapshot(run) == before  # config.json not rewritten, summary.json kept


def test_a_validation_loss_that_is_not_finite_is_a_divergence(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: (math.nan, 0.1))
    cfg = T.TrainConfig(model="base", epochs=2, batch_size=64, n_val=20, data_root=str(tree))
    with pytest.raises(RunError, match="epoch 1: the validation loss is nan"):
        T.train(cfg, tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "last.pt").exists()  # the epoch is not saved


# -- messages and settings that say what is so -------------------------------------------
def test_a_resume_message_names_switches_that_exist():
    from dnnlab.cifar.config import TrainConfig
    from dnnlab.cifar.rundir import _settings_changed

    (said,) = _settings_changed(TrainConfig(bf16=False), TrainConfig())
    assert said == "bf16 on (without --no-bf16; the run was with --no-bf16)"


# -- a resume message names only the flags given ------------------------------------------------
@pytest.mark.slow
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


# -- a diverged run, huge training values and a crafted checkpoint, stopped by name -----
def test_a_diverged_run_stops_before_its_epoch_is_saved(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "train_one_epoch", lambda *a, **k: (math.nan, 0.1))
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


def test_refusing_a_crafted_checkpoint_does_not_suggest_the_unsafe_load(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(marker)}, tmp_path / "best.pt")
    with pytest.raises(RunError) as e:
        load_checkpoint(tmp_path / "best.pt")
    assert "could run code" in str(e.value) and "weights_only" not in str(e.value)
    assert not marker.exists()
