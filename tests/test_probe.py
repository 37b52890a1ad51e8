import json

import numpy as np
import pytest
import torch
from torch import nn

import dnnlab.probe.layer_measures as layer_measures_module
import dnnlab.probe.probe as probe_module
from dnnlab.errors import InputError
from dnnlab.probe.layers import LayerError
from dnnlab.probe.plan import core_minimum, plan_budget, plan_groups
from dnnlab.probe.probe import ProbeConfig, plot_probe, probe_model
from dnnlab.separability import separability


class OutOfOrder(nn.Module):
    """Registers `late` before `early` but runs `early` first; `pair` returns a tuple."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(8, 3)
        self.early = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.pair = Pair()

    def forward(self, x):
        a, _ = self.pair(x)
        return self.late(self.act(self.early(a)))


class Pair(nn.Module):
    def forward(self, x):
        return x * 2, "not a tensor"


class NoTensor(nn.Module):
    def forward(self, x):
        return {"meta": "x"}


def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 6, generator=g) + y[:, None].float()
    return x, y


def by_hand(model, x, y, name):
    feats = []
    h = dict(model.named_modules())[name].register_forward_hook(
        lambda _m, _i, o: feats.append((o[0] if isinstance(o, tuple) else o).reshape(len(x), -1))
    )
    with torch.no_grad():
        model(x)
    h.remove()
    return separability(feats[0], y, "si,csi").values


def test_layer_values_match_core_and_order_follows_execution(tmp_path):
    torch.manual_seed(0)
    m = OutOfOrder()
    x, y = data()
    res = probe_model(m, {"val": (x, y)}, ProbeConfig(splits=("val",)), out=tmp_path)
    assert [r["layer"] for r in res.rows] == ["pair", "early", "act", "late"]
    for r in res.rows:
        want = by_hand(m, x, y, r["layer"])
        assert (r["si"], r["csi"]) == (want["si"], want["csi"])
    assert "first tensor" in res.rows[0]["note"]
    saved = json.loads((tmp_path / "probe.json").read_text())["rows"]
    assert [r["layer"] for r in saved] == ["pair", "early", "act", "late"]
    assert (tmp_path / "probe.csv").read_text().startswith("split,layer,dim,n,si,csi")


def test_small_budget_groups_give_same_numbers(tmp_path):
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(6, 200), nn.ReLU(), nn.Linear(200, 50), nn.ReLU())
    x, y = data(300)
    cfg = ProbeConfig(splits=("a",))
    one = probe_model(m, {"a": (x, y)}, cfg)

    infos = one.layers
    budget = 760_000  # room for the two 200-wide layers, then for the last of them and two more
    _, _, room = plan_budget(budget, 4000, 500, core_minimum(300, 10))
    assert len(plan_groups(infos, 300, room)) > 1
    calls = {"n": 0}
    m[0].register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    small = probe_model(
        m, {"a": (x, y)}, ProbeConfig(splits=("a",), max_memory=budget, batch_size=100)
    )
    assert small.groups["a"] > 1 and small.chain
    # A chain restarts each group's pass from the previous group's last output: the first
    # layer runs in the first pass only, not once per group (+ 2 passes that trace layers).
    assert calls["n"] == 2 + -(-300 // small.batch_size)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("seconds", "stored")} for r in rows]

    assert strip(small.rows) == strip(one.rows)
    mm = probe_model(m, {"a": (x, y)}, ProbeConfig(splits=("a",), memmap="float32"), out=tmp_path)
    assert strip(mm.rows) == strip(one.rows)
    assert {r["stored"] for r in mm.rows} == {"file:float32"}
    assert not list(tmp_path.glob(".probe-spill-*"))  # the feature files are removed


def test_resume_keeps_finished_rows(tmp_path, monkeypatch):
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    x, y = data()
    splits = {"val": (x, y), "test": (x[:60], y[:60])}
    P = layer_measures_module

    real = P.separability
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(P, "separability", flaky)
    with pytest.raises(KeyboardInterrupt):
        probe_model(m, splits, ProbeConfig(splits=("val", "test")), out=tmp_path)
    assert len(json.loads((tmp_path / "probe.json").read_text())["rows"]) == 3
    calls["n"] = -100
    res = probe_model(m, splits, ProbeConfig(splits=("val", "test")), out=tmp_path)
    assert calls["n"] == -100 + 3  # only the three missing (split, layer) pairs were computed
    assert len(res.rows) == 6
    with pytest.raises(InputError, match="--overwrite"):
        probe_model(m, splits, ProbeConfig(measures="si"), out=tmp_path)


def test_plots_written(tmp_path, monkeypatch):
    rows = [
        {"split": s, "layer": f"l{i}", "si": 0.1 * i, "csi": 0.2}
        for s in ("train20", "val", "test")
        for i in range(3)
    ]
    drawn = {}

    def keep(fig, path, dpi):  # what each figure plots, line by line
        drawn[path.name] = {
            ln.get_label(): (list(ln.get_xdata()), [float(v) for v in ln.get_ydata()])
            for ln in fig.axes[0].get_lines()
        }
        path.write_bytes(b"png")

    monkeypatch.setattr(probe_module, "save_figure", keep)
    names = sorted(p.name for p in plot_probe(rows, tmp_path, "m"))
    assert names == ["csi_train20.png", "csi_val_test.png", "si_train20.png", "si_val_test.png"]
    layers = ["l0", "l1", "l2"]
    assert drawn["si_train20.png"] == {"train20": (layers, [0.0, 0.1, 0.2])}
    assert drawn["si_val_test.png"]["test"] == (layers, [0.0, 0.1, 0.2])
    assert set(drawn["csi_val_test.png"]) == {"val", "test"}
    assert drawn["csi_val_test.png"]["val"] == (layers, [0.2, 0.2, 0.2])


def test_bad_layers_and_splits():
    m = OutOfOrder()
    x, y = data()
    with pytest.raises(LayerError, match="valid layers: .*'early'"):
        probe_model(m, {"v": (x, y)}, ProbeConfig(layers="nope"))
    with pytest.raises(LayerError, match="no module name matches"):
        probe_model(m, {"v": (x, y)}, ProbeConfig(layers="re:zz.*"))
    with pytest.raises(ValueError, match="split 'v' is empty"):
        probe_model(m, {"v": (x[:0], y[:0])}, ProbeConfig())
    bad = nn.Sequential(nn.Linear(6, 6), NoTensor())
    with pytest.raises(LayerError, match="'1' has no tensor output"):
        probe_model(bad, {"v": (x, y)}, ProbeConfig())


def test_regex_layers_inside_submodules():
    m = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 2))
    x, y = data()
    res = probe_model(m, {"v": (x, y)}, ProbeConfig(layers=r"re:0\.\d"))
    assert [r["layer"] for r in res.rows] == ["0.0", "0.1"]
    assert np.isfinite([r["si"] for r in res.rows]).all()


class SharedAct(nn.Module):
    """One ELU module called twice on tensors of different sizes, as the course's wide network."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.act = nn.ELU()
        self.b = nn.Linear(8, 4)

    def forward(self, x):
        return self.act(self.b(self.act(self.a(x))))


def test_module_called_twice_is_probed_at_its_first_call():
    torch.manual_seed(3)
    m = SharedAct()
    x, y = data()
    res = probe_model(m, {"v": (x, y)}, ProbeConfig(splits=("v",)))
    assert [(r["layer"], r["dim"]) for r in res.rows] == [("a", 8), ("act", 8), ("b", 4)]
    first = torch.nn.functional.elu(m.a(x)).detach()
    assert res.rows[1]["si"] == separability(first, y, "si").values["si"]
