"""The third round of an outside tester's defect classes (issue 36), each fixed at its root:
writes that replace nothing the tool did not make (1), inputs that hold still while they are
read (2), annotations and weights wrong but accepted (4), and never unsafe advice (7)."""

import importlib
import os
from types import SimpleNamespace

import numpy as np
import pytest

from dnnlab.cli import main
from dnnlab.errors import InputError
from tests.fakes import UNSAFE_ADVICE, bad_pt, refused, write_voc


class FakeDetector:
    """Detects one fixed box in any photo, with the settings record `detect eval` keeps."""

    config = SimpleNamespace(target="cat", to_dict=lambda: {"detection": {}})

    def detect(self, img):
        box = np.array([[1.0, 1, 9, 9]])
        return SimpleNamespace(boxes=box, scores=np.array([0.9]), seconds=0, proposals=box)


# -- 1: a write replaces nothing the tool did not make --------------------------------------
def test_detect_eval_draw_never_replaces_a_users_file_unasked(tmp_path, capsys):
    from dnnlab.detect.evaluate import evaluate_once

    voc, model, draw = tmp_path / "voc", tmp_path / "model", tmp_path / "drawn"
    for d in (voc, model, draw):
        d.mkdir()
    (model / "model.pt").write_bytes(b"fingerprinted, never loaded here")
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    mine = draw / "a.jpg"  # the user's own file, named as a drawn photo would be
    mine.write_bytes(b"my holiday picture")
    err = refused(["detect", "eval", voc, "--model", model, "--draw", draw], capsys, mine)
    assert "--overwrite" in err
    assert mine.read_bytes() == b"my holiday picture"
    # The same check as detect run's (one gate): --overwrite is the only way to replace it.
    evaluate_once(voc, model, FakeDetector(), draw_dir=draw, overwrite=True)
    assert mine.read_bytes()[:3] == b"\xff\xd8\xff"  # now the drawn JPEG
    assert sorted(os.listdir(draw)) == ["a.jpg"]  # no temporary left beside it
    with pytest.raises(InputError, match="--overwrite"):
        evaluate_once(voc, model, FakeDetector(), draw_dir=draw)


# -- 2: an input that changes while it is read ----------------------------------------------
def si_files(tmp_path, seed=0):
    """A .npy feature file of two well-apart classes and its labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(40) % 2
    np.save(tmp_path / "x.npy", rng.normal(size=(40, 5)) + 4 * y[:, None])
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "x.npy", tmp_path / "y.npy"


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_si_refuses_a_feature_file_that_changes_while_it_is_read(
    tmp_path, capsys, monkeypatch, how
):
    si = importlib.import_module(
        "dnnlab.separability.si_command"
    )  # (dnnlab.separability is a function)

    x, y = si_files(tmp_path)
    other = tmp_path / "other.npy"
    np.save(other, np.random.default_rng(1).normal(size=(40, 5)))  # same shape, other data
    measure = si._measure

    def measure_then_change(*a, **kw):  # another process changes the file mid-run
        res = measure(*a, **kw)
        if how == "renamed over":
            os.replace(other, x)
        else:
            with open(x, "r+b") as fh:
                fh.seek(-8, os.SEEK_END)
                fh.write(b"\x00" * 8)
            os.utime(x, ns=(0, os.stat(x).st_mtime_ns + 1_000_000))
        return res

    monkeypatch.setattr(si, "_measure", measure_then_change)
    assert main(["si", str(x), str(y), "--no-progress"]) == 2
    got = capsys.readouterr()
    assert f"{x}: the file changed while dnnlab read it" in got.err and "Traceback" not in got.err
    assert got.out == ""  # no number printed


def test_a_feature_file_is_read_through_the_descriptor_it_was_opened_with(tmp_path):
    from dnnlab.separability.featurefile import FeatureFile

    x, _ = si_files(tmp_path)
    want = np.load(x)
    f = FeatureFile.open_npy(x)
    first = f[0:10].numpy()
    np.save(tmp_path / "new.npy", want + 100)
    os.replace(tmp_path / "new.npy", x)  # the name now leads to another file
    assert np.array_equal(np.concatenate([first, f[10:40].numpy()]), want)  # one version
    with pytest.raises(InputError, match="replaced by another file") as e:
        f.check_unchanged()
    assert str(x) in str(e.value)
    f.close()


@pytest.mark.parametrize("which", ["labels", "features"])
def test_si_refuses_a_named_pipe_at_once(tmp_path, which):
    """A FIFO as an input would make si wait for a writer forever: refused before reading."""
    import subprocess
    import sys

    x, y = si_files(tmp_path)
    pipe = x if which == "features" else y
    pipe.unlink()
    os.mkfifo(pipe)
    code = f"from dnnlab.cli import main; raise SystemExit(main(['si', {str(x)!r}, {str(y)!r}]))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"{pipe}: a named pipe (FIFO), not a regular file" in p.stderr


FIFO_READERS = """
import os, sys
from pathlib import Path
from dnnlab.detect.voc import Problems, read_voc_dir
from dnnlab.cli import main
from dnnlab.errors import InputError
from dnnlab.probe.anymodel import load_state
from dnnlab.utils.images import UnreadableImage, open_rgb
d = Path(sys.argv[1])
problems = Problems()
assert read_voc_dir(d / "voc", problems) == []
print(problems.summary())
for read in (lambda: open_rgb(d / "voc" / "b.jpg"), lambda: load_state(str(d / "w.pt"), None)):
    try:
        read()
    except InputError as e:
        print(e)
"""


def test_every_reader_refuses_a_named_pipe_without_waiting(tmp_path):
    """A VOC annotation, an image and a weights file that are named pipes: each is a named
    input problem or refusal, never a wait for a writer that never comes."""
    import subprocess
    import sys

    (tmp_path / "voc").mkdir()
    for fifo in ("voc/a.xml", "voc/b.jpg", "w.pt"):
        os.mkfifo(tmp_path / fifo)
    p = subprocess.run(
        [sys.executable, "-c", FIFO_READERS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "not a regular file" in lines[0] and "a.xml: a named pipe (FIFO)" in lines[0]
    assert (
        lines[1]
        == f"{tmp_path / 'voc/b.jpg'}: unreadable image (a named pipe (FIFO), not a regular file)"
    )
    assert lines[2].startswith(f"--weights {tmp_path / 'w.pt'}: a named pipe (FIFO)")


# -- 4: annotations and weights that are wrong but were accepted ----------------------------
def test_a_duplicated_voc_object_is_named_and_merged(tmp_path):
    from dnnlab.detect.voc import Problems, read_voc_dir

    cat, other = (10, 10, 60, 50), (70, 20, 110, 90)
    write_voc(tmp_path, "a", [("cat", cat), ("cat", cat), ("cat", other), ("dog", cat)])
    problems = Problems()
    (item,) = read_voc_dir(tmp_path, problems)
    assert item.boxes("cat").tolist() == [list(cat), list(other)]  # one target, not two
    assert item.other_boxes("cat").tolist() == [list(cat)]  # another class: not a copy
    assert problems.counts == {"duplicated object (merged)": 1}
    assert f"{tmp_path / 'a.xml'} object 1" in problems.summary()


def saved_detector(folder, change=None):
    """A small untrained detector saved as folder/model.pt; change(state) edits its
    weights before saving."""
    from dataclasses import replace

    import torch

    from dnnlab.detect.config import DetectorConfig, FeatureSpec
    from dnnlab.detect.detector import Detector
    from dnnlab.detect.features import mobilenet_features

    cfg = DetectorConfig(features=FeatureSpec(image_size=96))
    cfg = replace(cfg, regressors=replace(cfg.regressors, iou_predictor=False))
    torch.manual_seed(0)
    det = Detector(cfg, mobilenet_features(), ((0.5,) * 3, (0.5,) * 3))
    if change is not None:
        with torch.no_grad():
            change(det.state_dict())
    folder.mkdir()
    det.save(folder)
    return folder


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_detector_with_non_finite_weights_is_refused_at_load(tmp_path, capsys, value):
    from dnnlab.detect.detector import Detector

    Detector.load(saved_detector(tmp_path / "good"))  # the same file, finite: loads

    def spoil(state):
        state["head.4.weight"][1, 3] = value

    bad = saved_detector(tmp_path / "bad", spoil)
    with pytest.raises(InputError, match=r"'head.4.weight' holds 1 non-finite value") as e:
        Detector.load(bad)
    assert str(bad / "model.pt") in str(e.value)
    photo = tmp_path / "p.jpg"
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 90, 90)).save(photo)
    argv = ["detect", "run", photo, "--model", bad, "--out", tmp_path / "out"]
    refused(argv, capsys, bad / "model.pt", "non-finite")
    assert not (tmp_path / "out").exists()


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


# -- 7: no message tells the user to load unsafely ------------------------------------------
def unsafe_words(text: str) -> list[str]:
    flat = text.lower().replace(" ", "")
    return [w for w in (*UNSAFE_ADVICE, "weights_only", "allow_pickle") if w in flat]


@pytest.mark.parametrize("where", ["labels.npy", "labels.npz"])
def test_si_refuses_pickled_labels_without_advising_to_unpickle(tmp_path, capsys, where):
    x, _ = si_files(tmp_path)
    objects = np.array(["cat", "dog"] * 20, dtype=object)  # saved as a pickle
    path = tmp_path / where
    if where.endswith(".npy"):
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, y=objects)
    err = refused(["si", x, path, "--no-progress"], capsys, path, "could run code")
    assert unsafe_words(err) == []


def test_timm_checkpoint_path_is_refused_for_weights(tmp_path, capsys):
    pytest.importorskip("timm")
    evil = bad_pt(tmp_path, "pickled")
    spec = f"timm:resnet18:checkpoint_path={str(evil)!r}"
    argv = ["probe", "--model", spec, "--data", tmp_path, "--out", tmp_path / "o"]
    err = refused(argv, capsys, "checkpoint_path", "--weights")
    assert unsafe_words(err) == [] and not (tmp_path / "pwned").exists()


def test_a_librarys_advice_to_load_unsafely_is_never_passed_on():
    from dnnlab.utils.safe_load import without_unsafe_advice

    text = (
        "weights_only=True blocked loading this checkpoint because it requires "
        "non-allowlisted pickle globals. Unsupported globals: builtins.print. No automatic "
        "unsafe pickle fallback is performed. If this checkpoint is trusted, retry with "
        "weights_only=False."
    )
    kept = without_unsafe_advice(text)
    assert kept == "Unsupported globals: builtins.print" and unsafe_words(kept) == []


# -- 8: messages and settings that say what is so -------------------------------------------
def test_a_flag_given_with_a_preset_is_not_ignored(tmp_path, capsys):
    import json

    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))], size=(64, 48))
    det = saved_detector(tmp_path / "det")
    argv = ["detect", "eval", voc, "--model", det, "--preset", "course", "--json"]
    assert main([str(a) for a in [*argv, "--nms-iou", "0.4", "--max-proposals", "7"]]) == 0
    got = json.loads(capsys.readouterr().out)["settings"]
    assert (got["nms_iou"], got["max_proposals"]) == (0.4, 7)  # the flags given
    assert (got["vote_iou"], got["refine_steps"]) == (0.0, 0)  # the preset's, not given


def test_the_cifar_note_gives_the_trees_own_counts(tmp_path):
    from dnnlab.probe.images import image_splits
    from tests.fakes import make_image_tree

    tree = make_image_tree(tmp_path / "c10", n_train=30, n_test=10)  # 300 + 100 images
    cfg = SimpleNamespace(data=str(tree), seed=0)
    splits, _, how = image_splits(cfg, None, (0.5,) * 3, (0.5,) * 3, tmp_path / "out")
    assert "(30 of 300; seed 0)" in how and "50,000" not in how
    assert f"({len(splits['train20'].labels)})" in how and "test images (100)" in how


def test_a_label_message_shows_the_value_not_numpys_repr(tmp_path, capsys):
    x, _ = si_files(tmp_path)
    y = (np.arange(40) % 2).astype(np.float32)
    y[3] = 1.5
    np.save(tmp_path / "y.npy", y)
    err = refused(["si", x, tmp_path / "y.npy"], capsys, "(1.5 at position 3")
    assert "np." not in err


def test_a_pickle_named_safetensors_is_refused_for_what_it_is(tmp_path, capsys):
    import pickle

    x, y = si_files(tmp_path)
    fake = tmp_path / "x.safetensors"
    with open(fake, "wb") as fh:
        pickle.dump({"x": np.load(x)}, fh, protocol=4)
    err = refused(["si", fake, y], capsys, fake, "a Python pickle (pickle.dump)")
    assert "warning" not in err and "Unsupported operand" not in err


def test_a_resume_message_names_switches_that_exist():
    from dnnlab.cifar.config import TrainConfig
    from dnnlab.cifar.plan import _settings_changed

    (said,) = _settings_changed(TrainConfig(bf16=False), TrainConfig())
    assert said == "bf16 on (without --no-bf16; the run was with --no-bf16)"


# -- 6: no traceback from an unusual input --------------------------------------------------
def unusual(kind: str):
    """(features, labels) tensors of 20 samples of two classes, one of them unusual."""
    import torch

    x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 2
    return {
        "float8 features": lambda: (x.to(torch.float8_e4m3fn), y),
        "bf16 labels": lambda: (x, y.to(torch.bfloat16)),
        "bf16 features": lambda: (x.to(torch.bfloat16), y),
        "quantized features": lambda: (torch.quantize_per_tensor(x, 0.1, 0, torch.qint8), y),
        "meta features": lambda: (x.to("meta"), y),
        "nested features": lambda: (torch.nested.nested_tensor([x[:3], x[:5]]), y),
        "complex labels": lambda: (x, y.to(torch.complex64)),
    }[kind]()


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's own on making these tensors
@pytest.mark.parametrize(
    "kind, refusal",
    [
        ("float8 features", None),  # exact in float32: measured
        ("bf16 features", None),
        ("bf16 labels", None),
        ("quantized features", "a quantized tensor"),
        ("meta features", "a meta tensor"),
        ("nested features", "a nested (ragged) tensor"),
        ("complex labels", "complex numbers"),
    ],
)
def test_si_on_unusual_tensors_measures_or_refuses_by_name(tmp_path, capsys, kind, refusal):
    import json

    import torch

    x, y = unusual(kind)
    torch.save(x, tmp_path / "x.pt")
    torch.save(y, tmp_path / "y.pt")
    argv = ["si", tmp_path / "x.pt", tmp_path / "y.pt", "--json", "--no-progress"]
    if refusal is None:
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
        plain = [str(tmp_path / "p.npy"), str(tmp_path / "q.npy")]
        np.save(plain[0], x.float().numpy())
        np.save(plain[1], y.long().numpy())
        got = json.loads(capsys.readouterr().out)
        assert main(["si", *plain, "--json", "--no-progress"]) == 0
        want = json.loads(capsys.readouterr().out)
        assert (got["si"], got["csi"]) == (want["si"], want["csi"])  # the values as they are
    else:
        named = tmp_path / ("y.pt" if "labels" in kind else "x.pt")
        refused(argv, capsys, f"{named}: {refusal}")


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
