"""`dnnlab probe --model SPEC --data ROOT`, the memory budget, provenance and bad inputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dnnlab.cli import main
from dnnlab.errors import InputError
from dnnlab.probe.anymodel import model_from_spec
from dnnlab.probe.anynet import AnyConfig, list_any, prepare, probe_any
from dnnlab.probe.images import ImageSplit
from dnnlab.probe.plan import plan_budget
from dnnlab.probe.probe import BudgetError, ProbeConfig, probe_model
from dnnlab.utils.outputs import mark
from tests import oracle
from tests.fakes import cli, image_folder


@pytest.mark.slow
def test_torchvision_model_on_an_image_folder(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs")
    out = tmp_path / "out"
    rc = main(
        cli(
            "probe",
            model="torchvision:resnet18:num_classes=3",
            data=data,
            image_size="32",
            layers="layer1,avgpool",
            out=out,
        )
    )
    assert rc == 0
    rows = json.loads((out / "probe.json").read_text())["rows"]
    assert [(r["split"], r["layer"]) for r in rows] == [
        ("train20", "layer1"),
        ("train20", "avgpool"),
        ("test", "layer1"),
        ("test", "avgpool"),
    ]
    assert all(r["provenance"]["model"] == "torchvision:resnet18:num_classes=3" for r in rows)
    assert rows[2]["n"] == 18 and rows[0]["n"] == 4  # test/: 3 x 6; train20: 20% of 18
    assert (out / "si_val_test.png").exists()


@pytest.mark.slow
def test_user_factory_from_a_file_matches_the_oracle(tmp_path, user_file):
    data = image_folder(tmp_path / "imgs", splits=("",), n=10)  # class folders only
    cfg = AnyConfig(model=f"{user_file}:make", data=str(data), out=str(tmp_path / "out"))
    res, out, _ = probe_any(cfg, ProbeConfig(layers="early,late"))
    split = json.loads((out / "split.json").read_text())
    assert sorted(split) == ["classes", "seed", "train20", "val", "val_fraction"]
    assert len(split["val"]) == 6  # a stratified 20% of 30 images
    assert not any(p.name.startswith(".") for p in data.rglob("*"))  # nothing written there
    # The oracle: the same images through the same model, by hand, measured in float64.
    model = model_from_spec(f"{user_file}:make").eval()
    x = torch.stack(
        [
            (
                torch.from_numpy(np.array(Image.open(data / k).convert("RGB")))
                .permute(2, 0, 1)
                .float()
                / 255
                - 0.5
            )
            / 0.5
            for k in split["val"]
        ]
    )
    feats = {}
    model.early.register_forward_hook(lambda m, i, o: feats.__setitem__("early", o))
    model.late.register_forward_hook(lambda m, i, o: feats.__setitem__("late", o))
    with torch.no_grad():
        model(x)
    y = [k.split("/")[0] for k in split["val"]]
    for r in [r for r in res.rows if r["split"] == "val"]:
        want = oracle.measures(feats[r["layer"]].numpy(), y, orders=(1,))
        assert (r["si"], r["csi"]) == (want["si"], want["csi"])


def test_layers_list_in_execution_order(tmp_path, user_file, capsys):
    assert (
        main(["probe", "--model", f"{user_file}:make", "--layers", "list", "--image-size", "8"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    names = [ln.split()[0] for ln in lines[1:]]
    assert names == ["early", "pool", "late"]  # registered late, early, pool
    assert lines[1].split()[1:] == ["4x8x8", "256"]
    assert [i.name for i in list_any(AnyConfig(model=f"{user_file}:make", image_size=8))] == names


def dup_data(n=90, seed=0):
    """Integer features with exact duplicate rows and tied distances."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (n, 12), generator=g).float()
    x[n // 2 :] = x[: n - n // 2]  # every row twice
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def test_memmap_equals_memory_with_ties_and_duplicates(tmp_path):
    x, y = dup_data()
    m = nn.Sequential(nn.Identity(), nn.Linear(12, 12, bias=False))
    nn.init.eye_(m[1].weight)
    split = {"v": (x, y)}
    mem = probe_model(m, split, ProbeConfig(splits=("v",), measures="si,csi,hsi:3,soft:3"))
    mm = probe_model(
        m,
        split,
        ProbeConfig(splits=("v",), measures="si,csi,hsi:3,soft:3", memmap="float32"),
        out=tmp_path,
    )
    # Small integers are exact in float16 too, so the float16 files give the same values.
    half = probe_model(
        m,
        split,
        ProbeConfig(splits=("v",), measures="si,csi,hsi:3,soft:3", memmap="float16"),
        out=tmp_path,
    )
    want = oracle.measures(x.numpy(), y.numpy(), orders=(1, 3))
    for a, b, h in zip(mem.rows, mm.rows, half.rows, strict=True):
        assert b["stored"] == "file:float32" and a["stored"] == "memory"
        assert h["stored"] == "file:float16"
        for k in ("si", "csi", "hsi:3", "soft:3"):
            assert a[k] == b[k] == h[k] == want[k]


class Wide(nn.Module):
    """One layer far wider than the budget, then a small one."""

    def __init__(self, d=20_000):
        super().__init__()
        self.up = nn.Linear(12, d)
        self.down = nn.Linear(d, 4)

    def forward(self, x):
        return self.down(self.up(x))


@pytest.mark.slow
def test_a_layer_bigger_than_the_budget_finishes(tmp_path):
    torch.manual_seed(0)
    x, y = dup_data(200)
    m = Wide()
    budget = 8 * 2**20  # the `up` features take 200 x 20,000 x 4 = 15 MiB
    res = probe_model(m, {"v": (x, y)}, ProbeConfig(splits=("v",), max_memory=budget), out=tmp_path)
    assert [r["stored"] for r in res.rows] == ["file:float32", "memory"]
    assert res.spilled[0]["layer"] == "up" and res.spilled[0]["bytes"] == 200 * 20_000 * 4
    assert any("streamed through" in n for n in res.notes)
    with torch.no_grad():
        up = m.up(x)
    want = oracle.measures(up.numpy(), y.numpy(), orders=(1,))
    assert (res.rows[0]["si"], res.rows[0]["csi"]) == (want["si"], want["csi"])
    # Only a budget too small for one block is refused, naming the smallest that works.
    with pytest.raises(BudgetError, match="smallest budget that works is") as e:
        probe_model(m, {"v": (x, y)}, ProbeConfig(splits=("v",), max_memory=2 * 2**20))
    # That figure works for every layer (an outside tester found one that held only the first).
    assert probe_model(m, {"v": (x, y)}, ProbeConfig(splits=("v",), max_memory=e.value.least)).rows


def test_budget_plan_bounds_the_forward_pass():
    batch, reserve, room = plan_budget(2**30, 10 * 2**20, 500)
    assert batch == 12 and batch * 10 * 2**20 <= reserve and reserve + room == 2**30


def test_retrained_weights_do_not_reuse_rows(tmp_path):
    torch.manual_seed(0)
    x, y = dup_data()
    m = nn.Sequential(nn.Linear(12, 6), nn.ReLU())
    first = probe_model(m, {"v": (x, y)}, ProbeConfig(splits=("v",)), out=tmp_path)
    with torch.no_grad():
        m[0].weight.mul_(-3).add_(0.5)  # "retrained"
    again = probe_model(m, {"v": (x, y)}, ProbeConfig(splits=("v",)), out=tmp_path)
    fresh = probe_model(m, {"v": (x, y)}, ProbeConfig(splits=("v",)))
    assert any("other weights" in n for n in again.notes)
    assert [r["fingerprint"] for r in again.rows] != [r["fingerprint"] for r in first.rows]
    assert [r["si"] for r in again.rows] == [r["si"] for r in fresh.rows]
    # Fewer samples (another subset) are not reused either.
    sub = probe_model(m, {"v": (x[:60], y[:60])}, ProbeConfig(splits=("v",)), out=tmp_path)
    assert all(r["n"] == 60 for r in sub.rows)
    assert any("another sample count" in n for n in sub.notes)


def test_image_split_reads_in_batches(tmp_path):
    data = image_folder(tmp_path / "imgs", n=2, size=10)
    keys = sorted(str(p) for p in data.rglob("*.png"))
    s = ImageSplit(
        keys,
        [0] * len(keys),
        16,
        (0.5,) * 3,
        (0.5,) * 3,
        lambda k: Image.open(k).convert("RGB"),
        "t",
    )
    assert s[1:4].shape == (3, 3, 16, 16) and len(s) == 12


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "torchvision:resnet_18"], "no model 'resnet_18'; close matches: resnet18"),
        (["--model", "no_such_pkg.models:make"], "cannot import no_such_pkg.models"),
        (["--model", "{file}:not_a_module"], "returned a int, not a torch.nn.Module"),
        (["--model", "{file}:missing"], "has no function 'missing'"),
        (["--model", "{file}:needs_big_images", "--image-size", "4"], "--image-size 4: too small"),
        (["--model", "{file}:make", "--weights", "{weights}"], "lacks 'late.weight' \\(5, 64\\)"),
        (["--model", "{file}:make", "--weights", "{file}"], "cannot be read as plain weights"),
        (["--model", "{file}:make", "--data", "{one}"], "one class only"),
        (["run", "--splits", ","], None),
        (["run", "--layers", "re:["], "not a valid regular expression"),
    ],
)
def test_bad_inputs_are_named(tmp_path, user_file, capsys, argv, match):
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "w.pt")
    one = image_folder(tmp_path / "one", classes=("only",), splits=("",))
    (tmp_path / "run").mkdir()
    fill = dict(file=user_file, weights=tmp_path / "w.pt", one=one)
    argv = [a.format(**fill) for a in argv]
    if argv[0] != "run" and "--data" not in argv:
        argv += ["--data", str(image_folder(tmp_path / "good", splits=("",)))]
    out = ["--out", str(tmp_path / "out")]  # a --model probe's folder
    if argv[0] == "run":
        argv[0] = str(tmp_path / "run")
        out = []  # a run directory is probed into itself; --out is refused with it
    if match is None:  # argparse refuses it: exit status 2 and a message naming the flag
        with pytest.raises(SystemExit) as e:
            main(["probe", *argv])
        assert e.value.code == 2 and "--splits" in capsys.readouterr().err
        return
    assert main(["probe", *argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnnlab probe: error:") and len(err.splitlines()) == 1
    import re

    assert re.search(match, err), err


def test_config_checks_every_setting():
    for kw, flag in (
        (dict(splits=()), "--splits"),
        (dict(batch_size=0), "--batch-size"),
        (dict(max_memory="lots"), "--max-memory"),
        (dict(measures="xx"), "--measures"),
        (dict(memmap="float8"), "--memmap"),
    ):
        with pytest.raises(InputError, match=flag):
            ProbeConfig(**kw)


def _train(tree, run, seed, *extra):
    argv = [
        "train",
        "--model",
        "base",
        "--out",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--val-size",
        "20",
        "--train-subset",
        "40",
        "--seed",
        str(seed),
        "--data-root",
        str(tree),
        *extra,
    ]
    assert main(argv) == 0


@pytest.mark.slow
def test_probe_after_train_overwrite_recomputes(tree, tmp_path, capsys):
    run = tmp_path / "run"
    _train(tree, run, 0)
    probe = ["probe", str(run), "--splits", "val", "--layers", "conv1,fc1"]
    assert main(probe) == 0
    text = (run / "probe.json").read_text()
    old = json.loads(text)["rows"]
    _train(tree, run, 1, "--overwrite")
    # Whether or not train --overwrite keeps the old probe.json, a leftover must not be used.
    (run / "probe.json").write_text(text)
    capsys.readouterr()
    assert main(probe) == 0
    assert "other weights" in capsys.readouterr().err
    new = json.loads((run / "probe.json").read_text())["rows"]
    assert [r["provenance"]["weights"] for r in new] != [r["provenance"]["weights"] for r in old]
    # What a fresh probe of the retrained run gives (no earlier rows at all).
    (run / "probe.json").unlink()
    assert main(probe) == 0
    fresh = json.loads((run / "probe.json").read_text())["rows"]
    assert [(r["si"], r["csi"]) for r in new] == [(r["si"], r["csi"]) for r in fresh]


@pytest.mark.slow
def test_probe_refuses_another_data_root(tree, tmp_path, capsys):
    from tests.fakes import make_image_tree

    run = tmp_path / "run"
    _train(tree, run, 0)
    other = make_image_tree(tmp_path / "other", n_train=14, n_test=5, seed=7)
    rc = main(["probe", str(run), "--splits", "val", "--layers", "fc1", "--data-root", str(other)])
    err = capsys.readouterr().err
    assert rc == 2 and str(other) in err, err
    assert not (run / "probe.json").exists()
    import shutil

    same = shutil.copytree(tree, tmp_path / "copy")  # the same images elsewhere: accepted
    assert (
        main(["probe", str(run), "--splits", "val", "--layers", "fc1", "--data-root", str(same)])
        == 0
    )


@pytest.mark.slow
def test_a_tar_gz_of_class_folders(tmp_path, user_file):
    import tarfile

    data = image_folder(tmp_path / "imgs", splits=("",), n=10)
    with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tf:
        tf.add(data, arcname="imgs")
    kw = dict(model=f"{user_file}:make", out=str(tmp_path / "out"))
    from_tar, _, _ = probe_any(
        AnyConfig(data=str(tmp_path / "imgs.tar.gz"), **kw), ProbeConfig(layers="late")
    )
    kw["out"] = str(tmp_path / "out2")
    from_tree, _, _ = probe_any(AnyConfig(data=str(data), **kw), ProbeConfig(layers="late"))
    assert [(r["split"], r["n"], r["si"], r["csi"]) for r in from_tar.rows] == [
        (r["split"], r["n"], r["si"], r["csi"]) for r in from_tree.rows
    ]


def test_damaged_run_files_are_named(tmp_path, capsys):
    run = mark(tmp_path / "run", "train")  # a run dnnlab made, whose config.json was damaged
    (run / "config.json").write_text("{not json")
    assert main(["probe", str(run), "--splits", "val"]) == 2
    assert "config.json: unreadable or not valid JSON" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "probe.json").write_text('{"rows": 3}')
    x, y = dup_data()
    with pytest.raises(InputError, match=r"probe.json: not a probe.json"):
        probe_model(
            nn.Sequential(nn.Linear(12, 3)),
            {"v": (x, y)},
            ProbeConfig(splits=("v",)),
            out=tmp_path / "out",
        )


@pytest.mark.slow
def test_pages_dropped_while_the_core_reads_them_change_nothing(tmp_path, monkeypatch):
    import dnnlab.probe.spill as S

    monkeypatch.setattr(S, "RELEASE_INTERVAL", 1e-4)  # drop the pages almost continuously
    released = {"n": 0}
    real = S.PageReleaser.release

    def counting(self):
        released["n"] += 1
        real(self)

    monkeypatch.setattr(S.PageReleaser, "release", counting)
    torch.manual_seed(0)
    x, y = dup_data(400)
    m = nn.Sequential(nn.Linear(12, 3000), nn.ReLU())
    cfg = dict(splits=("v",), measures="si,csi,hsi:3")
    mem = probe_model(m, {"v": (x, y)}, ProbeConfig(**cfg))
    mm = probe_model(m, {"v": (x, y)}, ProbeConfig(memmap="float32", **cfg), out=tmp_path)
    assert released["n"] > 10
    assert [(r["si"], r["csi"], r["hsi:3"]) for r in mm.rows] == [
        (r["si"], r["csi"], r["hsi:3"]) for r in mem.rows
    ]


def test_a_killed_probes_feature_files_are_removed_next_time(tmp_path):
    import subprocess

    from dnnlab.probe.spill import SpillFolder

    gone = tmp_path / ".probe-spill-old"
    gone.mkdir()
    proc = subprocess.Popen(["true"])
    proc.wait()
    (gone / "pid").write_text(str(proc.pid))
    (gone / "000-conv2.npy").write_bytes(b"x" * 100)
    alive = tmp_path / ".probe-spill-running"
    alive.mkdir()
    (alive / "pid").write_text("1")  # a live process's folder is left alone
    folder = SpillFolder(tmp_path)
    assert not gone.exists() and alive.exists() and folder.path.exists()
    folder.close()
    assert not folder.path.exists()


def test_random_weights_are_drawn_from_the_seed(tmp_path):
    """Without --weights a torchvision model's weights come from --seed: the same seed gives
    the same network (so two probes of it agree), another seed another, and the caller's
    random state is left as it was."""

    def weights(seed):
        cfg = AnyConfig(model="torchvision:mobilenet_v3_small", data=str(tmp_path), seed=seed)
        return torch.cat([p.detach().flatten() for p in prepare(cfg)[0].parameters()])

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
