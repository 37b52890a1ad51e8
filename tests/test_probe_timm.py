"""`dnnlab probe --model timm:NAME` and weights in .safetensors: against a hooks-based
reference, the same rows from a .safetensors and a .pt of the same weights, bad inputs."""

import builtins
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from dnnlab.cli import main
from dnnlab.probe.anymodel import model_from_spec
from dnnlab.probe.anynet import AnyConfig, prepare
from tests import oracle

timm = pytest.importorskip("timm")

MODEL = "timm:test_resnet"  # timm's own small test network; data config: 160 px, ImageNet
LAYERS = ["layer1", "layer3", "global_pool"]


def image_folder(root, size=160, n=5, classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
                img[..., c] += 120
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The same random weights as .safetensors, as a .pt, and as a .pt under 'model'."""
    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    state = timm.create_model("test_resnet").state_dict()
    state = {k: v.contiguous() for k, v in state.items()}
    safetensors.torch.save_file(state, d / "w.safetensors")
    torch.save(state, d / "w.pt")
    torch.save({"model": state, "epoch": 3}, d / "ckpt.pt")
    # A safetensors file with a prefix, saved under a misleading name: read by content.
    safetensors.torch.save_file({f"model.{k}": v for k, v in state.items()}, d / "prefixed.bin")
    return d, state


def probe_rows(data, out, weights, *extra):
    argv = ["probe", "--model", MODEL, "--data", str(data), "--weights", str(weights)]
    argv += ["--layers", ",".join(LAYERS), "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "probe.json").read_text())["rows"]


def values(rows):
    return [(r["split"], r["layer"], r["n"], r["si"], r["csi"]) for r in rows]


@pytest.mark.slow
def test_timm_model_against_hooks_reference(tmp_path, weights):
    wdir, state = weights
    data = image_folder(tmp_path / "imgs")
    rows = probe_rows(data, tmp_path / "out", wdir / "w.safetensors")
    # The reference: the same model and weights by hand, timm's data config, forward hooks.
    model = timm.create_model("test_resnet")
    model.load_state_dict(state)
    model.eval()
    conf = timm.data.resolve_data_config(model=model)
    assert conf["input_size"] == (3, 160, 160)
    mean = torch.tensor(conf["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(conf["std"]).view(1, 3, 1, 1)
    files = sorted((data / "test").glob("*/*.png"))
    x = torch.stack(
        [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]
    )
    x = (x.float() / 255 - mean) / std
    feats = {}
    for name in LAYERS:
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: feats.__setitem__(name, o.detach())
        )
    with torch.no_grad():
        model(x)
    y = [f.parent.name for f in files]
    got = [r for r in rows if r["split"] == "test"]
    assert [r["layer"] for r in got] == LAYERS
    for r in got:
        want = oracle.measures(feats[r["layer"]].flatten(1).numpy(), y, orders=(1,))
        assert (r["si"], r["csi"]) == (want["si"], want["csi"]), r["layer"]
        assert r["n"] == 15


@pytest.mark.slow
def test_safetensors_and_pt_give_the_same_rows(tmp_path, weights):
    wdir, _ = weights
    data = image_folder(tmp_path / "imgs")
    a = probe_rows(data, tmp_path / "a", wdir / "w.safetensors")
    b = probe_rows(data, tmp_path / "b", wdir / "w.pt")
    c = probe_rows(data, tmp_path / "c", wdir / "ckpt.pt", "--weights-key", "model")
    d = probe_rows(data, tmp_path / "d", wdir / "prefixed.bin", "--weights-key", "model")
    assert values(a) == values(b) == values(c) == values(d)


@pytest.mark.slow
def test_data_config_used_unless_flags_say_otherwise():
    model, mean, std, size = prepare(AnyConfig(model="timm:resnet18"))
    assert (size, mean, std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    _, mean, std, size = prepare(
        AnyConfig(model="timm:resnet18", image_size=64, mean="0.5", std="0.25")
    )
    assert (size, mean, std) == (64, (0.5,) * 3, (0.25,) * 3)
    assert model_from_spec("timm:resnet18:num_classes=7").get_classifier().out_features == 7


def test_layers_list_in_execution_order(capsys):
    assert main(["probe", "--model", "timm:resnet18", "--layers", "list"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert names[:4] == ["conv1", "bn1", "act1", "maxpool"]
    assert names.index("layer1") < names.index("layer4") < names.index("global_pool")
    assert names[-1] == "fc"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "timm:resnet_18"], "timm has no model 'resnet_18'; close matches: resnet18"),
        (["--model", "timm:resnet18:pretrained=True"], "nothing is downloaded here"),
        (["--model", "timm:resnet18:depth"], "not k=v"),
        (["--model", "timm:resnet18:bogus_arg=1"], "bogus_arg"),
    ],
)
def test_bad_timm_specs_are_named(capsys, argv, words):
    assert main(["probe", *argv, "--layers", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnnlab probe: error: ") and words in err and "Traceback" not in err


def test_missing_timm_names_the_extra(monkeypatch, capsys):
    real = builtins.__import__

    def no_timm(name, *a, **kw):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    assert main(["probe", "--model", "timm:resnet18", "--layers", "list"]) == 2
    assert "pip install 'dnnlab[timm]'" in capsys.readouterr().err


def test_bad_safetensors_files_are_named(tmp_path, weights, capsys):
    wdir, state = weights
    data = (wdir / "w.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    odd = tmp_path / "odd.safetensors"
    first = next(iter(state))
    other = dict(state)
    other[first] = torch.zeros(1)
    safetensors.torch.save_file(other, odd)
    cases = [
        (cut, "not a readable safetensors file"),
        (odd, repr(first)),  # the first mismatching key, named with both shapes
    ]
    for path, words in cases:
        argv = ["probe", "--model", MODEL, "--weights", str(path), "--layers", "list"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert str(path) in err and words in err and "Traceback" not in err
    argv = ["probe", "--model", MODEL, "--weights", str(wdir / "w.pt"), "--weights-key", "nope"]
    assert main([*argv, "--layers", "list"]) == 2
    assert "--weights-key 'nope'" in capsys.readouterr().err
