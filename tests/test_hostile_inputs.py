"""An outside tester's defect classes, each refused at its root: outputs never written over
inputs, one writer per folder, non-finite VOC coordinates dropped as input problems, and
every refused .pt file explained in dnnlab's words (never torch's weights_only advice)."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from dnnlab.cli import main


class Evil:
    """Unpickling it would create a marker file: code run by loading."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def bad_pt(tmp_path, kind: str):
    """A .pt file that must be refused: pickled code, garbage bytes, or zero bytes."""
    p = tmp_path / f"{kind}.pt"
    if kind == "pickled":
        torch.save({"x": Evil(tmp_path / "pwned")}, p)
    elif kind == "garbage":
        p.write_bytes(b"\x80\x02 not a torch file at all" * 10)
    else:
        p.write_bytes(b"")
    return p


REASON = {
    "pickled": "could run code",
    "garbage": "not a readable PyTorch file",
    "empty": "empty (0 bytes)",
}


def fake_build(folder, image):
    """The smallest build folder `detect train` reads: build.json and a two-row index."""
    from dnnlab.detect.build import INDEX_COLS
    from dnnlab.detect.config import ProposalConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build.json").write_text(
        json.dumps({"target": "cat", "proposals": asdict(ProposalConfig())})
    )
    rows = [
        [str(image), 1, 1, 20, 20, 1, "0.9", "train", 1, 1, 20, 20],
        [str(image), 30, 30, 40, 40, 0, "0.0", "val", "", "", "", ""],
    ]
    lines = [",".join(INDEX_COLS)] + [",".join(map(str, r)) for r in rows]
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder


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
    from dnnlab.probe.anynet import load_state

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


def write_voc(folder, stem, boxes, size=(160, 120)):
    """A grey photo and its VOC annotation; coordinates written as given (text or number)."""
    from PIL import Image

    from tests.test_detect import OBJ, XML

    Image.new("RGB", size, (90, 90, 90)).save(folder / f"{stem}.jpg")
    objs = "".join(OBJ.format(name=n, x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for n, b in boxes)
    xml = XML.format(fn=f"{stem}.jpg", w=size[0], h=size[1], objs=objs)
    (folder / f"{stem}.xml").write_text(xml)


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
