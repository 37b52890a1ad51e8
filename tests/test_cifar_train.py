import json
import shutil

import pytest
import torch

import dnnlab.cifar.train as T
from dnnlab.cli import main
from tests.fakes import assert_summary_matches_best, tiny_train_config

ARTEFACTS = [
    "config.json",
    "split.json",
    "metrics.csv",
    "metrics.json",
    "best.pt",
    "last.pt",
    "curves.png",
    "summary.json",
]


cfg = tiny_train_config


def metrics(run):
    rows = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_tiny_run_learns_writes_everything_and_resumes_exactly(tree, tmp_path, monkeypatch):
    full = tmp_path / "full"
    summary = T.train(cfg(tree), full, progress=False)
    for f in ARTEFACTS:
        assert (full / f).exists(), f
    rows = metrics(full)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert summary["params"] == 1_713_034 and summary["head"] == "logits"
    split = json.loads((full / "split.json").read_text())
    assert len(split["val"]) == 20 and len(split["train"]) == 120

    # Interrupt the second epoch, then resume: the metrics must equal the uninterrupted run's.
    calls = {"n": 0}
    real_eval = T.evaluate

    def flaky_eval(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_eval(*a, **k)

    part = tmp_path / "part"
    monkeypatch.setattr(T, "evaluate", flaky_eval)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg(tree), part, progress=False)
    monkeypatch.setattr(T, "evaluate", real_eval)
    assert not (part / "summary.json").exists()
    assert torch.load(part / "last.pt", weights_only=True)["epoch"] == 1
    T.train(cfg(tree), part, resume=True, progress=False)
    assert metrics(part) == rows
    a = torch.load(full / "best.pt", weights_only=True)["model"]
    b = torch.load(part / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_summary_equals_reevaluation_of_best_weights(tree, tmp_path):
    # summary.json's test numbers are those of best.pt on the run's test positions (exactly,
    # on the CPU), and its counts those of the config and split.json
    c = cfg(tree, epochs=1, train_subset=40, test_subset=30)
    run = tmp_path / "run"
    summary = T.train(c, run, progress=False)
    assert summary == json.loads((run / "summary.json").read_text())
    assert_summary_matches_best(run, c, "cpu")
    assert summary["test_images"] == 30 and summary["train_images"] == 40

    # The check notices a summary that says other than the weights do.
    n = summary["test_images"]
    for key, wrong in (
        ("test_acc", summary["test_acc"] + 1 / n if summary["test_acc"] < 1 else 1 - 1 / n),
        ("test_loss", summary["test_loss"] * 1.001),
        ("epochs", 2),
        ("train_images", 41),
        ("test_images", 29),
    ):
        bad = shutil.copytree(run, tmp_path / f"bad-{key}")
        (bad / "summary.json").write_text(json.dumps({**summary, key: wrong}))
        with pytest.raises(AssertionError):
            assert_summary_matches_best(bad, c, "cpu")


def test_best_weights_are_a_copy(tree, tmp_path):
    run = tmp_path / "r"
    T.train(cfg(tree, model="base", epochs=3, lr=0.05), run, progress=False)
    best = torch.load(run / "best.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    rows = json.loads((run / "metrics.json").read_text())
    assert best["best_epoch"] == max(range(3), key=lambda i: (rows[i]["val_acc"], -i)) + 1
    if best["best_epoch"] != 3:
        assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_finished_run_is_not_overwritten(tree, tmp_path, capsys):
    run = tmp_path / "r"
    argv = [
        "train",
        "--model",
        "base",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--val-size",
        "20",
        "--data-root",
        str(tree),
        "--out",
        str(run),
    ]
    assert main(argv) == 0
    before = (run / "summary.json").read_text()
    assert main(argv) == 2
    assert "finished run" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == before


def test_checkpoint_of_another_model(tree, tmp_path):
    run = tmp_path / "r"
    T.train(cfg(tree, model="base", epochs=1), run, progress=False)
    with pytest.raises(T.RunError, match="model 'base', not 'bn'"):
        T.load_model_checkpoint(run / "best.pt", "bn")
    with pytest.raises(T.RunError, match="is a run of 'base'"):
        T.train(cfg(tree, model="bn", epochs=2), run, resume=True, progress=False)


def test_unknown_model_cli(tmp_path, capsys):
    assert main(["train", "--model", "vgg", "--out", str(tmp_path / "x")]) == 2
    assert "choose one of: base, bn" in capsys.readouterr().err
