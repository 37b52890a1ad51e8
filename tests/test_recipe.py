"""The course recipe's behaviours, each against the corrected recipe on the same tiny data."""

import json
from dataclasses import asdict

import pytest
import torch

import dnnlab.cifar.train as T
from dnnlab.cifar.data import load_cifar10, make_split
from dnnlab.cifar.models import build_model
from dnnlab.cifar.recipe import RECIPES, SETTINGS, softmax_head, val_generator
from dnnlab.cifar.rundir import data_record
from dnnlab.cli import main
from dnnlab.errors import ConfigError
from dnnlab.probe.trained_run import list_run, run_splits
from dnnlab.settings import validate
from tests.fakes import cli, raises_naming, tiny_train_config


def cfg(tree, **kw):
    return tiny_train_config(tree, **{"model": "base", "epochs": 3, **kw})


def test_recipe_names_and_refusals():
    assert T.TrainConfig().recipe == "corrected"
    assert T.TrainConfig(recipe="seed").recipe == "course"  # issue 12's name, in old records
    with raises_naming(ConfigError, "--recipe", "'sead'", "corrected, course"):
        T.TrainConfig(recipe="sead")
    with pytest.raises(ConfigError, match="--softmax-head: the course's wide network"):
        T.TrainConfig(model="wide", softmax_head=True)
    # The course recipe's softmax head: every network but wide.
    assert head(recipe="course")
    assert not head(model="wide", recipe="course")
    assert not head(recipe="corrected")
    assert head(recipe="corrected", softmax_head=True)


def head(**settings) -> bool:
    """Whether the network of a run with these settings ends in a Softmax."""
    c = T.TrainConfig(**settings)
    return softmax_head(c.recipe, c.model, c.softmax_head)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_value_is_a_valid_setting(recipe, monkeypatch):
    # TrainConfig checks the values it is given; those its recipe fills in are checked here.
    c = T.TrainConfig(recipe=recipe)
    assert {k: getattr(c, k) for k in SETTINGS[recipe]} == SETTINGS[recipe]
    validate(c)
    monkeypatch.setitem(SETTINGS[recipe], "epochs", 0)  # a recipe table with a bad value
    with pytest.raises(ConfigError, match="--epochs: 0"):
        validate(T.TrainConfig(recipe=recipe))


@pytest.mark.slow
def test_course_run_records_recipe_softmax_and_tests_last_weights(tree, tmp_path, monkeypatch):
    seen_gens = []
    real_eval = T.evaluate

    def spy(model, x, y, dev, batch=1024, gen=None, precision="fp32", predictions=False):
        seen_gens.append(gen)
        return real_eval(model, x, y, dev, batch, gen, precision, predictions)

    monkeypatch.setattr(T, "evaluate", spy)
    run = tmp_path / "course"
    s = T.train(cfg(tree, recipe="course"), run, progress=False)
    assert s["recipe"] == "course" and s["weights_epoch"] == 3
    assert s["head"].startswith("softmax")
    assert json.loads((run / "config.json").read_text())["recipe"] == "course"
    assert json.loads((run / "summary.json").read_text())["recipe"] == "course"
    best = torch.load(run / "best.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    assert best["softmax_head"] is True
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    # Validation (3 epochs) is augmented with a per-epoch generator; the test (last) is not.
    assert [g is not None for g in seen_gens] == [True, True, True, False]
    model, _ = T.load_model_checkpoint(run / "best.pt", "base")
    assert torch.allclose(model(torch.randn(2, 3, 32, 32)).sum(1), torch.ones(2))
    # `--layers list` shows the layers of the model the run trained, its Softmax included.
    names = [layer.name for layer in list_run(run)]
    assert names[-1] == "softmax" and set(names) <= {n for n, _ in model.named_modules()}

    seen_gens.clear()
    s2 = T.train(cfg(tree), tmp_path / "corrected", progress=False)
    assert s2["recipe"] == "corrected" and s2["head"] == "logits"
    assert s2["weights_epoch"] == s2["best_epoch"]
    assert all(g is None for g in seen_gens)


@pytest.mark.slow
def test_augmented_validation_is_the_training_augmentation(tree):
    data = load_cifar10(str(tree))
    x, y = data.train_x[:40], data.train_y[:40]
    torch.manual_seed(0)
    model = build_model("base").to(memory_format=torch.channels_last)
    dev = torch.device("cpu")
    plain = T.evaluate(model, x, y, dev)
    aug = T.evaluate(model, x, y, dev, gen=val_generator("course", 0, 5))
    again = T.evaluate(model, x, y, dev, gen=val_generator("course", 0, 5))
    assert aug == again  # the same epoch augments the same way (resume is exact)
    assert aug[0] != plain[0]  # and not as the plain evaluation does
    assert val_generator("corrected", 0, 5) is None


def test_course_train20_is_drawn_from_all_training_images(tree, tmp_path):
    n_all = load_cifar10(str(tree)).train_y.numel()  # 140
    for recipe, want in (("course", round(0.2 * n_all)), ("corrected", round(0.2 * 120))):
        run = tmp_path / recipe
        run.mkdir()
        c = cfg(tree, recipe=recipe)
        data = load_cifar10(str(tree))
        tr, va = make_split(data, c.n_val, c.train_subset, c.seed)
        (run / "split.json").write_text(json.dumps({"train": tr.tolist(), "val": va.tolist()}))
        (run / "config.json").write_text(json.dumps({**asdict(c), **data_record(data)}))
        assert len(tr) == 120 and len(va) == 20
        x, _ = run_splits(run, c, ["train20"])["train20"]
        assert x.shape[0] == want
    # The course's train20 includes validation images; the corrected one never does.
    data = load_cifar10(str(tree))
    val_imgs = {data.train_x[i].numpy().tobytes() for i in va.tolist()}
    for recipe, meets in (("course", True), ("corrected", False)):
        c = cfg(tree, recipe=recipe)
        x, _ = run_splits(tmp_path / recipe, c, ["train20"])["train20"]
        hits = sum(img.numpy().tobytes() in val_imgs for img in x)
        assert (hits > 0) is meets


@pytest.mark.slow
def test_cli_recipe_seed_is_refused_but_old_records_read_as_course(tree, tmp_path, capsys):
    """'seed' is the random seed only: --recipe seed is refused; a config.json written when
    the course's recipe was called 'seed' still reads as course (recipe.ALIASES)."""
    run = tmp_path / "r"
    base = ["train", "--model", "wide", "--epochs", "1", "--batch-size", "64"]
    base += ["--val-size", "20", "--data-root", str(tree)]
    assert main([*base, "--out", str(run), "--recipe", "seed"]) == 2
    assert "--recipe seed: that recipe is now called course" in capsys.readouterr().err
    assert not run.exists()
    assert main(["study", "--recipe", "seed", "--out", str(tmp_path / "s")]) == 2
    assert "now called course" in capsys.readouterr().err
    assert main([*base, "--out", str(run), "--recipe", "course"]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["recipe"] == "course" and s["head"] == "logits"  # wide: no Softmax
    assert (
        main(cli("train", model="wide", softmax_head=True, data_root=tree, out=tmp_path / "w")) == 2
    )
    assert "wide network has no Softmax" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
