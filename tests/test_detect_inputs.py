"""Bad inputs to detect's commands, each refused by name or counted and left out:
photos and annotations that are truncated, non-finite or duplicated, weights that are
not plain data, outputs that would write over the photos, the VOC folder, the model or
the backbone, and a folder another process writes."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dnnlab.cli import main
from dnnlab.errors import InputError
from dnnlab.utils.outputs import MARKER, mark
from tests.fakes import (
    REASON,
    bad_pt,
    fake_build,
    refused,
    refused_to_write_over,
    truncate,
    write_voc,
)


# -- every refused .pt explained, never "weights_only=False will likely succeed" ------
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


BAD_COORDS = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "abc", "", "0x10"]


# -- a box with NaN, inf or non-numeric coordinates is an input problem, dropped -------
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


def photo(folder, name="cat.jpg"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 100, 50)).save(folder / name)
    return folder / name


# -- no command writes over one of its inputs, with or without --overwrite -------------
@pytest.mark.parametrize("name", ["cat.jpg", "cat.png"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_detect_run_never_writes_into_the_photos_folder(tmp_path, capsys, name, overwrite):
    p = photo(tmp_path / "photos", name)
    before = p.read_bytes()
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "photos")
    for out in (tmp_path / "photos", tmp_path / "alias"):
        refused_to_write_over(
            ["detect", "run", p, "--out", out, "--model", model, *overwrite], capsys, out, p
        )
    assert p.read_bytes() == before and sorted(os.listdir(p.parent)) == [name]


def test_detect_run_never_writes_into_the_model_folder(tmp_path, capsys):
    p = photo(tmp_path / "photos", "train.jpg")  # its JSON would be the model's train.json
    model = tmp_path / "model"
    model.mkdir()
    (model / "train.json").write_text("{}")
    argv = ["detect", "run", p, "--out", model, "--model", model, "--overwrite"]
    refused_to_write_over(argv, capsys, model)
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
        refused_to_write_over(
            ["detect", "eval", voc, "--model", model, "--draw", draw], capsys, draw
        )
    # A draw folder whose a.jpg is a link to the evaluated photo: drawing would replace it.
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "a.jpg").symlink_to(voc / "a.jpg")
    refused_to_write_over(
        ["detect", "eval", voc, "--model", model, "--draw", trap], capsys, trap / "a.jpg"
    )
    assert {p.name: p.read_bytes() for p in voc.iterdir()} == before


def test_detect_build_never_writes_into_the_voc_folder(tmp_path, capsys):
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    names = sorted(os.listdir(voc))
    (tmp_path / "alias").symlink_to(voc)
    for out in (voc, tmp_path / "alias"):
        refused_to_write_over(
            ["detect", "build", voc, "--out", out, "--overwrite"], capsys, out, voc
        )
    assert sorted(os.listdir(voc)) == names


def test_detect_train_never_replaces_its_backbone_weights(tmp_path, capsys):
    det = fake_build(tmp_path / "det", photo(tmp_path / "photos"))
    w = det / "model.pt"
    torch.save({"w": torch.zeros(1)}, w)
    before = w.read_bytes()
    argv = ["detect", "train", det, "--backbone-weights", w, "--overwrite", "--epochs", "1"]
    refused_to_write_over(argv, capsys, w)
    assert w.read_bytes() == before


class FakeDetector:
    """Detects one fixed box in any photo: `detect run` without a trained model."""

    config = SimpleNamespace(target="cat")

    def detect(self, img):
        return SimpleNamespace(boxes=np.array([[1.0, 1, 9, 9]]), scores=np.array([0.9]), seconds=0)


# -- a bad file never stops a data set ---------------------------------------------------
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
    assert sorted(os.listdir(tmp_path / "o")) == [MARKER, "good.jpg", "good.json"]
    problems = Problems()  # eval's reading: counted and named, the rest go on
    assert [i.image.name for i in read_voc_dir(photos, problems)] == ["good.jpg"]
    assert "cut.jpg" in problems.examples["unreadable image"][0]


# -- no leftovers, no small lies ------------------------------------------------------
def test_detect_run_that_writes_nothing_says_so_and_makes_no_folder(tmp_path, capsys):
    from dnnlab.detect.output import print_run, run_detector

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "o"
    results = run_detector([bad], FakeDetector(), out)
    assert print_run(results, out) == 1
    printed = capsys.readouterr()
    assert "nothing written" in printed.out and "annotated images" not in printed.out
    assert "bad.jpg: unreadable image" in printed.err
    assert not out.exists()


# -- detect eval: one writer of MODEL/evals (and of --draw) ----------------------------------
@pytest.mark.slow
def test_detect_eval_refuses_records_another_process_writes(tmp_path, holder):
    from dnnlab.detect.evaluate import evaluate_once
    from dnnlab.utils.lock import FolderBusy

    voc, model = tmp_path / "voc", tmp_path / "model"
    voc.mkdir()
    mark(model, "detect build")  # a detector folder of dnnlab's
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    for held, draw in ((model / "evals", None), (tmp_path / "drawn", tmp_path / "drawn")):
        p = holder(held)
        with pytest.raises(FolderBusy, match=f"pid {p.pid}"):
            evaluate_once(voc, model, FakeDetector(), draw_dir=draw)
        p.kill()
        p.wait()
    assert os.listdir(model) == [MARKER] and not (tmp_path / "drawn").exists()


class FakeEvalDetector:
    """Detects one fixed box in any photo, with the settings record `detect eval` keeps."""

    config = SimpleNamespace(target="cat", to_dict=lambda: {"detection": {}})

    def detect(self, img):
        box = np.array([[1.0, 1, 9, 9]])
        return SimpleNamespace(boxes=box, scores=np.array([0.9]), seconds=0, proposals=box)


# -- a write replaces nothing the tool did not make --------------------------------------
def test_detect_eval_draw_never_replaces_a_users_file_unasked(tmp_path, capsys):
    from dnnlab.detect.evaluate import evaluate_once

    voc, model, draw = tmp_path / "voc", tmp_path / "model", tmp_path / "drawn"
    for d in (voc, model, draw):
        d.mkdir()
    mark(model, "detect build")  # a detector folder of dnnlab's (its evals/ are written there)
    (model / "model.pt").write_bytes(b"fingerprinted, never loaded here")
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    mine = draw / "a.jpg"  # the user's own file, named as a drawn photo would be
    mine.write_bytes(b"my holiday picture")
    # A folder of the user's (no marker) is never written, with or without --overwrite.
    for extra in ([], ["--overwrite"]):
        argv = ["detect", "eval", voc, "--model", model, "--draw", draw, *extra]
        err = refused(argv, capsys, draw)
        assert "--draw" in err and "did not make" in err
        assert mine.read_bytes() == b"my holiday picture"
    with pytest.raises(InputError, match="did not make"):
        evaluate_once(voc, model, FakeEvalDetector(), draw_dir=draw, overwrite=True)
    # In a folder dnnlab made, --overwrite is the only way to replace a drawn photo's name.
    mark(draw, "detect eval --draw")
    err = refused(["detect", "eval", voc, "--model", model, "--draw", draw], capsys, mine)
    assert "--overwrite" in err
    assert mine.read_bytes() == b"my holiday picture"
    evaluate_once(voc, model, FakeEvalDetector(), draw_dir=draw, overwrite=True)
    assert mine.read_bytes()[:3] == b"\xff\xd8\xff"  # now the drawn JPEG
    assert sorted(os.listdir(draw)) == [MARKER, "a.jpg"]  # no temporary left beside it
    with pytest.raises(InputError, match="--overwrite"):
        evaluate_once(voc, model, FakeEvalDetector(), draw_dir=draw)


# -- annotations and weights that are wrong but were accepted ----------------------------
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
    mark(folder, "detect build")  # as `detect build` makes it: dnnlab's own folder
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


# -- messages and settings that say what is so -------------------------------------------
def test_a_flag_given_with_a_preset_is_not_ignored(tmp_path, capsys):

    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))], size=(64, 48))
    det = saved_detector(tmp_path / "det")
    argv = ["detect", "eval", voc, "--model", det, "--preset", "course", "--json"]
    assert main([str(a) for a in [*argv, "--nms-iou", "0.4", "--max-proposals", "7"]]) == 0
    got = json.loads(capsys.readouterr().out)["settings"]
    assert (got["nms_iou"], got["max_proposals"]) == (0.4, 7)  # the flags given
    assert (got["vote_iou"], got["refine_steps"]) == (0.0, 0)  # the preset's, not given


@pytest.mark.parametrize(
    "config, named",
    [
        (None, "no labelling settings"),
        ({"pos_iou": 0.5, "neg_iou": 2, "min_area": 0, "workers": 1}, "--neg-iou"),
    ],
)
def test_hard_negative_rounds_need_the_builds_labelling_settings(tmp_path, capsys, config, named):
    """--hard-negative-rounds labels the training photos' proposals as the build did: a
    build.json without those settings (or with one out of range) is refused, naming it and
    the setting, before any work."""
    det = fake_build(tmp_path / "det", photo(tmp_path / "photos"))
    if config is not None:
        info = json.loads((det / "build.json").read_text())
        (det / "build.json").write_text(json.dumps({**info, "config": config}))
    before = {p.name: p.read_bytes() for p in det.iterdir()}
    argv = ["detect", "train", det, "--hard-negative-rounds", "1", "--epochs", "1"]
    argv.append("--no-end-to-end")  # the rounds need the frozen backbone
    refused(argv, capsys, det / "build.json", named)
    assert {p.name: p.read_bytes() for p in det.iterdir()} == before


def test_a_switch_on_by_default_can_be_turned_on_over_a_preset():
    """`--end-to-end` (the default) exists beside `--no-end-to-end`: an old command line
    that gave it still parses, and it turns fine-tuning back on over `--preset course`,
    which freezes the backbone."""
    from dnnlab.cli import build_parser
    from dnnlab.detect.config import DetectTrainConfig, with_preset
    from dnnlab.settings import given_flags

    def train_config(*flags):
        args = build_parser().parse_args(["detect", "train", "DIR", *flags])
        return with_preset(DetectTrainConfig, given_flags(args, DetectTrainConfig), args.preset)

    assert train_config().end_to_end and train_config("--end-to-end").end_to_end
    assert not train_config("--no-end-to-end").end_to_end
    assert not train_config("--preset", "course").end_to_end
    assert train_config("--preset", "course", "--end-to-end").end_to_end
