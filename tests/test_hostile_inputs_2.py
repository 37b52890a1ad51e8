"""The second round of an outside tester's defect classes (issue 24), each fixed at its
root: a bad image never stops a data set (4), a bad path is a named refusal before any work,
never a traceback (5), a byte-order mark on one file only (9), runs that must match their
records (11), and no leftovers or small lies (12)."""

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dnnlab.cli import main
from tests.test_hostile_inputs import write_voc
from tests.test_probe_any import USER_MODEL, image_folder


def truncate(path, keep: float = 0.8) -> None:
    """Cut an image file short, as an interrupted copy or download leaves it (its header
    whole: only decoding every pixel finds it)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def refused(argv, capsys, *named) -> str:
    """The command exits 2 with one `dnnlab CMD: error:` line naming each of `named`."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and ": error: " in err, err
    for n in named:
        assert str(n) in err, (n, err)
    return err


@pytest.fixture
def user_file(tmp_path):
    p = tmp_path / "usermodels.py"
    p.write_text(USER_MODEL)
    return p


class FakeDetector:
    """Detects one fixed box in any photo: `detect run` without a trained model."""

    config = SimpleNamespace(target="cat")

    def detect(self, img):
        return SimpleNamespace(boxes=np.array([[1.0, 1, 9, 9]]), scores=np.array([0.9]), seconds=0)


# -- 4: a bad file never stops a data set ---------------------------------------------------
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_build_counts_a_truncated_photo_and_goes_on(tmp_path, capsys, ext):
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    write_voc(voc, "b", [("cat", (20, 20, 90, 80))])
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(voc / f"b.{ext}", quality=95)
    text = (voc / "b.xml").read_text().replace("b.jpg", f"b.{ext}")
    (voc / "b.xml").write_text(text)
    truncate(voc / f"b.{ext}")
    out = tmp_path / "det"
    argv = ["detect", "build", voc, "--out", out, "--workers", "1", "--ss-max-side", "0"]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "unreadable image" in printed and f"b.{ext}" in printed
    index = (out / "index.csv").read_text()
    assert "a.jpg" in index and f"b.{ext}" not in index


def test_detect_run_and_eval_count_a_truncated_photo(tmp_path):
    from dnnlab.detect.output import run_detector
    from dnnlab.detect.voc import Problems, read_voc_dir
    from dnnlab.utils.images import UnreadableImage, open_rgb

    photos = tmp_path / "photos"
    photos.mkdir()
    write_voc(photos, "good", [("cat", (10, 10, 60, 50))])
    write_voc(photos, "cut", [("cat", (10, 10, 60, 50))])
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photos / "cut.jpg", quality=95)
    truncate(photos / "cut.jpg")
    with pytest.raises(UnreadableImage, match="cut.jpg: unreadable image"):
        open_rgb(photos / "cut.jpg")
    res = run_detector([photos / "good.jpg", photos / "cut.jpg"], FakeDetector(), tmp_path / "o")
    assert "detections" in res[0] and "unreadable image" in res[1]["error"]
    assert sorted(os.listdir(tmp_path / "o")) == ["good.jpg", "good.json"]
    problems = Problems()  # eval's reading: counted and named, the rest go on
    assert [i.image.name for i in read_voc_dir(photos, problems)] == ["good.jpg"]
    assert "cut.jpg" in problems.examples["unreadable image"][0]


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
