"""benchmarks/cv_detect.py's AP from per-photo matches, against torchmetrics, and its paired
bootstrap, against obvious resampling code."""

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cv_detect as C  # noqa: E402
from dnnlab.detect.evaluate import average_precisions  # noqa: E402
from dnnlab.errors import InputError  # noqa: E402


def random_photos(rng, n: int, ties: bool = False) -> list[dict]:
    """Photos with 0-3 cats and 0-12 detections near them or anywhere, some scores tied."""
    photos = []
    for _ in range(n):
        g = int(rng.integers(0, 4))
        xy = rng.uniform(0, 400, (g, 2))
        gt = np.hstack([xy, xy + rng.uniform(20, 200, (g, 2))])
        k = int(rng.integers(0, 13))
        near = gt[rng.integers(0, g, k)] + rng.normal(0, 15, (k, 4)) if g else np.zeros((k, 4))
        anywhere = rng.uniform(0, 400, (k, 2))
        anywhere = np.hstack([anywhere, anywhere + rng.uniform(10, 150, (k, 2))])
        boxes = np.where(rng.random((k, 1)) < 0.7, near, anywhere)
        boxes = np.hstack([np.minimum(boxes[:, :2], boxes[:, 2:] - 1), boxes[:, 2:]])
        scores = rng.random(k).round(1) if ties else rng.random(k)
        photos.append(C.detections_of(boxes, scores, gt))
    return photos


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, False), (3, True)])
def test_coco_ap_equals_torchmetrics(seed, ties):
    photos = random_photos(np.random.default_rng(seed), 25, ties)
    mine = C.coco_ap([C.photo_matches(p) for p in photos])
    oracle = C.fold_figures(photos)
    assert mine == pytest.approx(oracle, abs=1e-6)
    assert 0 < mine["map"] < 1  # the photos are neither hopeless nor perfect


def test_coco_ap_without_detections_or_without_cats():
    rng = np.random.default_rng(4)
    photos = random_photos(rng, 6)
    none_found = [{**p, "boxes": [], "scores": []} for p in photos]
    no_cats = [{**p, "gt": []} for p in photos]
    for ps in (none_found, no_cats, [none_found[0], *photos[1:]]):
        mine = C.coco_ap([C.photo_matches(p) for p in ps])
        assert mine == pytest.approx(C.fold_figures(ps), abs=1e-6)


def test_coco_ap_in_another_order_of_photos_and_with_repeats():
    """A bootstrap resample repeats photos and changes their order: still torchmetrics' AP."""
    rng = np.random.default_rng(5)
    photos = random_photos(rng, 20, ties=True)
    idx = rng.integers(0, 20, 20)
    parts = [C.photo_matches(p) for p in photos]
    mine = C.coco_ap([parts[i] for i in idx])
    as_np = lambda k, w: [np.asarray(photos[i][k], np.float32).reshape(-1, *w) for i in idx]  # noqa: E731
    oracle = average_precisions(as_np("boxes", (4,)), as_np("scores", ()), as_np("gt", (4,)))
    assert mine == pytest.approx(oracle, abs=1e-6)


def test_paired_bootstrap_against_plain_resampling():
    """One seed, then two seeds averaged: the same draws of photos, each AP from torchmetrics."""
    rng = np.random.default_rng(7)
    a = random_photos(rng, 15)
    rescored = lambda ps: [  # noqa: E731
        {**p, "scores": list(np.asarray(p["scores"]) * rng.random(len(p["scores"])))} for p in ps
    ]
    b, a1, b1 = rescored(a), rescored(a), rescored(a)  # a1, b1: the same photos, another seed
    for pairs in ([(a, b)], [(a, b), (a1, b1)]):
        got = C.paired_bootstrap(pairs, resamples=50, seed=3)
        draw = np.random.default_rng(3)
        diffs = {m: [] for m in ("ap50", "ap75", "map")}
        for _ in range(50):
            idx = draw.integers(0, 15, 15)
            per_seed = [
                (C.fold_figures([x[i] for i in idx]), C.fold_figures([y[i] for i in idx]))
                for x, y in pairs
            ]
            for m in diffs:
                diffs[m].append(sum(fx[m] - fy[m] for fx, fy in per_seed) / len(pairs))
        full = [(C.fold_figures(x), C.fold_figures(y)) for x, y in pairs]
        for m in diffs:
            lo, hi = np.percentile(diffs[m], [2.5, 97.5])
            mean = sum(fx[m] - fy[m] for fx, fy in full) / len(pairs)
            assert got[m] == pytest.approx((mean, lo, hi), abs=1e-6)
    same = C.paired_bootstrap([(a, a)], resamples=20)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())


def test_paired_bootstrap_refuses_other_photos_and_pairs_by_fold_and_photo(capsys):
    rng = np.random.default_rng(9)
    a, b = random_photos(rng, 4), random_photos(rng, 4)
    with pytest.raises(InputError, match="not the same photos"):
        C.paired_bootstrap([(a, b)])
    with pytest.raises(InputError, match="not the same photos"):
        C.paired_bootstrap([(a, a), (b, b)])  # another seed on other photos
    ra = [{"seed": 0, "fold": 1, "test_ids": [3, 8], "detections": a[:2]}]
    rb = [
        {"seed": 0, "fold": 1, "test_ids": [8, 3], "detections": [a[1], a[0]]},
        {"seed": 0, "fold": 2, "test_ids": [5], "detections": b[:1]},
    ]
    pa, pb = C.paired_photos(ra, rb)
    assert pa == pb == a[:2]
    # print_paired: each seed, then their mean where the seeds hold the same photos.
    rec = lambda name, seed, fold, ids, ds: {  # noqa: E731
        "name": name,
        "seed": seed,
        "fold": fold,
        "test_ids": ids,
        "detections": ds,
    }
    records = [rec("defaults", s, 0, [0, 1, 2, 3], a) for s in (0, 1)]
    records += [rec("x", s, 0, [0, 1, 2, 3], a) for s in (0, 1)]
    C.print_paired(records, "defaults", resamples=10)
    out = capsys.readouterr().out.splitlines()
    assert [x.split(":")[0] for x in out] == [
        "x − defaults, seed 0, 4 photos",
        "x − defaults, seed 1, 4 photos",
        "x − defaults, mean of seeds 0, 1, 4 photos",
    ]
    records[-1] = rec("x", 1, 0, [0, 1, 2], a[:3])  # seed 1 holds fewer photos: no mean
    C.print_paired(records, "defaults", resamples=10)
    assert "mean of seeds" not in capsys.readouterr().out


def test_candidate_names_end_to_end_with_and_without_a_box_loss():
    # "defaults" is the frozen backbone (its published records carry the name): no tuning.
    assert C.candidate("defaults") == {"train": None, "row": C.DEFAULT_ROW}
    assert C.candidate("end-to-end:5:1e-4:7")["train"] == {
        "epochs": 5,
        "backbone_lr": 1e-4,
        "backbone_from": 7,
    }
    assert C.candidate("end-to-end:5:1e-4:7:1")["train"]["box_loss"] == 1.0
    # CANDIDATE@ROW: the same training, another detection row; an unknown row is named.
    at = C.candidate("end-to-end:5:1e-4:7@jitter-regressors")
    assert at == {**C.candidate("end-to-end:5:1e-4:7"), "row": "jitter-regressors"}
    assert C.candidate("ridge:100") == {"train": None, "row": "ridge:100"}
    with pytest.raises(InputError, match="'nope' is not a row"):
        C.candidate("defaults@nope")
    for bad, names in (
        ("end-to-end:5:1e-4", "EPOCHS:LR:FROM[:BOX]"),
        ("end-to-end:5:1e-4:7:1:2", "EPOCHS:LR:FROM[:BOX]"),
        ("end-to-end:5:1e-4:7:x", "BOX"),
        ("end-to-end:5:1e-4:7:-1", "--box-loss"),
    ):
        with pytest.raises(InputError, match=re.escape(names)):
            C.candidate(bad)


def test_every_published_detector_record_has_its_provenance():
    """docs/results/detect-cv: each .jsonl is named by one provenance file (provenance.json
    or NAME.provenance.json) that records its commit, command and machine, and its sha256 is
    the file's as it is now (a record edited by hand fails here)."""
    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / "detect-cv"
    named = {}
    for f in folder.glob("*provenance.json"):
        p = json.loads(f.read_text())
        assert p["code_commit"] and p["commands"] and p["machine"], f.name
        data = (folder / p["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p["sha256"], p["file"]
        named[p["file"]] = f.name
    assert sorted(named) == sorted(f.name for f in folder.glob("*.jsonl"))


@pytest.mark.slow
def test_an_end_to_end_candidate_runs_a_fold(tmp_path):
    """The harness's end-to-end candidate (the default detector's training,
    train.train_end_to_end) runs through a fold and writes its record: a smoke test on
    eight fake photos and random weights (the figures mean nothing)."""
    import os
    import subprocess

    import torch
    from torchvision.models import mobilenet_v2

    from tests.fakes import write_voc

    rng = np.random.default_rng(0)
    voc = tmp_path / "voc"
    voc.mkdir()
    for i in range(8):
        x, y = int(rng.integers(5, 60)), int(rng.integers(5, 40))
        write_voc(voc, f"p{i}", [("cat", (x, y, x + 70, y + 60))])
    torch.manual_seed(0)
    torch.save(mobilenet_v2(num_classes=1001).state_dict(), tmp_path / "w.pth")
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "benchmarks")]),
    }
    argv = [sys.executable, str(root / "benchmarks" / "cv_detect.py"), str(voc)]
    argv += ["--backbone-weights", str(tmp_path / "w.pth"), "--cache", str(tmp_path / "cache")]
    argv += ["--out", str(tmp_path / "o.jsonl"), "--k", "2", "--folds", "0", "--seeds", "0"]
    e2e = "end-to-end:1:1e-4:17"
    argv += ["--candidates", e2e, f"{e2e}@jitter-regressors", "--threads", "1"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = C.read_records(tmp_path / "o.jsonl")
    assert [(r["name"], r["fold"], r["seed"]) for r in records] == [
        (e2e, 0, 0),
        (f"{e2e}@jitter-regressors", 0, 0),
    ]
    assert done.stdout.count("seed 0 fold 0 (") == 1  # one training serves both rows


def test_jitter_rows_target_the_cat_each_box_overlaps_most(monkeypatch):
    """jitter_rows: each jittered box's row names the cat it overlaps most and that IoU
    (obvious float64 code), every row a positive, none from a photo without cats."""
    import torch

    gt = np.array([[10, 10, 110, 90], [60, 20, 200, 150]], np.float32)
    photos = [
        {"gt": gt, "hw": (200, 240), "image": "a", "fmap": None},
        {"gt": np.zeros((0, 4), np.float32), "hw": (200, 240), "image": "b", "fmap": None},
    ]

    # Features that are the boxes themselves, so each row can be matched to its box.
    monkeypatch.setattr(C, "pooled", lambda model, ph, boxes: torch.as_tensor(boxes))
    x, rows = C.jitter_rows(None, photos, [0, 1], np.random.default_rng(0), n_jitter=16)
    assert len(rows) == len(x) > 0 and {r["image"] for r in rows} == {"a"}

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
        return w * h / (area(a) + area(b) - w * h)

    for xi, r in zip(x.tolist(), rows, strict=True):
        box = [float(v) for v in r["box"]]
        assert np.allclose(xi, box)
        ious = [iou(box, [float(v) for v in g]) for g in gt]
        assert r["gt"] == gt[int(np.argmax(ious))].tolist()
        assert r["iou"] == pytest.approx(max(ious), abs=1e-5) and r["label"] == 1
