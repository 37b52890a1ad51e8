"""An outside tester's defect classes, each refused at its root: outputs never written over
inputs, one writer per folder, non-finite VOC coordinates dropped as input problems, and
every refused .pt file explained in dnnlab's words (never torch's weights_only advice)."""

import os
import shutil

import numpy as np
import pytest
import torch

from dnnlab.cli import main
from tests.fakes import UNSAFE_ADVICE, bad_pt, fake_build, write_voc

REASON = {
    "pickled": "could run code",
    "garbage": "not a readable PyTorch file",
    "empty": "empty (0 bytes)",
}


# -- 10: every refused .pt explained, never "weights_only=False will likely succeed" ------
@pytest.mark.parametrize("kind", sorted(REASON))
def test_si_refuses_a_bad_pt_in_its_own_words(tmp_path, capsys, kind):
    labels = tmp_path / "y.npy"
    np.save(labels, np.arange(10) % 2)
    feats = bad_pt(tmp_path, kind)
    assert main(["si", str(feats), str(labels), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(feats) in err and REASON[kind] in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", sorted(REASON))
def test_detect_train_refuses_bad_backbone_weights_in_its_own_words(tmp_path, capsys, kind):
    from PIL import Image

    Image.new("RGB", (48, 48)).save(tmp_path / "a.jpg")
    det = fake_build(tmp_path / "det", tmp_path / "a.jpg")
    w = bad_pt(tmp_path, kind)
    argv = ["detect", "train", str(det), "--backbone-weights", str(w), "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(w) in err and REASON[kind] in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in det.iterdir()) == ["build.json", "index.csv"]


@pytest.mark.parametrize("kind", sorted(REASON))
def test_every_plain_load_names_its_reason(tmp_path, kind):
    from dnnlab.cifar.rundir import RunError, load_checkpoint
    from dnnlab.detect.detector import Detector
    from dnnlab.errors import InputError
    from dnnlab.probe.anymodel import load_state

    p = bad_pt(tmp_path, kind)
    (tmp_path / "model.pt").write_bytes(p.read_bytes())
    for load, err in (
        (lambda: load_checkpoint(p), RunError),
        (lambda: load_state(str(p), None), InputError),
        (lambda: Detector.load(tmp_path), InputError),
    ):
        with pytest.raises(err) as e:
            load()
        assert REASON[kind] in str(e.value) and "weights_only" not in str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_torch_load_only_in_safe_load():
    """Every .pt file dnnlab reads goes through utils.safe_load.load_plain."""
    from pathlib import Path

    import dnnlab

    src = Path(dnnlab.__file__).parent
    calls = [
        str(f.relative_to(src))
        for f in src.rglob("*.py")
        if "torch.load(" in f.read_text().replace("`torch.load(", "")
        and f.name != "safe_load.py"
        and "loads with torch.load(" not in f.read_text()
    ]
    assert calls == []


def message_texts(tree) -> list[str]:
    """The text of every message a module can show: the string parts of what it raises,
    prints or warns, and of every error it makes (a call of a name ending in Error), with
    f-strings' literal parts; each once."""
    import ast

    shown = {}
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        name = getattr(func, "id", None) or getattr(func, "attr", None) or ""
        if isinstance(node, ast.Raise) or name in ("print", "warn") or name.endswith("Error"):
            for c in ast.walk(node):
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    shown[(c.lineno, c.col_offset)] = c.value
    return list(shown.values())


def test_no_message_advises_an_unsafe_load():
    """No text dnnlab raises, prints or warns tells the user to load unsafely (torch's
    weights_only=False, numpy's allow_pickle=True, ...): a refusal says why in dnnlab's
    words. Libraries' messages passed on are filtered (safe_load.without_unsafe_advice,
    load_error_reason: tests/test_hostile_inputs_3.py runs them)."""
    import ast
    from pathlib import Path

    import dnnlab

    src = Path(dnnlab.__file__).parent
    found = [
        (str(f.relative_to(src)), text)
        for f in sorted(src.rglob("*.py"))
        for text in message_texts(ast.parse(f.read_text()))
        if any(w in text.lower().replace(" ", "") for w in UNSAFE_ADVICE)
    ]
    assert found == []
    # The scan finds such advice where it is: a message made to hold it is caught.
    planted = 'raise InputError(f"{p}: retry with weights_only=False")'
    assert message_texts(ast.parse(planted)) == [": retry with weights_only=False"]


# -- 3: a box with NaN, inf or non-numeric coordinates is an input problem, dropped -------
BAD_COORDS = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "abc", "", "0x10"]


@pytest.mark.parametrize("bad", BAD_COORDS)
def test_voc_box_with_a_bad_coordinate_is_counted_named_and_dropped(tmp_path, bad):
    from dnnlab.detect.voc import Problems, read_voc_dir

    write_voc(tmp_path, "a", [("cat", (10, 10, 60, 50)), ("dog", (bad, 5, 30, 30))])
    write_voc(tmp_path, "b", [("cat", (5, bad, 70, 60))])
    write_voc(tmp_path, "c", [("cat", (20, 20, 80, 90))])
    problems = Problems()
    items = {i.image.stem: i for i in read_voc_dir(tmp_path, problems, "cat")}
    assert sorted(items) == ["a", "c"]  # b's only cat is unusable: the photo is dropped
    assert len(items["a"].other_boxes("cat")) == 0  # the dog box is gone, the cat kept
    assert items["a"].boxes("cat").tolist() == [[10, 10, 60, 50]]
    for item in items.values():
        assert np.isfinite(item.boxes("cat")).all()
    assert problems.counts["bad box (dropped)"] == 2
    named = " ".join(problems.examples["bad box (dropped)"])
    assert "a.xml object 1" in named and "b.xml object 0" in named


def test_build_with_only_non_finite_target_boxes_is_refused_before_writing(tmp_path, capsys):

    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", ("nan", 10, 60, 50))])
    write_voc(voc, "b", [("cat", (5, 5, "inf", 60))])
    out = tmp_path / "det"
    assert main(["detect", "build", str(voc), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "no 'cat' box" in err and "not a finite number" in err and "a.xml" in err
    assert not out.exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_index_row_with_a_non_finite_number_is_refused(tmp_path, bad):
    from dnnlab.detect.build import read_index
    from dnnlab.errors import InputError

    det = fake_build(tmp_path / "det", tmp_path / "a.jpg")
    text = (det / "index.csv").read_text().replace(",20,20,1,0.9", f",20,{bad},1,0.9", 1)
    (det / "index.csv").write_text(text)
    with pytest.raises(InputError, match="index.csv line 2.*not a finite number"):
        read_index(det)


# -- 1: no command writes over one of its inputs, with or without --overwrite -------------
def test_output_clash_rules(tmp_path):
    from dnnlab.utils.spare_inputs import output_clash

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"x")
    (tmp_path / "link").symlink_to(d)
    assert "is the input" in output_clash([d], tmp_path / "link")
    assert "is the folder of the input" in output_clash([d / "a.jpg"], d)
    assert "would replace the input" in output_clash([d / "a.jpg"], files=[tmp_path / "link/a.jpg"])
    assert "replaced as a whole" in output_clash([d / "a.jpg"], tmp_path, owned=True)
    assert output_clash([d / "a.jpg"], tmp_path) is None  # writes beside, never over
    assert output_clash([d], d / "sub") is None  # a new folder inside an input folder
    assert output_clash([d / "a.jpg"], tmp_path / "out", [tmp_path / "out/a.jpg"]) is None


def photo(folder, name="cat.jpg"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 100, 50)).save(folder / name)
    return folder / name


def refused(argv, capsys, *named):
    """The command exits 2 with one error line naming each of `named`, no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "never writes over its inputs" in err and "Traceback" not in err, err
    for n in named:
        assert str(n) in err, (n, err)


@pytest.mark.parametrize("name", ["cat.jpg", "cat.png"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_detect_run_never_writes_into_the_photos_folder(tmp_path, capsys, name, overwrite):
    p = photo(tmp_path / "photos", name)
    before = p.read_bytes()
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "photos")
    for out in (tmp_path / "photos", tmp_path / "alias"):
        refused(["detect", "run", p, "--out", out, "--model", model, *overwrite], capsys, out, p)
    assert p.read_bytes() == before and sorted(os.listdir(p.parent)) == [name]


def test_detect_run_never_writes_into_the_model_folder(tmp_path, capsys):
    p = photo(tmp_path / "photos", "train.jpg")  # its JSON would be the model's train.json
    model = tmp_path / "model"
    model.mkdir()
    (model / "train.json").write_text("{}")
    argv = ["detect", "run", p, "--out", model, "--model", model, "--overwrite"]
    refused(argv, capsys, model)
    assert (model / "train.json").read_text() == "{}"


def test_detect_eval_never_draws_over_the_evaluated_photos(tmp_path, capsys):
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    before = {p.name: p.read_bytes() for p in voc.iterdir()}
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "alias").symlink_to(voc)
    for draw in (voc, tmp_path / "alias", model):
        refused(["detect", "eval", voc, "--model", model, "--draw", draw], capsys, draw)
    # A draw folder whose a.jpg is a link to the evaluated photo: drawing would replace it.
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "a.jpg").symlink_to(voc / "a.jpg")
    refused(["detect", "eval", voc, "--model", model, "--draw", trap], capsys, trap / "a.jpg")
    assert {p.name: p.read_bytes() for p in voc.iterdir()} == before


def test_detect_build_never_writes_into_the_voc_folder(tmp_path, capsys):
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    names = sorted(os.listdir(voc))
    (tmp_path / "alias").symlink_to(voc)
    for out in (voc, tmp_path / "alias"):
        refused(["detect", "build", voc, "--out", out, "--overwrite"], capsys, out, voc)
    assert sorted(os.listdir(voc)) == names


def test_detect_train_never_replaces_its_backbone_weights(tmp_path, capsys):
    det = fake_build(tmp_path / "det", photo(tmp_path / "photos"))
    w = det / "model.pt"
    torch.save({"w": torch.zeros(1)}, w)
    before = w.read_bytes()
    argv = ["detect", "train", det, "--backbone-weights", w, "--overwrite", "--epochs", "1"]
    refused(argv, capsys, w)
    assert w.read_bytes() == before


def test_train_never_writes_over_its_data(tree, tmp_path, capsys):
    data = shutil.copytree(tree, tmp_path / "run" / "data")
    names = sorted(p.name for p in data.rglob("*"))
    base = ["train", "--model", "base", "--epochs", "1"]
    refused([*base, "--data-root", data, "--out", data], capsys, data)
    refused([*base, "--data-root", data, "--out", tmp_path / "run", "--overwrite"], capsys, data)
    assert sorted(p.name for p in data.rglob("*")) == names


def test_probe_never_writes_over_its_data_or_weights(tree, tmp_path, capsys):
    data = shutil.copytree(tree, tmp_path / "data")
    w = tmp_path / "w" / "weights.pt"
    w.parent.mkdir()
    torch.save({}, w)
    base = ["probe", "--model", "torchvision:resnet18", "--data", data]
    refused([*base, "--out", data], capsys, data)
    refused([*base, "--weights", w, "--out", w.parent, "--overwrite"], capsys, w)
    assert sorted(os.listdir(w.parent)) == ["weights.pt"]


def test_study_never_writes_over_its_inputs(tree, tmp_path, capsys):
    det = tmp_path / "det"
    det.mkdir()
    (det / "model.pt").write_bytes(b"x")
    pub = tmp_path / "published"
    pub.mkdir()
    base = ["study", "--models", "base", "--data-root", tree, "--quick"]
    refused([*base, "--out", det, "--detector", det], capsys, det)
    refused([*base, "--out", tmp_path / "s", "--published", pub, "--publish", pub], capsys, pub)
    refused([*base, "--out", tmp_path / "s", "--publish", tmp_path / "s"], capsys, "--publish")
    refused([*base, "--out", tmp_path / "s", "--publish", tmp_path, "--overwrite"], capsys)
    assert not (tmp_path / "s").exists() and sorted(os.listdir(det)) == ["model.pt"]


# -- 2: one writer per folder; a killed writer never leaves it locked ---------------------
def test_a_held_folder_is_refused_at_once_naming_it_and_its_holder(tmp_path, holder):
    from dnnlab.utils.lock import FolderBusy, folder_lock

    out = tmp_path / "run"
    p = holder(out)
    with pytest.raises(FolderBusy) as e:
        with folder_lock(tmp_path / "." / "run"):
            pass
    assert str(out) in str(e.value) and f"pid {p.pid}" in str(e.value)
    p.kill()
    p.wait()
    with folder_lock(out):  # a killed holder leaves nothing locked
        with folder_lock(out):  # re-entrant within one process
            pass
    assert not any(n.endswith(".lock") for n in os.listdir(tmp_path))


def test_a_lock_file_left_behind_holds_nothing(tmp_path):
    from dnnlab.utils.lock import folder_lock, lock_path

    lock_path(tmp_path / "run").write_text("999999\n")  # a killed process's leftover
    with folder_lock(tmp_path / "run"):
        pass
    assert not lock_path(tmp_path / "run").exists()


def test_lock_removes_only_the_folders_it_made(tmp_path):
    from dnnlab.utils.lock import folder_lock

    with folder_lock(tmp_path / "a" / "b" / "run"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()


def busy(argv, capsys, folder, pid):
    """The command exits 2 at once, naming the folder and the holder's pid."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and f"pid {pid}" in err and "Traceback" not in err, err


def test_train_refuses_a_run_another_process_writes(tree, tmp_path, capsys, holder):
    run = tmp_path / "run"
    p = holder(run)
    base = ["train", "--model", "base", "--epochs", "1", "--data-root", tree, "--out", run]
    busy(base, capsys, run, p.pid)
    busy([*base, "--resume"], capsys, run, p.pid)
    assert not run.exists()


def test_probe_study_and_detect_build_refuse_a_held_folder(tree, tmp_path, capsys, holder):
    out = tmp_path / "out"
    p = holder(out)
    probe = ["probe", "--model", "torchvision:resnet18", "--data", tree, "--out", out]
    busy(probe, capsys, out, p.pid)
    busy(["study", "--models", "base", "--data-root", tree, "--out", out], capsys, out, p.pid)
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    busy(["detect", "build", voc, "--out", out], capsys, out, p.pid)
    run = tmp_path / "r"
    q = holder(run)
    (run / "config.json").parent.mkdir()
    busy(["probe", run], capsys, run, q.pid)
    assert not out.exists()


# -- class 9: files read wrong in silence ---------------------------------------------------
@pytest.mark.parametrize("header", [False, True])
def test_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path, header):
    from dnnlab.separability.io import load_array

    rows = ["1.5,2", "3,4", "5,6.25"]
    text = "\n".join((["a,b"] if header else []) + rows) + "\n"
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    a, b = load_array(str(plain)), load_array(str(marked))
    assert np.asarray(b).shape == (3, 2) and np.array_equal(np.asarray(a), np.asarray(b))
    labels = tmp_path / "labels.csv"
    labels.write_text("cat\ndog\ncat\n", encoding="utf-8-sig")
    assert list(np.asarray(load_array(str(labels), numeric=False))) == ["cat", "dog", "cat"]
