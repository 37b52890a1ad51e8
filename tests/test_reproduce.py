"""`dnnlab train --stop-after` and `dnnlab reproduce`: a run stopped after K epochs of its
schedule and resumed equals the run trained straight through; a published run's first
epochs trained again here are identical to its published curve; other data, an edited
publication or an output inside it are refused before any training."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dnnlab.cifar.train import train
from dnnlab.cli import main
from dnnlab.errors import ConfigError, InputError
from dnnlab.study.config import study_config
from dnnlab.study.reproduce import ReproduceConfig, judge, read_metrics, reproduce
from dnnlab.study.study import run_study
from dnnlab.utils.outputs import mark
from tests.fakes import make_image_tree, tiny_train_config
from tests.page_oracle import assert_page_says_what_markdown_says


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A study of base with seeds 0 and 1, 2 epochs each, published: (its data, the folder)."""
    root = tmp_path_factory.mktemp("published")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNNLAB_CACHE", str(root / "cache"))
        tree = make_image_tree(root / "tree", n_train=14, n_test=5)
        cfg = study_config(["base"], quick=True, data_root=str(tree))
        budget = dict(train_subset=60, epochs=2, n_val=20, test_subset=30, max_per_split=40)
        cfg = replace(cfg, **budget, seeds=(0, 1), measures="si", cka_samples=0)
        run_study(cfg, root / "s", log=lambda *_: None, plan=False, publish_to=root / "pub")
    return tree, root / "pub"


@pytest.mark.slow  # three short trainings
def test_stop_after_then_resume_equals_the_straight_run(tree, tmp_path):
    cfg = tiny_train_config(tree, model="base", epochs=2, schedule="linear")
    straight = train(cfg, tmp_path / "straight", progress=False)
    part = train(cfg, tmp_path / "part", progress=False, stop_after=1)
    assert part["stopped_after"] == 1 and len(part["metrics"]) == 1
    assert not (tmp_path / "part" / "summary.json").exists()  # unfinished, resumable
    # The first epoch followed the 2-epoch schedule: the same learning rate and figures.
    a = read_metrics(tmp_path / "part" / "metrics.csv")[0]
    b = read_metrics(tmp_path / "straight" / "metrics.csv")[0]
    assert {k: v for k, v in a.items() if k != "seconds"} == {
        k: v for k, v in b.items() if k != "seconds"
    }
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed["test_acc"] == straight["test_acc"]
    assert resumed["best_val_acc"] == straight["best_val_acc"]


def test_stop_after_is_checked_at_the_edge(tree, tmp_path):
    argv = ["train", "--model", "base", "--data-root", str(tree), "--out", str(tmp_path / "r")]
    assert main([*argv, "--stop-after", "0"]) == 2
    assert main([*argv, "--epochs", "3", "--stop-after", "3"]) == 2  # it would stop nothing
    assert not (tmp_path / "r").exists()


def test_a_published_run_reproduces_identically(published, tmp_path):
    tree, pub = published
    out = tmp_path / "repro"
    r = reproduce(
        ReproduceConfig(epochs=2, data_root=str(tree)),
        pub / "runs" / "base",
        out,
        published=pub,
        progress=False,
    )
    assert r["verdict"] == "identical"
    assert r["seeds_beside"].keys() == {"base-seed1"}
    want = read_metrics(pub / "runs" / "base" / "metrics.csv")
    got = read_metrics(out / "run" / "metrics.csv")
    assert [row["val_acc"] for row in got] == [row["val_acc"] for row in want]
    assert json.loads((out / "reproduction.json").read_text())["verdict"] == "identical"
    report = (out / "report.md").read_text()
    assert "reproduced exactly" in report and "base-seed1" in report
    assert "Published studies" in report  # --published: shown first
    assert_page_says_what_markdown_says(out)  # report.html rendered from report.md
    # A second call reuses the epochs there: nothing is trained again.
    before = (out / "run" / "last.pt").stat().st_mtime_ns
    reproduce(
        ReproduceConfig(epochs=1, data_root=str(tree)), pub / "runs" / "base", out, progress=False
    )
    assert (out / "run" / "last.pt").stat().st_mtime_ns == before


def test_reproduce_stops_after_k_epochs_of_the_whole_schedule(published, tmp_path):
    tree, pub = published
    out = tmp_path / "repro"
    r = reproduce(
        ReproduceConfig(epochs=1, data_root=str(tree)),
        pub / "runs" / "base-seed1",
        out,
        progress=False,
    )
    assert r["verdict"] == "identical" and r["schedule_epochs"] == 2
    assert len(read_metrics(out / "run" / "metrics.csv")) == 1
    assert not (out / "run" / "summary.json").exists()
    assert "--resume" in (out / "report.md").read_text()


def _rows(pairs, **same):
    base = {"val_loss": 1.0, "train_loss": 2.0, "train_acc": 0.3, **same}
    return [
        {"epoch": i + 1, "published": {**base, "val_acc": p}, "here": {**base, "val_acc": h}}
        for i, (p, h) in enumerate(pairs)
    ]


def test_judge_by_hand():
    # n_val 5000, p 0.5: 2 * sqrt(2 * 0.25 / 5000) = 0.02 exactly.
    verdict, tol = judge(_rows([(0.5, 0.5)]), 5000)
    assert verdict == "identical" and tol == pytest.approx([0.02])
    assert judge(_rows([(0.5, 0.519)]), 5000)[0] == "consistent"
    assert judge(_rows([(0.5, 0.521)]), 5000)[0] == "differs"
    assert judge(_rows([(0.5, 0.5), (0.5, 0.479)]), 5000)[0] == "differs"  # any epoch
    # Equal accuracy but another loss: consistent, not identical.
    rows = _rows([(0.5, 0.5)])
    rows[0]["here"]["train_loss"] = 2.0000001
    assert judge(rows, 5000)[0] == "consistent"


def test_reproduce_refuses_before_training(published, tmp_path):
    tree, pub = published
    run = pub / "runs" / "base"
    other = make_image_tree(tmp_path / "other", n_train=14, n_test=5, seed=1)
    out = tmp_path / "o"
    with pytest.raises(InputError, match="--data-root .*not the ones"):
        reproduce(ReproduceConfig(data_root=str(other)), run, out, progress=False)
    assert not (out / "run").exists()
    with pytest.raises(ConfigError, match="--epochs 3: .* published 2 epochs"):
        reproduce(ReproduceConfig(epochs=3, data_root=str(tree)), run, out, progress=False)
    with pytest.raises(InputError, match="inside the published study"):
        reproduce(ReproduceConfig(data_root=str(tree)), run, pub / "mine", progress=False)
    loose = shutil.copytree(run, tmp_path / "loose" / "base")
    with pytest.raises(InputError, match="not a run of a published study"):
        reproduce(ReproduceConfig(data_root=str(tree)), loose, out, progress=False)
    edited = shutil.copytree(pub, tmp_path / "edited")
    with open(edited / "runs" / "base" / "metrics.csv", "a") as fh:
        fh.write("3,0.1,1,0.9,1,0.99,1\n")
    with pytest.raises(InputError, match="does not match its manifest.*metrics.csv"):
        reproduce(
            ReproduceConfig(data_root=str(tree)), edited / "runs" / "base", out, progress=False
        )
    assert not out.exists() or not any(out.iterdir())


def test_reproduce_command_prints_the_comparison(published, tmp_path, capsys, monkeypatch):
    tree, pub = published
    monkeypatch.delenv("DNNLAB_DATA", raising=False)
    out = tmp_path / "cli"
    argv = ["reproduce", str(pub / "runs" / "base"), "--epochs", "1", "--data-root", str(tree)]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reproduced exactly" in text and "epoch 1 of 2" in text
    assert main([*argv, "--epochs", "0", "--out", str(out)]) == 2
    assert main([*argv[:2], "--out", str(Path(tmp_path) / "x")]) == 2  # no data given


def test_a_refused_reproduction_writes_nothing(published, tmp_path):
    """The outside test's cases: a user's folder under OUT/run, and a device that is not
    here, were refused only after the marker had been written into OUT."""
    tree, pub = published
    mine = tmp_path / "mine"
    (mine / "run").mkdir(parents=True)
    (mine / "run" / "data.txt").write_text("mine")
    with pytest.raises(InputError, match="did not make"):
        reproduce(ReproduceConfig(data_root=str(tree)), pub / "runs" / "base", mine)
    assert sorted(p.name for p in mine.rglob("*")) == ["data.txt", "run"]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device"):
            cfg = ReproduceConfig(data_root=str(tree), device="cuda")
            reproduce(cfg, pub / "runs" / "base", tmp_path / "new")
        assert not (tmp_path / "new").exists()


def test_an_output_holding_another_runs_reproduction_is_refused_in_reproduces_words(
    published, tmp_path
):
    tree, pub = published
    out = tmp_path / "repro"
    cfg = ReproduceConfig(epochs=1, data_root=str(tree))
    reproduce(cfg, pub / "runs" / "base", out, progress=False)
    before = (out / "run" / "metrics.csv").read_text()
    named = r"--out .*another run \(base, seed 0; settings unlike .*: seed\)"
    with pytest.raises(InputError, match=named):
        reproduce(cfg, pub / "runs" / "base-seed1", out, progress=False)
    assert (out / "run" / "metrics.csv").read_text() == before
    again = reproduce(cfg, pub / "runs" / "base", out, progress=False)  # its own: continues
    assert again["verdict"] == "identical"


def test_an_earlier_reproduction_of_another_schedule_is_refused_naming_out(published, tmp_path):
    # The same run's settings but another number of epochs (its schedule): another run.
    tree, pub = published
    out = tmp_path / "repro"
    mark(out, "reproduce")
    (out / "run").mkdir()
    record = json.loads((pub / "runs" / "base" / "config.json").read_text())
    (out / "run" / "config.json").write_text(json.dumps({**record, "epochs": 3}))
    with pytest.raises(InputError, match=r"--out .*another run .*: epochs\)"):
        reproduce(ReproduceConfig(epochs=1, data_root=str(tree)), pub / "runs" / "base", out)
