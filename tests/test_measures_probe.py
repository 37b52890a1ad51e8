"""The probe with knn, nc1, linear and CKA: values equal the measures on each layer's own
features, fitted linear classifiers persist for a resumed run, and the figures are written."""

import json

import pytest
import torch
from torch import nn

from dnnlab.errors import InputError
from dnnlab.probe.probe import ProbeConfig, plot_probe, probe_model
from dnnlab.separability import separability
from dnnlab.separability.linear import linear_accuracy
from tests import oracle


def model_and_splits():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 40), nn.Tanh())
    g = torch.Generator().manual_seed(1)

    def split(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return torch.randn(n, 6, generator=g) + y[:, None].float(), y

    return m, {"train20": split(50), "val": split(30), "test": split(25)}


def layer_outputs(m, x):
    outs, h = {}, x
    for name, mod in m.named_children():
        h = mod(h)
        outs[name] = h.detach()
    return outs


MEASURES = "si,knn:3,nc1,linear"


@pytest.mark.slow
def test_probe_rows_and_cka_match_direct_measures(tmp_path):
    m, splits = model_and_splits()
    cfg = ProbeConfig(measures=MEASURES, cka_splits="val,test")
    res = probe_model(m, splits, cfg, out=tmp_path)
    feats = {s: layer_outputs(m, x) for s, (x, _) in splits.items()}
    ytr = splits["train20"][1]
    for r in res.rows:
        f = feats[r["split"]][r["layer"]]
        y = splits[r["split"]][1]
        want = separability(f, y, "si,knn:3,nc1").values
        for k, v in want.items():
            assert r[k] == pytest.approx(v, rel=1e-12), (r["split"], r["layer"], k)
        probe, scores = linear_accuracy((feats["train20"][r["layer"]], ytr), {"s": (f, y)})
        want_lin = probe.train_accuracy if r["split"] == "train20" else scores["s"]["accuracy"]
        assert r["linear"] == want_lin
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert set(saved["cka"]) == {"val", "test"}
    layers = ["0", "1", "2", "3"]
    for split in ("val", "test"):  # each split's matrix against the float64 oracle
        cka = saved["cka"][split]
        assert cka["layers"] == layers
        for i, a in enumerate(layers):
            assert cka["linear"][i][i] == 1.0
            for j, b in enumerate(layers):
                fa, fb = feats[split][a].double().numpy(), feats[split][b].double().numpy()
                assert cka["linear"][i][j] == pytest.approx(oracle.linear_cka(fa, fb), rel=1e-6)
                assert cka["unbiased"][i][j] == pytest.approx(
                    oracle.unbiased_cka(fa, fb), rel=1e-5, abs=1e-9
                )
    assert (tmp_path / "cka_val.png").exists() and (tmp_path / "cka_test.png").exists()
    assert sorted(p.name for p in (tmp_path / "linear_probe").iterdir()) == [
        f"{n}.pt" for n in layers
    ]
    written = {p.name for p in plot_probe(res.rows, tmp_path)}
    assert {"knn3_per_layer.png", "nc1_per_layer.png", "linear_per_layer.png"} <= written
    assert "linear" in (tmp_path / "probe.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_resumed_probe_scores_with_saved_linear_classifiers(tmp_path):
    m, splits = model_and_splits()
    fresh = probe_model(m, splits, ProbeConfig(measures=MEASURES), out=tmp_path / "a")
    part = {"train20": splits["train20"]}
    probe_model(m, part, ProbeConfig(splits=("train20",), measures=MEASURES), out=tmp_path / "b")
    resumed = probe_model(m, splits, ProbeConfig(measures=MEASURES), out=tmp_path / "b")
    assert [r["linear"] for r in resumed.rows] == [r["linear"] for r in fresh.rows]
    # A saved probe fitted with other settings is refused, not reused.
    cfg_part = ProbeConfig(splits=("train20",), measures=MEASURES)
    probe_model(m, part, cfg_part, out=tmp_path / "c")
    path = tmp_path / "c" / "linear_probe" / "2.pt"
    data = torch.load(path, weights_only=True)
    data["settings"]["normalize"] = "minmax"
    torch.save(data, path)
    with pytest.raises(InputError, match="fitted with"):
        probe_model(m, splits, ProbeConfig(measures=MEASURES), out=tmp_path / "c")
    path.unlink()
    with pytest.raises(InputError, match="2.pt is missing"):
        probe_model(m, splits, ProbeConfig(measures=MEASURES), out=tmp_path / "c")


def test_linear_only(tmp_path):
    m, splits = model_and_splits()
    res = probe_model(m, splits, ProbeConfig(measures="linear"), out=tmp_path)
    assert all(set(r) >= {"linear"} and "si" not in r for r in res.rows)
    # Each layer's value: the float64 ridge oracle fitted on train20, scored on the split
    # (train20's own row is the training accuracy).
    x_fit, y_fit = splits["train20"]
    fit_outs = layer_outputs(m, x_fit)
    for r in res.rows:
        x, y = splits[r["split"]]
        pred, _ = oracle.ridge_classifier(
            fit_outs[r["layer"]].numpy(), y_fit.numpy(), layer_outputs(m, x)[r["layer"]].numpy()
        )
        assert r["linear"] == pytest.approx(float((pred == y.numpy()).mean()), abs=1e-12)


@pytest.mark.parametrize(
    "splits,match",
    [(("val", "test"), "fitted on the train20 split"), (("val", "train20"), "train20 first")],
)
def test_linear_needs_train20_first(splits, match):
    m, data = model_and_splits()
    with pytest.raises(InputError, match=match):
        probe_model(
            m, {s: data[s] for s in splits}, ProbeConfig(splits=splits, measures="si,linear")
        )


@pytest.mark.slow
def test_cka_with_another_run(tree, tmp_path, capsys):
    import shutil

    from dnnlab.cifar.train import TrainConfig, train
    from dnnlab.cli import main

    a = tmp_path / "a"
    cfg = TrainConfig(
        model="base", epochs=1, batch_size=32, n_val=20, train_subset=50, data_root=str(tree)
    )
    train(cfg, a, progress=False)
    shutil.copytree(a, tmp_path / "b")
    argv = [
        "probe",
        str(a),
        "--splits",
        "val",
        "--cka-splits",
        "val",
        "--layers",
        "conv1,elu4,avgpool",
        "--cka-with",
    ]
    assert main([*argv, str(tmp_path / "b")]) == 0
    doc = json.loads((a / "cka_with_b_val.json").read_text())
    assert doc["layers"] == ["conv1", "elu4", "avgpool"] and doc["n"] == 20
    assert doc["checkpoint_sha256"]["a"] == doc["checkpoint_sha256"]["b"]
    for i in range(3):  # the same weights: every layer matches itself exactly
        assert doc["linear"][i][i] == 1.0 and doc["unbiased"][i][i] == 1.0
    assert (a / "cka_with_b_val.png").exists()
    assert json.loads((a / "probe.json").read_text())["cka"]["val"]["layers"] == doc["layers"]
    # Another validation split (another seed): the samples differ, so CKA is refused, by
    # the command before it probes anything, and by the CKA's sample ids when called alone.
    from dnnlab.probe.cka_runs import cka_between_runs

    c = tmp_path / "c"
    train(TrainConfig(**{**cfg.__dict__, "seed": 1}), c, progress=False)
    capsys.readouterr()
    probed = (a / "probe.json").stat().st_mtime_ns
    assert main([*argv, str(c)]) == 2
    err = capsys.readouterr().err
    assert f"--cka-with {c}" in err and "seed 0 and 1" in err, err
    assert (a / "probe.json").stat().st_mtime_ns == probed
    assert not (a / "cka_with_c_val.json").exists()
    with pytest.raises(InputError, match="not those of 'A:conv1' in the same order"):
        cka_between_runs(a, c, ProbeConfig(layers="conv1,elu4,avgpool"))
    # The run itself is no other run.
    assert main([*argv, str(a)]) == 2
    assert "the run itself" in capsys.readouterr().err


@pytest.mark.slow
def test_linear_fit_gets_its_share_beside_the_core_budget():
    # train20's N x N Gram (4,500^2 x 8 bytes = 155 MiB) is larger than the core's part of a
    # 600 MB budget (150 MB): the fit runs in the core's call with its own share on top, and
    # takes the search's Gram; its accuracy is that of a fit of its own on the same features.
    from dnnlab.separability.linear import fit_linear

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 5000), nn.Tanh())
    g = torch.Generator().manual_seed(3)

    def split(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return torch.randn(n, 20, generator=g) + y[:, None].float(), y

    splits = {"train20": split(4500), "val": split(300)}
    cfg = ProbeConfig(
        splits=("train20", "val"), measures="si,linear", layers="1", max_memory="600MB"
    )
    res = probe_model(m, splits, cfg)
    f = {s: layer_outputs(m, x)["1"] for s, (x, _) in splits.items()}
    own = fit_linear(f["train20"], splits["train20"][1])
    rows = {r["split"]: r for r in res.rows}
    assert rows["train20"]["linear"] == own.train_accuracy
    assert rows["val"]["linear"] == own.score(f["val"], splits["val"][1])[0]
