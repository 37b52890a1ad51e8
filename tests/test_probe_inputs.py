"""Bad inputs to `dnnlab probe`, each refused by name or left out and named: images
that are truncated or too few, weights of another kind or that would run code, model
arguments the library rejects, outputs over the data or weights, and train20 with one
sample a class."""

import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dnnlab.cli import main
from dnnlab.errors import ConfigError, DnnlabError, InputError
from dnnlab.probe.anynet import AnyConfig
from dnnlab.probe.layers import LayerError, describe_layers
from dnnlab.probe.probe import ProbeConfig
from tests.fakes import (
    bad_pt,
    image_folder,
    raises_naming,
    refused,
    refused_to_write_over,
    truncate,
    unsafe_words,
)


# -- no command writes over one of its inputs, with or without --overwrite -------------
def test_probe_never_writes_over_its_data_or_weights(tree, tmp_path, capsys):
    data = shutil.copytree(tree, tmp_path / "data")
    w = tmp_path / "w" / "weights.pt"
    w.parent.mkdir()
    torch.save({}, w)
    base = ["probe", "--model", "torchvision:resnet18", "--data", data]
    refused_to_write_over([*base, "--out", data], capsys, data)
    refused_to_write_over([*base, "--weights", w, "--out", w.parent, "--overwrite"], capsys, w)
    assert sorted(os.listdir(w.parent)) == ["weights.pt"]


# -- a bad file never stops a data set ---------------------------------------------------
@pytest.mark.parametrize("tar", [False, True])
def test_probe_leaves_out_a_truncated_image_and_names_it(tmp_path, capsys, user_file, tar):
    data = image_folder(tmp_path / "imgs", n=6)
    for name in ("train/a/0.png", "test/b/3.png"):
        truncate(data / name)
    if tar:
        import tarfile

        with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tf:
            tf.add(data, arcname="imgs")
        data = tmp_path / "imgs.tar.gz"
    out = tmp_path / "out"
    argv = ["probe", "--model", f"{user_file}:make", "--data", data, "--out", out]
    assert main([str(a) for a in [*argv, "--layers", "early"]]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "unreadable image(s) left out" in captured.err and "3.png" in captured.err
    probe = json.loads((out / "probe.json").read_text())
    assert {r["split"]: r["n"] for r in probe["rows"]}["test"] == 17  # 18 less the bad one


# -- no leftovers, no small lies ------------------------------------------------------
def test_a_failed_probe_leaves_no_output_folder(tmp_path, capsys, user_file):
    data = image_folder(tmp_path / "imgs", splits=("",), n=10)  # its split is drawn here
    out = tmp_path / "out"
    argv = ["probe", "--model", f"{user_file}:make", "--data", data, "--out", out]
    refused([*argv, "--layers", "nosuchlayer"], capsys, "nosuchlayer")
    assert not out.exists()
    out.mkdir()
    refused([*argv, "--layers", "nosuchlayer"], capsys, "nosuchlayer")
    assert os.listdir(out) == []  # a folder the user made is kept, and holds nothing new


def test_probe_with_too_few_readable_images_says_so(tmp_path, capsys, user_file):
    data = image_folder(tmp_path / "imgs", n=2)
    for f in sorted((data / "test").rglob("*.png"))[1:]:
        f.write_bytes(b"not an image")  # one readable test image of six
    out = tmp_path / "out"
    argv = ["probe", "--model", f"{user_file}:make", "--data", data, "--out", out]
    refused(argv, capsys, "'test'", "1 readable image(s)", "5 unreadable", "a/1.png")
    assert not out.exists()


# -- annotations and weights that are wrong but were accepted ----------------------------
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # (deprecated, still loadable)
@pytest.mark.parametrize("kind", ["int8", "complex", "quantized", "meta", "bool"])
def test_probe_weights_of_another_kind_are_refused_by_name(tmp_path, kind):
    import torch
    from torch import nn

    from dnnlab.probe.anymodel import fit_weights

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fit_weights(model, state, "--weights w.pt")  # its own weights: loaded
    w = state["0.weight"]
    state["0.weight"] = {
        "int8": lambda: (w * 100).to(torch.int8),
        "complex": lambda: w.to(torch.complex64),
        "quantized": lambda: torch.quantize_per_tensor(w, 0.01, 0, torch.qint8),
        "meta": lambda: w.to("meta"),
        "bool": lambda: w > 0,
    }[kind]()
    before = model[0].weight.detach().clone()
    with pytest.raises(InputError, match=r"--weights w.pt: '0.weight' (is|is a meta)"):
        fit_weights(model, state, "--weights w.pt")
    assert torch.equal(model[0].weight, before)  # nothing was loaded


# -- no message tells the user to load unsafely ------------------------------------------
def test_timm_checkpoint_path_is_refused_for_weights(tmp_path, capsys):
    pytest.importorskip("timm")
    evil = bad_pt(tmp_path, "pickled")
    spec = f"timm:resnet18:checkpoint_path={str(evil)!r}"
    argv = ["probe", "--model", spec, "--data", tmp_path, "--out", tmp_path / "o"]
    err = refused(argv, capsys, "checkpoint_path", "--weights")
    assert unsafe_words(err) == [] and not (tmp_path / "pwned").exists()


# -- messages and settings that say what is so -------------------------------------------
def test_the_cifar_note_gives_the_trees_own_counts(tmp_path):
    from dnnlab.probe.images import image_splits
    from tests.fakes import make_image_tree

    tree = make_image_tree(tmp_path / "c10", n_train=30, n_test=10)  # 300 + 100 images
    cfg = SimpleNamespace(data=str(tree), seed=0)
    splits, _, how = image_splits(cfg, None, (0.5,) * 3, (0.5,) * 3, tmp_path / "out")
    assert "(30 of 300; seed 0)" in how and "50,000" not in how
    assert f"({len(splits['train20'].labels)})" in how and "test images (100)" in how


# -- no traceback from an unusual input --------------------------------------------------
@pytest.mark.parametrize(
    "spec, why",
    [
        ("torchvision:resnet18:num_classes=-3", "RuntimeError"),
        ("torchvision:vit_b_16:image_size=7", "AssertionError"),
    ],
)
def test_model_arguments_the_library_rejects_are_named(tmp_path, capsys, spec, why):
    argv = ["probe", "--model", spec, "--data", tmp_path, "--out", tmp_path / "o"]
    refused(argv, capsys, spec, f"the library rejects it ({why}")


# -- the probe's linear measure when train20 is no training set -----------------------------
def test_probe_linear_when_every_train20_class_has_one_sample(tmp_path):
    """The train20 rows are NaN with the reason (as for every measure there); val and test
    have no classifier to score with: NaN with that reason, also in a resumed probe (was
    AttributeError: 'NoneType' object has no attribute 'score')."""

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


# -- a non-finite layer, settings and follow-up folders, named before any work ---------
def test_probe_names_the_layer_whose_output_is_not_finite():
    from dnnlab.probe.probe import probe_model

    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5))
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")  # NaN weights: layers 0 and 1 are fine, 2 is not
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    with raises_naming(DnnlabError, "layer '2'", "NaN or Inf", "40 of the 40 samples"):
        probe_model(m, {"val": (x, y)}, ProbeConfig(splits=("val",)))


def test_probe_settings_ranges():
    with pytest.raises(ConfigError, match="--seed"):
        AnyConfig(model="torchvision:resnet18", data="x", seed=-1)
    with pytest.raises(ConfigError, match="--image-size"):
        AnyConfig(model="torchvision:resnet18", data="x", image_size=99_999_999)
    with raises_naming(ConfigError, "--cka-splits", "bogus", "probed splits"):
        ProbeConfig(splits=("val",), cka_splits="val,bogus")


def test_output_key_that_picks_nothing_is_refused():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with raises_naming(LayerError, "--output-key '3'", "every probed layer"):
        describe_layers(m, torch.randn(2, 4), ["0", "1"], output_key="3")


def test_follow_up_folders_are_checked_before_the_probe(tree, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["probe", "--model", "torchvision:resnet18", "--data", str(tree), "--out", str(out)]
    assert main([*argv, "--compare", str(tmp_path / "nowhere")]) == 2
    assert "--compare" in capsys.readouterr().err and not out.exists()
    # Its own output folder is no other probe (it was blamed on --out as an input).
    out.mkdir()
    (out / "probe.json").write_text('{"rows": []}')
    assert main([*argv, "--compare", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--compare {out}: the folder this probe writes" in err, err


def test_a_run_probe_refuses_the_settings_of_a_model_probe(run, tmp_path, capsys):
    """`probe RUN --out DIR` wrote into RUN and ignored --out without a word (outside test)."""
    user = tmp_path / "user"
    assert main(["probe", str(run), "--out", str(user)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "leave it out" in err and not user.exists()
    assert main(["probe", str(run), "--weights", str(tmp_path / "w.pt")]) == 2
    assert "--weights" in capsys.readouterr().err
