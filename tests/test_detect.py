"""The detector's stages, each against hand-made cases or an independent oracle, and the
commands end to end on a tiny VOC folder (one build and one training shared by the tests)."""

import json
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from dnnlab.cli import main
from dnnlab.detect.boxes import flip_boxes
from dnnlab.detect.build import read_build, read_index
from dnnlab.detect.config import (
    DetectionConfig,
    DetectorConfig,
    DetectTrainConfig,
    FeatureSpec,
    RegressorConfig,
)
from dnnlab.detect.detector import Detector
from dnnlab.detect.features import load_backbone
from dnnlab.detect.labelling import label_proposals, sample_rows
from dnnlab.detect.localization import (
    FAR_PER_PHOTO,
    JITTER_PER_TARGET,
    jitter_boxes,
    jittered_samples,
    photo_targets,
    pick_rows,
)
from dnnlab.detect.mining import hardest, mine_round
from dnnlab.detect.proposals import proposals_for
from dnnlab.detect.selection import select
from dnnlab.detect.train import (
    build_labelling,
    embed_mirrored,
    negative_pools,
    scaled_features,
    train_hard_negatives,
    train_head,
    train_summary,
)
from dnnlab.detect.voc import Problems, load_rgb, read_voc_dir
from dnnlab.errors import InputError
from tests.fakes import OBJ, XML, cli

NORM = ((0.5,) * 3, (0.5,) * 3)


def write_item(folder, stem, boxes, size=(160, 120), ext="jpg", rng=None, mode="RGB"):
    w, h = size
    rng = rng or np.random.default_rng(0)
    img = (rng.normal(90, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)
    for name, (x1, y1, x2, y2) in boxes:
        color = (230, 120, 30) if name == "cat" else (40, 90, 220)
        img[int(max(y1, 0)) : int(y2), int(max(x1, 0)) : int(x2)] = color
    Image.fromarray(img).convert(mode).save(folder / f"{stem}.{ext}")
    objs = "".join(OBJ.format(name=n, x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for n, b in boxes)
    (folder / f"{stem}.xml").write_text(XML.format(fn=f"{stem}.{ext}", w=w, h=h, objs=objs))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    d = tmp_path_factory.mktemp("voc")
    rng = np.random.default_rng(1)
    for i in range(12):
        x1, y1 = rng.integers(5, 70), rng.integers(5, 50)
        bw, bh = rng.integers(40, 80), rng.integers(35, 60)
        boxes = [("cat", (x1 + 0.5, y1 + 0.25, min(x1 + bw, 155) + 0.5, min(y1 + bh, 115)))]
        if i % 4 == 0:
            boxes.append(("dog", (2, 2, 30, 30)))
        write_item(
            d,
            f"img{i}",
            boxes,
            ext="png" if i == 3 else "jpg",
            rng=rng,
            mode="L" if i == 5 else ("RGBA" if i == 3 else "RGB"),
        )
    write_item(d, "empty", [], rng=rng)  # no target object
    write_item(d, "outside", [("cat", (100, 60, 200, 140))], rng=rng)  # clipped
    # One cat box of zero area: the photo is dropped (that cat would be a negative).
    write_item(d, "zero", [("cat", (50, 50, 50, 80)), ("cat", (10, 10, 60, 60))], rng=rng)
    (d / "broken.xml").write_text("<annotation><filename>x.jpg</filename")  # malformed
    (d / "orphan.xml").write_text(XML.format(fn="nothere.jpg", w=10, h=10, objs=""))
    (d / "corrupt.jpg").write_bytes(b"not an image")
    (d / "corrupt.xml").write_text(XML.format(fn="corrupt.jpg", w=10, h=10, objs=""))
    # A <filename> longer than any file system allows: counted, never fatal.
    (d / "longname.xml").write_text(XML.format(fn="x" * 400 + ".jpg", w=10, h=10, objs=""))
    return d


@pytest.fixture(scope="module")
def small(voc, tmp_path_factory):
    """Three photos of the folder and one malformed XML, for the slower checks."""
    d = tmp_path_factory.mktemp("small")
    for stem in ("img0", "img1", "img2"):
        for ext in (".jpg", ".xml"):
            shutil.copy(voc / f"{stem}{ext}", d)
    shutil.copy(voc / "broken.xml", d)
    return d


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "mnv2_random_1001.pth"
    torch.save(mobilenet_v2(num_classes=1001).state_dict(), p)
    return p


@pytest.fixture(scope="module")
def built(voc, tmp_path_factory):
    """A build of the tiny folder (tests copy it before changing anything)."""
    det = tmp_path_factory.mktemp("built") / "det"
    assert main(cli("detect", "build", voc, out=det, workers=1, ss_max_side=0)) == 0
    return det


@pytest.fixture(scope="module")
def trained(built, weights, tmp_path_factory):
    """The build, trained with the default regressors (fitted on mirrored rows too) and the
    IoU predictor (so every regressor kind is in model.pt), on the frozen backbone
    (--no-end-to-end): the detector the hard-negative and scale-jitter tests change only the
    head of. The default, end to end, is test_course_preset_and_end_to_end's."""
    det = tmp_path_factory.mktemp("trained") / "det"
    shutil.copytree(built, det)
    assert (
        main(
            cli(
                "detect",
                "train",
                det,
                epochs=1,
                backbone_weights=weights,
                image_size=160,
                no_end_to_end=True,
            )
        )
        == 0
    )
    return det


def copy_of(det, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(det, out)
    return out


# -- labelling and sampling ------------------------------------------------------------
def test_labelling_bands_and_gt_added():
    gt = np.array([[0, 0, 10, 10]], dtype=np.float32)
    props = np.array(
        [
            [0, 0, 10, 10],
            [0, 0, 10, 8],
            [0, 0, 10, 5],
            [0, 0, 10, 2],
            [50, 50, 60, 60],
            [0, 0, 1, 1],
        ],
        dtype=np.float32,
    )  # IoU 1, .8, .5, .2, 0
    boxes, labels, ious, match = label_proposals(props, gt, pos_iou=0.7, neg_iou=0.3, min_area=2)
    # 1.0 and 0.8 positive; 0.5 in the band (dropped); 0.2 and 0 negative; tiny box dropped
    assert labels.tolist() == [1, 1, 0, 0, 1] and np.allclose(ious[:4], [1, 0.8, 0.2, 0])
    assert np.allclose(boxes[-1], gt[0])  # the ground-truth box itself, added
    assert np.allclose(match[:2], gt) and np.allclose(match[-1], gt[0])
    _, l2, _, m2 = label_proposals(props, np.zeros((0, 4)), 0.5, 0.5)
    assert (l2 == 0).all() and np.isnan(m2).all()  # no target box: nothing to regress onto


def test_sample_rows_takes_hard_then_near_then_random():
    # Ten negatives: 0-1 on another class's box, 2-5 near misses (IoU 0.2 with a target),
    # 6-9 far away; two positives. Room for 5 negatives: both hard ones, 2 near misses
    # (half of 5), then one of the rest.
    boxes = np.array(
        [[0, 0, 10, 10]] * 2 + [[100, 100, 110, 110]] * 8 + [[50, 50, 60, 60]] * 2, dtype=np.float32
    )
    labels = np.array([0] * 10 + [1] * 2)
    ious = np.array([0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    hard = np.array([[0, 0, 10, 10]], np.float32)
    for seed in range(5):
        keep = sample_rows(boxes, labels, ious, hard, np.random.default_rng(seed), max_neg=5)
        neg = [k for k in keep if labels[k] == 0]
        assert keep[:2].tolist() == [10, 11] and len(neg) == 5
        assert {0, 1} <= set(neg)
        assert len([k for k in neg if 2 <= k <= 5]) == 2 and len([k for k in neg if k >= 6]) == 1
    keep = sample_rows(boxes, labels, ious, np.zeros((0, 4)), np.random.default_rng(0), 0)
    assert keep.tolist() == [10, 11]  # no negatives asked for


# -- selection ---------------------------------------------------------------------------
def test_prefilter_keeps_selective_search_order():
    from dnnlab.detect.selection import prefilter

    boxes = np.array(
        [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.5], [40, 40, 50, 50]], np.float32
    )
    # The third is a near-duplicate (IoU 0.95) of the first: dropped; the order stays.
    out = prefilter(boxes, DetectionConfig(prefilter_iou=0.8))
    assert out.tolist() == boxes[[0, 1, 3]].tolist()
    assert (
        prefilter(boxes, DetectionConfig(prefilter_iou=0.8, max_proposals=2)).tolist()
        == boxes[[0, 1]].tolist()
    )
    assert len(prefilter(boxes, DetectionConfig(prefilter_iou=1.0))) == 4  # off


def test_select_threshold_nms_and_top_k():
    from dnnlab.detect.selection import select

    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]
    )
    scores = torch.tensor([0.9, 0.95, 0.6, 0.4, 0.7])
    plain = dict(vote_iou=0.0, max_detections=10)
    # 0.4 under the threshold; box 0 overlaps box 1 (IoU 0.82) and scores lower: suppressed.
    b, s = select(boxes, scores, DetectionConfig(score_threshold=0.5, nms_iou=0.3, **plain))
    assert s.tolist() == pytest.approx([0.95, 0.7, 0.6])
    assert b.tolist() == boxes[[1, 4, 2]].tolist()
    b, s = select(
        boxes,
        scores,
        DetectionConfig(score_threshold=0.5, nms_iou=0.3, vote_iou=0.0, max_detections=2),
    )
    assert s.tolist() == pytest.approx([0.95, 0.7])
    # nms_iou 1: no suppression, every box above the threshold, best first.
    b, s = select(boxes, scores, DetectionConfig(score_threshold=0.5, nms_iou=1.0, **plain))
    assert s.tolist() == pytest.approx([0.95, 0.9, 0.7, 0.6])
    # Voting: box 1 becomes the mean of boxes 0 and 1 weighted by their scores.
    b, s = select(
        boxes,
        scores,
        DetectionConfig(score_threshold=0.5, nms_iou=0.3, vote_iou=0.5, support_scale=0.0),
    )
    want = (0.9 * boxes[0] + 0.95 * boxes[1]) / 1.85
    assert torch.allclose(b[0], want) and s[0].item() == pytest.approx(0.95)


def test_box_voting_hand_case_and_loop_oracle():
    from dnnlab.detect.selection import confidence, vote

    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 40], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.6, 0.8, 0.99])
    # box 1 overlaps box 0 at IoU 80/120, box 2 at 100/400 (below 0.5), box 3 not at all
    voted, support = vote(boxes[[0, 3]], boxes, scores, 0.5)
    assert torch.allclose(voted[0], torch.tensor([0.6 * 2 / 1.5, 0, 10 + 0.6 * 2 / 1.5, 10]))
    assert torch.allclose(voted[1], boxes[3]) and torch.allclose(support, torch.tensor([1.5, 0.99]))
    # More agreeing boxes outrank one lone box that the classifier likes more.
    assert confidence(support, 10.0)[0] > confidence(support, 10.0)[1]
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(60, 2, generator=g) * 30], 1)
    scores = torch.rand(60, generator=g)
    kept = boxes[:7]
    voted, support = vote(kept, boxes, scores, 0.5)
    b64, s64 = boxes.double(), scores.double()
    for i in range(len(kept)):
        num, den = torch.zeros(4, dtype=torch.float64), 0.0
        for j in range(len(boxes)):
            if box_iou(kept[i : i + 1], boxes[j : j + 1]).item() >= 0.5:
                num += s64[j] * b64[j]
                den += float(s64[j])
        assert abs(float(support[i]) - den) < 1e-5
        assert torch.allclose(voted[i].double(), num / den, atol=1e-4)


# -- evaluation's matching ---------------------------------------------------------------
def test_match_detections_hand_cases():
    from dnnlab.detect.evaluate import match_detections

    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    dets = np.array(
        [
            [0, 0, 10, 10],  # matches gt 0
            [0, 0, 10, 9],  # best is gt 0, already taken: false
            [20, 0, 30, 4],  # IoU 0.4 with gt 1: false
            [20, 0, 30, 10],  # matches gt 1
            [50, 50, 60, 60],
        ],  # nothing: false
        np.float32,
    )
    assert match_detections(dets, gt).tolist() == [True, False, False, True, False]
    # Order decides: the duplicate first takes gt 0, the exact box is then the false one.
    assert match_detections(dets[[1, 0]], gt).tolist() == [True, False]
    assert match_detections(dets, np.zeros((0, 4), np.float32)).tolist() == [False] * 5
    assert match_detections(np.zeros((0, 4), np.float32), gt).tolist() == []
    assert match_detections(dets[2:3], gt, iou=0.4).tolist() == [True]


def coco_ap_oracle(boxes, scores, gts, t):
    """COCO's one-class AP at IoU t, written out: detections of every photo in descending
    confidence, each takes the unmatched target box of its photo it overlaps most at IoU >= t
    (float64), precision made non-increasing from the right, read at recall 0, 0.01, ..., 1
    (0 where that recall is never reached), averaged. The recall and IoU thresholds are
    torchmetrics' own (torch.linspace in float32: 0.6 is 0.6000000238418579)."""

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
        return w * h / (area - w * h)

    dets = sorted(
        (
            (float(s), p, np.float64(b))
            for p in range(len(boxes))
            for b, s in zip(boxes[p], scores[p], strict=True)
        ),
        key=lambda d: -d[0],
    )
    taken = [set() for _ in gts]
    tp = []
    for _, p, b in dets:
        best, m = t, None
        for j, g in enumerate(np.float64(gts[p])):
            v = iou(b, g)
            if j not in taken[p] and v >= best:
                best, m = v, j
        if m is not None:
            taken[p].add(m)
        tp.append(m is not None)
    n_gt = sum(len(g) for g in gts)
    cum = np.cumsum(tp)
    recall = cum / n_gt
    precision = cum / np.arange(1, len(tp) + 1)
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    total = 0.0
    for r in torch.linspace(0, 1, 101).tolist():
        reached = np.flatnonzero(recall >= r)
        total += precision[reached[0]] if len(reached) else 0.0
    return total / 101


def test_average_precisions_match_a_written_out_coco_ap():
    """AP50, AP75 and mAP (0.5:0.95) against coco_ap_oracle: a hand case where the tight and
    the loose box differ at 0.75 (no IoU on a threshold: torchmetrics' thresholds are
    float32), and seeded random photos (jittered and false boxes)."""
    from dnnlab.detect.evaluate import average_precisions

    f = np.float32
    gts = [np.array([[0, 0, 100, 100]], f), np.array([[0, 0, 50, 50], [100, 0, 150, 50]], f)]
    boxes = [
        np.array([[0, 0, 100, 72], [200, 200, 250, 250]], f),  # IoU 0.72: true at 0.5 only
        np.array([[0, 0, 50, 48], [100, 0, 150, 31], [300, 0, 350, 50]], f),  # 0.96, 0.62
    ]
    scores = [np.array([0.9, 0.8], f), np.array([0.7, 0.95, 0.6], f)]
    cases = [(boxes, scores, gts)]
    rng = np.random.default_rng(0)
    for _ in range(4):
        gs, bs, ss = [], [], []
        for _ in range(5):
            g = rng.uniform(0, 200, (rng.integers(0, 3), 2))
            g = np.concatenate([g, g + rng.uniform(20, 80, g.shape)], 1).astype(f)
            b = np.concatenate([g + rng.normal(0, 8, g.shape), rng.uniform(0, 250, (2, 4))])
            b = np.concatenate(
                [np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:]) + 1], 1
            )
            gs.append(g)
            bs.append(b.astype(f))
            ss.append(rng.permutation(len(b)).astype(f) / 10 + rng.uniform(0, 0.05))
        cases.append((bs, ss, gs))
    for bs, ss, gs in cases:
        got = average_precisions(bs, ss, gs)
        assert got["ap50"] == pytest.approx(coco_ap_oracle(bs, ss, gs, 0.5), abs=1e-6)
        assert got["ap75"] == pytest.approx(coco_ap_oracle(bs, ss, gs, 0.75), abs=1e-6)
        ts = torch.linspace(0.5, 0.95, 10).tolist()
        want = np.mean([coco_ap_oracle(bs, ss, gs, t) for t in ts])
        assert got["map"] == pytest.approx(want, abs=1e-6)
    hand = average_precisions(*cases[0])
    assert hand["ap75"] < hand["ap50"]


# -- box regressors ----------------------------------------------------------------------
def test_coarse_and_fine_regressors_fit_their_rows():
    from dnnlab.detect.boxes import box_deltas
    from dnnlab.detect.boxreg import fit_regressors, fit_ridge

    g = torch.Generator().manual_seed(0)
    n = 40
    feats = torch.randn(n, 12, generator=g)
    ious = torch.linspace(0.0, 0.95, n)
    rows = []
    for k in range(n):
        x0, y0 = float(k), float(2 * k)
        gt = [x0 + 1, y0 - 2, x0 + 24 + 3 * float(feats[k, 0]) + k % 3, y0 + 27]
        rows.append(
            {
                "box": [x0, y0, x0 + 20, y0 + 30],
                "iou": float(ious[k]),
                "gt": None if k % 7 == 0 else gt,
            }
        )
    idx = range(n - 5)  # rows outside idx must not enter either fit

    def oracle(lo):
        use = [k for k in idx if rows[k]["gt"] is not None and rows[k]["iou"] >= lo]
        props = torch.tensor([rows[k]["box"] for k in use])
        gt = torch.tensor([rows[k]["gt"] for k in use])
        return fit_ridge(feats[use], box_deltas(props, gt), 1.0)

    first, later = fit_regressors(feats, rows, idx, RegressorConfig(reg_lambda=1.0))
    for got, lo in ((first, 0.3), (later, 0.5)):
        want = oracle(lo)
        assert torch.allclose(got.weight, want.weight) and torch.allclose(got.bias, want.bias)
    assert not torch.allclose(first.weight, later.weight)
    one, none = fit_regressors(
        feats, rows, idx, RegressorConfig(reg_lambda=1.0, coarse_min_iou=None)
    )
    assert none is None and torch.allclose(one.weight, later.weight)


def test_second_regressor_serves_later_rounds():
    from torch import nn

    def shift(dx):
        reg = nn.Linear(1280, 4)
        nn.init.zeros_(reg.weight)
        with torch.no_grad():
            reg.bias.copy_(torch.tensor([dx, 0.0, 0.0, 0.0]))
        return reg

    cfg = DetectorConfig(features=FeatureSpec(grid=1, fine_grid=0))
    m = Detector(cfg, nn.Identity(), NORM, regressor=shift(0.1), regressor2=shift(-0.1))
    box, x = torch.tensor([[10.0, 10, 30, 30]]), torch.zeros(1, 1280)
    assert m.refine(x, box, 100, 100, 0)[0, 0].item() == pytest.approx(12.0)  # first regressor
    assert m.refine(x, box, 100, 100, 1)[0, 0].item() == pytest.approx(8.0)  # the second
    m.regressor2 = None
    assert m.refine(x, box, 100, 100, 1)[0, 0].item() == pytest.approx(12.0)


def test_box_deltas_round_trip_and_ridge_against_lstsq():
    from dnnlab.detect.boxes import apply_deltas, box_deltas
    from dnnlab.detect.boxreg import fit_ridge

    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, 2, generator=g) * 100 + 20  # inside the image after the noise
    p = torch.cat([p, p + 10 + torch.rand(50, 2, generator=g) * 80], 1)
    gt = p + torch.randn(50, 4, generator=g) * 3
    back = apply_deltas(p, box_deltas(p, gt), 1000, 1000)
    assert torch.allclose(back, gt, atol=1e-3)
    # fewer rows than features (the dual form) and more (the primal), in one block or several
    for n, block in ((30, 2048), (30, 7), (200, 2048), (200, 64)):
        x = torch.randn(n, 80, generator=g) + 3
        t = torch.randn(n, 4, generator=g)
        lam = 2.5
        layer = fit_ridge(x, t, lam, block)
        xn, tn = x.double().numpy(), t.double().numpy()
        xc = xn - xn.mean(0)
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(80), xc.T @ (tn - tn.mean(0)))
        b = tn.mean(0) - xn.mean(0) @ w
        assert np.allclose(layer.weight.detach().numpy().T, w, atol=1e-5)
        assert np.allclose(layer(x).detach().numpy(), xn @ w + b, atol=1e-4)
    with pytest.raises(InputError, match="nothing to fit"):
        fit_ridge(torch.zeros(0, 80), torch.zeros(0, 4), 1.0)


def test_box_regression_loss_against_torchvision_and_a_written_out_smooth_l1():
    """--box-loss's loss is torchvision's Faster R-CNN box loss (BoxCoder((10, 10, 5, 5)),
    fastrcnn_loss's box part), and Huber's smooth L1 written out in float64."""
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    from dnnlab.detect.train import box_regression_loss

    g = torch.Generator().manual_seed(0)
    props = torch.rand(6, 2, generator=g) * 100
    props = torch.cat([props, props + 20 + torch.rand(6, 2, generator=g) * 60], 1)
    gt = props + torch.randn(6, 4, generator=g) * 8
    pred = torch.randn(6, 4, generator=g) * 0.5
    n_rows = 10  # six positives among ten rows
    got = box_regression_loss(pred, props, gt, n_rows)
    # torchvision: ten rows, the first six of class 1, predictions for both classes.
    target = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt, props)
    labels = torch.tensor([1] * 6 + [0] * 4)
    box_regression = torch.zeros(n_rows, 8)
    box_regression[:6, 4:] = pred
    targets = torch.cat([target, torch.zeros(4, 4)])
    _, want = fastrcnn_loss(torch.zeros(n_rows, 2), box_regression, [labels], [targets])
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # Written out: offsets by hand, smooth L1 with beta 1/9, summed, over the rows.
    p, t = props.double().numpy(), gt.double().numpy()
    pw, ph, tw, th = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1], t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
    d = np.stack(
        [
            10 * ((t[:, 0] + tw / 2) - (p[:, 0] + pw / 2)) / pw,
            10 * ((t[:, 1] + th / 2) - (p[:, 1] + ph / 2)) / ph,
            5 * np.log(tw / pw),
            5 * np.log(th / ph),
        ],
        1,
    )
    diff = np.abs(pred.double().numpy() - d)
    beta = 1 / 9
    by_hand = np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum() / n_rows
    assert float(got) == pytest.approx(by_hand, rel=1e-5)


# -- config ------------------------------------------------------------------------------
def test_config_round_trip_and_strict_keys():
    cfg = DetectorConfig(target="dog", features=FeatureSpec(grid=2))
    assert DetectorConfig.from_dict(json.loads(json.dumps(cfg.to_dict())), "f") == cfg
    d = cfg.to_dict()
    d["features"]["colour"] = 1
    with pytest.raises(InputError, match=r"m\.pt: config section 'features'.*colour"):
        DetectorConfig.from_dict(d, "m.pt")
    d = cfg.to_dict()
    del d["regressors"]
    with pytest.raises(InputError, match="missing.*regressors"):
        DetectorConfig.from_dict(d, "m.pt")
    d = cfg.to_dict()
    d["detection"]["nms_iou"] = -1
    with pytest.raises(InputError, match="--nms-iou"):
        DetectorConfig.from_dict(d, "m.pt")
    # A file written before the mirrored fits, the IoU predictor and test-time flip existed
    # loads as trained: without them; a key that was always there is still required.
    d = cfg.to_dict()
    del d["regressors"]["mirror"], d["regressors"]["iou_predictor"]
    del d["detection"]["flip_test"], d["detection"]["iou_confidence"]
    old = replace(
        cfg,
        regressors=replace(cfg.regressors, mirror=False, iou_predictor=False),
        detection=replace(cfg.detection, flip_test=False),
    )
    assert DetectorConfig.from_dict(d, "m.pt") == old
    del d["regressors"]["reg_lambda"]
    with pytest.raises(InputError, match="missing.*reg_lambda.*retrain"):
        DetectorConfig.from_dict(d, "m.pt")
    # The removed cascade settings are read and dropped: the fitted weights detect the same.
    d = cfg.to_dict()
    d["regressors"].update(cascade=True, cascade_min_iou=0.3)
    assert DetectorConfig.from_dict(d, "m.pt") == cfg


def test_mirrored_rows_are_the_mirrored_photos_boxes(voc, built, weights):
    """flip_boxes by hand; embed_mirrored's features are those of the hand-mirrored boxes on
    the hand-mirrored photo, its rows' boxes and target boxes mirrored, the rest kept."""
    b = torch.tensor([[10.0, 5, 30, 25], [0, 0, 100, 50]])
    assert flip_boxes(b, 100).tolist() == [[70, 5, 90, 25], [0, 0, 100, 50]]
    assert torch.equal(flip_boxes(flip_boxes(b, 100), 100), b)
    index = read_index(built)
    rows = [r for r in index if r["image"] == index[0]["image"]]
    rows += [r for r in index if r["gt"] is not None][:3]
    backbone, norm = load_backbone(str(weights))
    model = Detector(DetectorConfig(features=FeatureSpec(image_size=160)), backbone, norm)
    x, mirrored = embed_mirrored(model.eval(), rows, progress=False)
    read_mirrored = {}  # photo -> box_features of its hand-mirrored copy (one backbone pass)
    for i, (r, m) in enumerate(zip(rows, mirrored, strict=True)):
        img = load_rgb(r["image"])
        w = img.shape[1]
        if r["image"] not in read_mirrored:
            read_mirrored[r["image"]] = model.box_features(img[:, ::-1].copy())
        x1, y1, x2, y2 = r["box"]
        assert m["box"] == pytest.approx([w - x2, y1, w - x1, y2])
        if r["gt"] is None:
            assert m["gt"] is None
        else:
            assert m["gt"] == pytest.approx(
                [w - r["gt"][2], r["gt"][1], w - r["gt"][0], r["gt"][3]]
            )
        assert (m["label"], m["iou"], m["image"]) == (r["label"], r["iou"], r["image"])
        assert m["mirrored"] is True and "mirrored" not in r
        want = read_mirrored[r["image"]](torch.tensor([[w - x2, y1, w - x1, y2]]))
        assert torch.allclose(x[i], want[0].half().float())


@pytest.mark.slow
def test_train_without_mirrored_regressors_records_it(trained, weights, tmp_path):
    """The default fits the regressors on mirrored rows too; --no-mirror-regressors does not,
    and says so in model.pt."""
    assert Detector.load(trained).config.regressors.mirror
    det = copy_of(trained, tmp_path)
    argv = ["detect", "train", str(det), "--epochs", "1", "--backbone-weights", str(weights)]
    argv += ["--image-size", "160", "--no-mirror-regressors", "--overwrite", "--no-end-to-end"]
    assert main(argv) == 0
    ck = torch.load(det / "model.pt", weights_only=True)
    assert ck["config"]["regressors"]["mirror"] is False
    assert not Detector.load(det).config.regressors.mirror
    before = torch.load(trained / "model.pt", weights_only=True)["state"]["regressor.weight"]
    assert not torch.allclose(ck["state"]["regressor.weight"], before)


# -- hard-negative rounds ------------------------------------------------------------------
def test_hardest_takes_the_top_scores_ties_in_order():
    s = torch.tensor([0.2, 0.9, 0.5, 0.9, 0.1, 0.5])
    assert hardest(s, 4).tolist() == [1, 3, 2, 5]
    assert hardest(s, 10).tolist() == [1, 3, 2, 5, 0, 4]
    assert hardest(s[:0], 3).tolist() == []


@pytest.mark.slow
def test_mining_takes_each_training_photos_highest_scoring_new_negatives(voc, built, weights):
    """negative_pools + mine_round against a plain selection: every proposal of each
    training photo (the build's cached ones, in index.csv's two decimals) whose IoU with
    every cat is below --neg-iou, at least --min-area, not among the head's training rows,
    each box once; of those the k the head scores highest (ties: proposal order). No
    validation photo is ever mined."""
    rows, info = read_index(built), read_build(built)
    labelling = build_labelling(built, info)
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    taken = torch.tensor(train[::2])  # the head's training rows: every other one
    pools = negative_pools(built, info, rows, taken, labelling, progress=False)
    train_photos = {rows[i]["image"] for i in train}
    assert set(pools) == train_photos
    assert not train_photos & {r["image"] for r in rows if r["split"] == "val"}
    cats = {it.image.resolve(): it.boxes("cat") for it in read_voc_dir(voc, Problems())}

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area = lambda c: (c[2] - c[0]) * (c[3] - c[1])  # noqa: E731
        return w * h / (area(a) + area(b) - w * h)

    for image in sorted(train_photos):
        (props,) = proposals_for(
            [Path(image)], info["proposals"], built / "cache" / "proposals", 1, False
        )
        mine = {tuple(rows[i]["box"]) for i in taken.tolist() if rows[i]["image"] == image}
        want = []
        for b in props.tolist():
            b = [float(f"{v:.2f}") for v in b]
            b = [float(v) for v in np.float32(b)]  # as the index's boxes are read for features
            if (b[2] - b[0]) * (b[3] - b[1]) < labelling.min_area:
                continue
            if any(iou(b, g) >= labelling.neg_iou for g in cats[Path(image)].tolist()):
                continue
            if tuple(b) in mine or b in want:
                continue
            want.append(b)
        assert pools[image].tolist() == want, image
    assert sum(len(p) for p in pools.values()) > 100

    backbone, norm = load_backbone(str(weights))
    torch.manual_seed(0)
    model = Detector(DetectorConfig(features=FeatureSpec(image_size=160)), backbone, norm).eval()

    def features_of(image):
        img = load_rgb(Path(image))
        return lambda b: model.embed(img, b)

    k = 5
    mined = mine_round(model, pools, features_of, k)
    assert set(mined) == {p for p in pools if len(pools[p])}
    for image, (pos, x) in mined.items():
        scores = model.scores(model.embed(load_rgb(Path(image)), pools[image]).half().float())
        s = scores.tolist()
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        assert pos.tolist() == order[:k]
        assert x.shape == (min(k, len(s)), model.spec.dim)
        assert torch.equal(model.scores(x), scores[torch.from_numpy(pos)])


def test_hard_negative_rounds_move_boxes_from_the_pools_once_and_stop_when_empty():
    """Each round takes at most k boxes of each photo's pool, never one twice, grows the
    training set by what it took, and the rounds stop when every pool is empty."""

    class Model(torch.nn.Module):
        spec = type("Spec", (), {"head_dim": 3})

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)
            self.register_buffer("mean", torch.zeros(1))

        def scores(self, x):
            return torch.softmax(self.head(x[:, :3]), 1)[:, 1]

    torch.manual_seed(0)
    model = Model()
    first = {k: v.clone() for k, v in model.head.state_dict().items()}
    pools = {"a": np.arange(40, dtype=np.float32).reshape(10, 4), "b": np.ones((3, 4), np.float32)}
    seen = []  # every box scored: a box taken in one round is never scored again

    def features_of(photo):
        def read(boxes):
            seen.append({(photo, tuple(b)) for b in boxes.tolist()})
            return torch.tensor([[float(photo == "b"), b[0] / 40, b[1] / 40] for b in boxes])

        return read

    x, y = torch.randn(6, 3), torch.tensor([1, 0, 1, 0, 0, 1])
    cfg = DetectTrainConfig(
        end_to_end=False, epochs=1, hard_negative_rounds=6, hard_negatives_per_image=2
    )
    gen = torch.Generator().manual_seed(0)
    hist, best, rounds = train_hard_negatives(
        model, x, y, x[:2], y[:2], pools, features_of, first, ([], 0.0), cfg, gen, False
    )
    assert [r["added"] for r in rounds] == [4, 3, 2, 2, 2]  # a: 2 a round; b: 2, then 1
    assert [r["train_boxes"] for r in rounds] == [10, 13, 15, 17, 19]
    assert len(pools["a"]) == 0 and len(pools["b"]) == 0
    a = [s for s in seen if next(iter(s))[0] == "a"]  # one read per photo and round
    assert [len(s) for s in a] == [10, 8, 6, 4, 2]  # a's pool, 2 fewer each round
    assert all(later < earlier for earlier, later in zip(a, a[1:], strict=False))
    assert len(hist) == 1 and best == rounds[-1]["best"]


@pytest.mark.slow
def test_hard_negative_rounds_retrain_only_the_head(built, trained, weights, tmp_path):
    """--hard-negative-rounds 0 is the detector trained without the setting (every tensor);
    2 rounds change only the head (the ridge fits read the indexed rows), add at most
    --hard-negatives-per-image boxes per training photo a round, are recorded in train.json
    and leave model.pt's config as it was (a training setting, like --epochs)."""
    base = torch.load(trained / "model.pt", weights_only=True)
    argv = ["--epochs", "1", "--backbone-weights", str(weights), "--image-size", "160"]
    argv += ["--no-end-to-end"]  # as `trained` was
    zero = copy_of(built, tmp_path / "zero")
    assert main(["detect", "train", str(zero), *argv, "--hard-negative-rounds", "0"]) == 0
    ck = torch.load(zero / "model.pt", weights_only=True)
    assert ck["config"] == base["config"] and ck["state"].keys() == base["state"].keys()
    for name, t in base["state"].items():
        assert torch.equal(ck["state"][name], t), name
    assert json.loads((zero / "train.json").read_text())["hard_negative_rounds"] == []

    det = copy_of(built, tmp_path / "two")
    argv += ["--hard-negative-rounds", "2", "--hard-negatives-per-image", "4"]
    assert main(["detect", "train", str(det), *argv]) == 0
    ck = torch.load(det / "model.pt", weights_only=True)
    assert ck["config"] == base["config"]
    changed = {n for n, t in base["state"].items() if not torch.equal(ck["state"][n], t)}
    assert changed and all(n.startswith("head.") for n in changed), changed
    summary = json.loads((det / "train.json").read_text())
    cfg = summary["train_config"]
    assert (cfg["hard_negative_rounds"], cfg["hard_negatives_per_image"]) == (2, 4)
    rounds = summary["hard_negative_rounds"]
    photos = len({r["image"] for r in read_index(built) if r["split"] == "train"})
    before = json.loads((trained / "train.json").read_text())["train_boxes"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(0 < r["added"] <= 4 * photos for r in rounds)
    assert rounds[0]["train_boxes"] == before + rounds[0]["added"]
    assert (
        summary["train_boxes"]
        == rounds[1]["train_boxes"]
        == before + sum(r["added"] for r in rounds)
    )
    assert "hard-negative rounds" in train_summary(summary)
    Detector.load(det)


# -- scale jitter ----------------------------------------------------------------------------
def test_scale_jitter_reads_each_photo_at_one_scale_an_epoch():
    """train_head with scale jitter: every epoch each row is read once, all rows of one
    photo at the same scale, and over the epochs every scale is drawn."""
    n, photos, scales = 40, 7, 3
    photo_of = torch.arange(n) % photos
    x = torch.zeros(scales, n, 4)
    x[:, :, 0] = torch.arange(scales)[:, None].float()  # which scale
    x[:, :, 1] = torch.arange(n).float()  # which row
    seen = []

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 2)

        def forward(self, v):
            seen.append(v[:, :2].detach().clone())
            return self.w(v)

    model = type("M", (), {"head": Head()})()
    cfg = DetectTrainConfig(end_to_end=False, epochs=12, batch_size=8)
    y = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    train_head(model, x, y, x[1, :0], y[:0], torch.ones(2), cfg, gen, photo_of)
    per_epoch = -(-n // cfg.batch_size)
    assert len(seen) == cfg.epochs * per_epoch
    drawn = set()
    for e in range(cfg.epochs):
        v = torch.cat(seen[e * per_epoch : (e + 1) * per_epoch])
        rows, scale = v[:, 1].long(), v[:, 0].long()
        assert sorted(rows.tolist()) == list(range(n))
        for p in range(photos):
            at = scale[photo_of[rows] == p]
            assert (at == at[0]).all()
            drawn.add(int(at[0]))
    assert drawn == {0, 1, 2}


@pytest.mark.slow
def test_scaled_features_are_the_rows_read_on_the_scaled_photo(built, weights, tmp_path):
    """scaled_features against each row read directly by a detector whose --image-size is
    the scaled one (float16 like the cache); the middle scale is the features given; one
    cache folder per scale."""
    rows = read_index(built)
    train = torch.tensor([i for i, r in enumerate(rows) if r["split"] == "train"][::3])
    backbone, norm = load_backbone(str(weights))
    spec = FeatureSpec(image_size=160)
    model = Detector(DetectorConfig(features=spec), backbone, norm).eval()
    cfg = DetectTrainConfig(end_to_end=False, scale_jitter=0.25, backbone_weights=str(weights))
    assert cfg.jitter_sizes(spec) == (120, 200)
    given = torch.randn(len(train), spec.head_dim)
    x, photo_of = scaled_features(model, rows, train, given, tmp_path, cfg, False)
    assert x.shape == (3, len(train), spec.head_dim) and torch.equal(x[1], given)
    assert len(list(tmp_path.iterdir())) == 2
    images = []
    for k, i in enumerate(train.tolist()):
        r = rows[i]
        if r["image"] not in images:
            images.append(r["image"])
        assert photo_of[k] == images.index(r["image"])
        if k % 7:
            continue
        img = load_rgb(r["image"])
        for at, size in ((0, 120), (2, 200)):
            direct = Detector(
                DetectorConfig(features=replace(spec, image_size=size)), backbone, norm
            ).eval()
            with torch.no_grad():
                want = direct.embed(img, np.array([r["box"]], np.float32))[0, : spec.head_dim]
            assert torch.allclose(x[at, k], want.half().float(), atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_scale_jitter_changes_only_the_head_and_is_recorded(built, trained, weights, tmp_path):
    base = torch.load(trained / "model.pt", weights_only=True)
    det = copy_of(built, tmp_path)
    argv = ["--epochs", "1", "--backbone-weights", str(weights), "--image-size", "160"]
    argv += ["--no-end-to-end"]  # as `trained` was
    assert main(["detect", "train", str(det), *argv, "--scale-jitter", "0.25"]) == 0
    ck = torch.load(det / "model.pt", weights_only=True)
    assert ck["config"] == base["config"]
    changed = {n for n, t in base["state"].items() if not torch.equal(ck["state"][n], t)}
    assert changed and all(n.startswith("head.") for n in changed), changed
    summary = json.loads((det / "train.json").read_text())
    assert summary["train_config"]["scale_jitter"] == 0.25
    assert "scale-jittered features" in train_summary(summary)
    assert len(list((det / "cache").glob("features-*"))) == 3  # one per scale


# -- localization confidence (IoU predictor) and test-time flip ---------------------------
def test_jitter_boxes_stay_in_the_photo_and_loosen_with_sigma():
    rng = np.random.default_rng(0)
    gt = np.array([[20.0, 10, 80, 70], [0, 0, 30, 30]], np.float32)
    b = jitter_boxes(gt, rng, 300, width=100, height=90)
    assert b.shape[1] == 4 and 0 < len(b) <= 600
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 100).all() and (b[:, 3] <= 90).all()
    assert ((b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2)).all()
    # The copies of the first box, taken in turn at sigma 0.03, 0.08, 0.15 of its size.
    first = jitter_boxes(gt[:1], np.random.default_rng(1), 300, 1000, 1000)
    iou = box_iou(torch.from_numpy(first), torch.from_numpy(gt[:1]))[:, 0].numpy()
    by_sigma = [iou[k::3].mean() for k in range(3)]
    assert by_sigma[0] > by_sigma[1] > by_sigma[2] > 0.3 and by_sigma[0] > 0.85
    assert jitter_boxes(np.zeros((0, 4)), rng, 5, 10, 10).shape == (0, 4)


def test_select_ranks_and_weighs_by_predicted_iou_hand_case():
    """Two overlapping boxes: the classifier prefers the loose one (A), the IoU predictor
    the tight one (B); far box C alone. Written-out NMS, votes and confidences."""
    boxes = torch.tensor([[0.0, 0, 100, 100], [10, 10, 90, 90], [200, 200, 240, 240]])
    scores = torch.tensor([0.99, 0.90, 0.80])
    q = {0: 0.5, 1: 0.9, 2: 0.6}

    def quality(b):
        return torch.tensor([q[int((boxes == x).all(1).nonzero())] for x in b])

    cfg = DetectionConfig(nms_iou=0.3, vote_iou=0.5, support_scale=10.0)
    # off: NMS by probability keeps A and C; A's vote: A and B (IoU 0.64), weights 0.99, 0.9.
    b, c = select(boxes, scores, replace(cfg, iou_confidence="off"), quality)
    va = (0.99 * boxes[0] + 0.90 * boxes[1]) / 1.89
    assert torch.allclose(b, torch.stack([va, boxes[2]]))
    assert torch.allclose(c, 1 - torch.exp(-torch.tensor([1.89, 0.80]) / 10))
    assert torch.equal(select(boxes, scores, cfg)[0], b)  # no predictor: as "off"
    # score: the same boxes, each confidence times its (voted) box's predicted IoU.
    qa = 0.5  # the voted box is neither A nor B: give it A's value through a lookup
    b2, c2 = select(
        boxes, scores, replace(cfg, iou_confidence="score"), lambda x: torch.tensor([qa, 0.6])
    )
    want = (1 - torch.exp(-torch.tensor([1.89, 0.80]) / 10)) * torch.tensor([qa, 0.6])
    order = want.argsort(descending=True)
    assert torch.allclose(c2, want[order]) and torch.allclose(b2, b[order])
    # rank: NMS by predicted IoU keeps B and C; B's vote weighs 0.99 x 0.5 and 0.90 x 0.9.
    calls = []

    def ranked(x):
        calls.append(len(x))
        return quality(x) if len(calls) == 1 else torch.tensor([0.7, 0.6])

    b3, c3 = select(boxes, scores, replace(cfg, iou_confidence="rank"), ranked)
    w = torch.tensor([0.99 * 0.5, 0.90 * 0.9])
    vb = (w[0] * boxes[0] + w[1] * boxes[1]) / w.sum()
    conf = (1 - torch.exp(-torch.tensor([w.sum(), 0.80 * 0.6]) / 10)) * torch.tensor([0.7, 0.6])
    order = conf.argsort(descending=True)
    assert torch.allclose(b3, torch.stack([vb, boxes[2]])[order])
    assert torch.allclose(c3, conf[order])
    assert calls == [3, 2]


def test_iou_predictor_rows_and_jittered_targets(voc, built, weights):
    """pick_rows takes every near row and FAR_PER_PHOTO x photos far ones; the jittered
    samples are the embed() features of jittered target boxes with their IoU by box_iou, on
    the mirrored photo for mirrored rows."""
    ious = np.array([0.0, 0.1, 0.29, 0.3, 0.5, 1.0, 0.05, 0.2] * 3)
    pick = pick_rows(ious, photos=1, rng=np.random.default_rng(0))
    assert set(np.flatnonzero(ious >= 0.3)) <= set(pick)
    assert (ious[pick] < 0.3).sum() == FAR_PER_PHOTO and (np.diff(pick) > 0).all()
    index = read_index(built)
    photo = next(r["image"] for r in index if r["gt"] is not None)
    rows = [r for r in index if r["image"] == photo]
    backbone, norm = load_backbone(str(weights))
    model = Detector(DetectorConfig(features=FeatureSpec(image_size=160)), backbone, norm).eval()
    _, mirrored = embed_mirrored(model, rows, progress=False)
    targets = photo_targets(rows + mirrored)
    img = load_rgb(rows[0]["image"])
    h, w = img.shape[:2]
    gt = np.array(sorted({tuple(r["gt"]) for r in rows if r["gt"] is not None}), np.float32)
    assert np.array_equal(targets[rows[0]["image"], False], gt)
    assert np.allclose(targets[rows[0]["image"], True], flip_boxes(torch.from_numpy(gt), w))
    x, t = jittered_samples(model, targets, np.random.default_rng(3), progress=False)
    rng = np.random.default_rng(3)
    b0 = jitter_boxes(gt, rng, JITTER_PER_TARGET, w, h)
    fgt = flip_boxes(torch.from_numpy(gt), w).numpy()
    b1 = jitter_boxes(fgt, rng, JITTER_PER_TARGET, w, h)
    want_x = (
        torch.cat([model.embed(img, b0), model.embed(np.ascontiguousarray(img[:, ::-1]), b1)])
        .half()
        .float()
    )
    assert torch.allclose(x, want_x)
    want_t = [
        box_iou(torch.from_numpy(b), torch.from_numpy(g)).max(1).values
        for b, g in ((b0, gt), (b1, fgt))
    ]
    assert torch.allclose(t, torch.cat(want_t))


def test_detection_with_the_iou_predictor_and_flip(voc, trained):
    """off: the detector as before the predictor; score: those boxes, each confidence times
    the predictor on the box's embed() features; rank: other confidences; flip_test: the
    same result for a photo and its mirror image, mirrored back."""
    model = Detector.load(trained)
    img = load_rgb(voc / "img1.jpg")
    w = img.shape[1]
    props = model.propose(img)
    model.set_detection(DetectionConfig(iou_confidence="off", flip_test=False))
    d0 = model.detect(img)
    s, b = model.score_boxes(img, props)
    want_b, want_s = select(torch.from_numpy(b), torch.from_numpy(s), model.config.detection)
    assert np.allclose(d0.boxes, want_b.numpy()) and np.allclose(d0.scores, want_s.numpy())
    model.set_detection(DetectionConfig(iou_confidence="score", flip_test=False))
    d1 = model.detect(img)
    q = model.iou_predictor(model.embed(img, d0.boxes))[:, 0].clamp(0, 1).detach().numpy()
    order = np.argsort(-(d0.scores * q), kind="stable")
    assert np.allclose(d1.boxes, d0.boxes[order], atol=1e-4)
    assert np.allclose(d1.scores, (d0.scores * q)[order], atol=1e-5)
    model.set_detection(DetectionConfig())
    assert model.config.detection.iou_confidence == "rank"
    # test-time flip: symmetric under mirroring, and not the unflipped answer. A regressor
    # fitted on mirrored rows too is close to symmetric already, so shift every box to the
    # right (dx): the photo's rounds move right, the mirrored photo's left, the mean neither.
    with torch.no_grad():
        model.regressor.bias[0] += 0.2
        model.regressor2.bias[0] += 0.2
    model.set_detection(DetectionConfig(iou_confidence="off", flip_test=False))
    s, b = model.score_boxes(img, props)
    model.set_detection(DetectionConfig(flip_test=True, iou_confidence="off"))
    mirror = np.ascontiguousarray(img[:, ::-1])
    s2, b2 = model.score_boxes(img, props)
    sm, bm = model.score_boxes(mirror, flip_boxes(torch.from_numpy(props), w).numpy())
    assert np.allclose(s2, sm, atol=1e-5)
    assert np.allclose(b2, flip_boxes(torch.from_numpy(bm), w).numpy(), atol=1e-3)
    assert not np.allclose(b2, b, atol=1e-2)  # the mirrored look moved the boxes


def test_detector_without_iou_predictor_loads_as_before(voc, trained, tmp_path, capsys):
    """A model.pt written before the IoU predictor and test-time flip existed (no keys for
    them) loads with both off and detects as the same weights do with them off;
    --iou-confidence score or rank on it is refused, naming the flag, before any work."""
    det = copy_of(trained, tmp_path)
    ck = torch.load(det / "model.pt", weights_only=True)
    del ck["config"]["regressors"]["iou_predictor"], ck["config"]["detection"]["iou_confidence"]
    del ck["config"]["detection"]["flip_test"], ck["state"]["iou_predictor.weight"]
    del ck["state"]["iou_predictor.bias"]
    torch.save(ck, det / "model.pt")
    old = Detector.load(det)
    assert old.iou_predictor is None and old.config.detection.iou_confidence == "off"
    img = load_rgb(voc / "img1.jpg")
    new = Detector.load(trained, detection=DetectionConfig(iou_confidence="off", flip_test=False))
    a, b = old.detect(img), new.detect(img)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    with pytest.raises(InputError, match="--iou-confidence rank.*no IoU predictor.*off or auto"):
        old.set_detection(DetectionConfig(iou_confidence="rank"))
    out = tmp_path / "res"
    argv = ["detect", "run", str(voc / "img1.jpg"), "--model", str(det), "--out", str(out)]
    assert main([*argv, "--iou-confidence", "score"]) == 2
    err = capsys.readouterr().err
    assert f"{det / 'model.pt'}: --iou-confidence score: this detector has no IoU predictor" in err
    assert "do not fit" not in err and not out.exists()
    # config and weights that disagree are named
    ck["config"]["regressors"]["iou_predictor"] = True
    torch.save(ck, det / "model.pt")
    with pytest.raises(InputError, match="do not fit its config.*IoU predictor"):
        Detector.load(det)


def test_epochs_default_to_each_recipes_own():
    """End to end (the default, features[7:]) trains 5 epochs; the head alone 10; a number
    given is kept. Each is what the cross-validation in docs/RESULTS.md section 17 ran."""
    default = DetectTrainConfig()
    assert (default.end_to_end, default.backbone_from, default.epochs) == (True, 7, 5)
    assert DetectTrainConfig(end_to_end=False).epochs == 10
    assert DetectTrainConfig(epochs=3).epochs == 3


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["build", "VOC", "--out", "OUT", "--pos-iou", "1.5"], "--pos-iou"),
        (["build", "VOC", "--out", "OUT", "--neg-iou", "0.6", "--pos-iou", "0.5"], "--neg-iou"),
        (["build", "VOC", "--out", "OUT", "--workers", "0"], "--workers"),
        (["train", "OUT", "--image-size", "0"], "--image-size"),
        (["train", "OUT", "--lr", "nan"], "--lr"),
        (["train", "OUT", "--grid", "0"], "--grid"),
        (["train", "OUT", "--epochs", "0"], "--epochs"),
        (["train", "OUT", "--backbone-from", "19"], "--backbone-from"),
        (["train", "OUT", "--backbone-from", "-1"], "--backbone-from"),
        (["train", "OUT", "--hard-negative-rounds", "-1"], "--hard-negative-rounds"),
        (["train", "OUT", "--hard-negative-rounds", "21"], "--hard-negative-rounds"),
        (["train", "OUT", "--hard-negatives-per-image", "0"], "--hard-negatives-per-image"),
        (["train", "OUT", "--hard-negative-rounds", "1"], "add --no-end-to-end"),
        (["train", "OUT", "--scale-jitter", "-0.1"], "--scale-jitter"),
        (["train", "OUT", "--scale-jitter", "0.95"], "--scale-jitter"),
        (["train", "OUT", "--scale-jitter", "0.2"], "add --no-end-to-end"),
        (["train", "OUT", "--no-end-to-end", "--box-loss", "1"], "--box-loss"),
        (["train", "OUT", "--box-loss", "-1"], "--box-loss"),
        (["train", "OUT", "--box-loss", "nan"], "--box-loss"),
        (
            ["train", "OUT", "--no-end-to-end", "--scale-jitter", "0.2", "--features", "crops"],
            "--features crops",
        ),
        (
            ["train", "OUT", "--no-end-to-end", "--scale-jitter", "0.5", "--image-size", "4000"],
            "--image-size 4000",
        ),
        (
            [
                "train",
                "OUT",
                "--no-end-to-end",
                "--scale-jitter",
                "0.2",
                "--hard-negative-rounds",
                "1",
            ],
            "--hard-negative-rounds",
        ),
        (
            ["run", "IMG", "--model", "OUT", "--out", "RES", "--max-detections", "-1"],
            "--max-detections",
        ),
        (
            ["run", "IMG", "--model", "OUT", "--out", "RES", "--score-threshold", "2"],
            "--score-threshold",
        ),
        (["eval", "VOC", "--model", "OUT", "--nms-iou", "-1"], "--nms-iou"),
        (["eval", "VOC", "--model", "OUT", "--refine-steps", "-2"], "--refine-steps"),
        (["eval", "VOC", "--model", "OUT", "--iou-confidence", "best"], "--iou-confidence"),
    ],
)
def test_flag_ranges_checked_before_work(argv, flag, voc, trained, tmp_path, capsys):
    """Each numeric flag out of its range: exit 2 with the flag named, nothing written."""
    work = copy_of(trained, tmp_path)
    before = sorted(p.name for p in work.rglob("*"))
    subst = {
        "VOC": str(voc),
        "OUT": str(work),
        "IMG": str(voc / "img1.jpg"),
        "RES": str(tmp_path / "res"),
    }
    assert main(["detect", *[subst.get(a, a) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert flag in err and "error" in err
    assert sorted(p.name for p in work.rglob("*")) == before
    assert not (tmp_path / "res").exists()


# -- VOC reading -------------------------------------------------------------------------
def test_voc_problems_are_counted_not_fatal(voc):
    probs = Problems()
    items = read_voc_dir(voc, probs)
    c = probs.counts
    assert c["malformed XML"] == 1 and c["XML without its image"] == 1
    assert c["unreadable image"] == 1 and c["box of zero area (dropped)"] == 1
    assert c["box outside the image (clipped)"] == 1 and c["unusable <filename>"] == 1
    assert c["image without a 'cat' object (all proposals negative)"] == 1
    assert c["photo with an unusable 'cat' box (photo dropped)"] == 1
    assert len(items) == 14 and "zero" not in {i.image.stem for i in items}
    out = next(i for i in items if i.image.stem == "outside")
    assert out.objects[0].box == (100.0, 60.0, 160.0, 120.0)
    img0 = next(i for i in items if i.image.stem == "img0")
    assert img0.objects[0].box[0] % 1 == 0.5  # float coordinates kept
    assert [o.name for o in img0.objects] == ["cat", "dog"]
    assert next(i for i in items if i.image.stem == "img3").image.suffix == ".png"
    # Another target: the photo whose cat box was dropped stays (its dog-less boxes are fine).
    dogs = read_voc_dir(voc, Problems(), target="dog")
    assert "zero" in {i.image.stem for i in dogs}


# -- build -------------------------------------------------------------------------------
def test_build_writes_index_split_by_photo(voc, built):
    info = json.loads((built / "build.json").read_text())
    assert info["images"] == 14 and info["target"] == "cat"
    assert info["proposal_recall"]["recall50"] > 0.5
    assert info["problems"]["counts"]["unusable <filename>"] == 1
    lines = (built / "index.csv").read_text().splitlines()
    assert lines[0] == "image,x1,y1,x2,y2,label,iou,split,gx1,gy1,gx2,gy2"
    imgs = {}
    for line in lines[1:]:
        f = line.split(",")
        imgs.setdefault(f[0], set()).add(f[7])
    assert all(len(s) == 1 for s in imgs.values())  # split by photo, never by box
    assert not any("zero" in k for k in imgs)  # its cat box was unusable: not trained on
    assert len(imgs) == 14
    assert not list(voc.glob("*.npy")) and not (voc / "cache").exists()  # nothing in the data


def test_build_refuses_to_replace_a_trained_detector(voc, trained, tmp_path, capsys):
    det = copy_of(trained, tmp_path)
    index = (det / "index.csv").read_bytes()
    argv = [
        "detect",
        "build",
        str(voc),
        "--out",
        str(det),
        "--workers",
        "1",
        "--ss-max-side",
        "0",
        "--seed",
        "1",
    ]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (det / "index.csv").read_bytes() == index and (det / "model.pt").exists()
    # A bad input with --overwrite: still nothing replaced.
    assert main(cli("detect", "build", tmp_path / "nothing", out=det, overwrite=True)) == 2
    assert (det / "index.csv").read_bytes() == index and (det / "model.pt").exists()
    assert main([*argv, "--overwrite"]) == 0
    assert (det / "index.csv").read_bytes() != index  # another seed, another split
    assert not (det / "model.pt").exists()  # trained on the old index: removed


def test_build_refuses_a_target_without_boxes(voc, tmp_path, capsys):
    out = tmp_path / "det"
    assert main(cli("detect", "build", voc, out=out, target="unicorn")) == 2
    assert "no 'unicorn' box" in capsys.readouterr().err
    assert not out.exists()


def test_bad_index_and_build_record_are_named(built, weights, tmp_path, capsys):
    det = copy_of(built, tmp_path)
    text = (det / "index.csv").read_text()
    argv = ["detect", "train", str(det), "--epochs", "1", "--backbone-weights", str(weights)]
    # Cut inside a row (the last row may still parse: its line break is what is missing).
    for cut in (len(text) // 2 - 7, len(text) // 2 - 3, text.index("\n") + 9):
        while text[cut - 1] == "\n":  # a cut right after a line break ends a whole row
            cut -= 1
        (det / "index.csv").write_text(text[:cut])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "index.csv" in err and "truncated" in err
    lines = text.splitlines(keepends=True)
    (det / "index.csv").write_text("".join(lines[:3]) + "a,b,c\n" + "".join(lines[3:]))
    assert main(argv) == 2
    assert "index.csv line 4: malformed row" in capsys.readouterr().err
    assert not (det / "model.pt").exists()
    (det / "index.csv").write_text(text)
    (det / "build.json").write_text('{"target": "cat", "proposals": {"mo')
    assert main(argv) == 2
    assert "build.json" in capsys.readouterr().err


# -- train -------------------------------------------------------------------------------
def test_trained_model_is_plain_data(trained):
    ck = torch.load(trained / "model.pt", weights_only=True)
    assert set(ck) == {"format", "config", "norm", "state"}
    cfg = DetectorConfig.from_dict(ck["config"], "model.pt")
    assert cfg.regressors.iou_predictor and cfg.features.fine_grid == 7
    s = ck["state"]
    # The regressors read the RoI grid 3 and the stride-16 7x7 grid; the head only the first.
    assert s["regressor.weight"].shape == (4, 1280 * 9 + 96 * 49)
    assert s["regressor2.weight"].shape == (4, 1280 * 9 + 96 * 49)  # later rounds' (IoU >= 0.5)
    assert s["head.1.weight"].shape == (256, 1280 * 9)
    assert s["iou_predictor.weight"].shape == (1, 1280 * 9 + 96 * 49)
    model = Detector.load(trained)
    assert model.regressor2 is not None and model.iou_predictor is not None
    # "auto" is made concrete on loading: rank, since this detector has an IoU predictor
    assert cfg.detection.iou_confidence == "auto"
    assert model.config == replace(cfg, detection=replace(cfg.detection, iou_confidence="rank"))
    train = json.loads((trained / "train.json").read_text())
    assert train["train_boxes"] > 0 and len(train["epochs"]) == 1


def test_model_file_that_is_not_plain_data_is_refused(trained, tmp_path, capsys):
    det = copy_of(trained, tmp_path)
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(det / "model.pt", "wb") as fh:
        pickle.dump({"format": Evil()}, fh)
    res = tmp_path / "res"
    argv = [
        "detect",
        "run",
        str(det / "samples_positives.png"),
        "--model",
        str(det),
        "--out",
        str(res),
    ]
    assert main(argv) == 2
    assert "model.pt" in capsys.readouterr().err and not marker.exists()
    (det / "model.pt").write_bytes((trained / "model.pt").read_bytes()[:1000])  # truncated
    assert main(argv) == 2
    assert "model.pt" in capsys.readouterr().err
    ck = torch.load(trained / "model.pt", weights_only=True)
    ck["config"]["features"]["old_setting"] = 1
    torch.save(ck, det / "model.pt")
    with pytest.raises(InputError, match="model.pt.*old_setting"):
        Detector.load(det)


@pytest.mark.slow
def test_show_writes_sample_grids(trained, tmp_path):
    det = copy_of(trained, tmp_path)
    assert main(cli("detect", "show", det)) == 0

    def cat_colour(name):  # the share of the grid's pixels in the drawn cats' orange
        rgb = np.asarray(Image.open(det / f"samples_{name}.png").convert("RGB")).astype(int)
        return (np.abs(rgb - [230, 120, 30]).max(2) < 40).mean()

    # positives are crops at IoU >= 0.5 with an orange cat box, negatives mostly not
    assert cat_colour("positives") > 0.05
    assert cat_colour("positives") > 3 * cat_colour("negatives")


def test_missing_weights_are_named(built, tmp_path, capsys):
    det = copy_of(built, tmp_path)
    assert main(cli("detect", "train", det, backbone_weights=tmp_path / "none.pth")) == 2
    assert "none.pth: no such weights file" in capsys.readouterr().err


def test_train_refuses_to_replace_without_overwrite(trained, weights, tmp_path, capsys):
    det = copy_of(trained, tmp_path)
    before = (det / "model.pt").read_bytes()
    assert main(cli("detect", "train", det, epochs=1, backbone_weights=weights)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (det / "model.pt").read_bytes() == before


# -- run -------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_writes_results_and_reports_failures(voc, trained, tmp_path, capsys):
    out = tmp_path / "dets"
    argv = [
        "detect",
        "run",
        str(voc / "img1.jpg"),
        str(voc / "corrupt.jpg"),
        "--model",
        str(trained),
        "--out",
        str(out),
        "--score-threshold",
        "0.0",
    ]
    assert main(argv) == 1  # one input failed
    captured = capsys.readouterr()
    assert "1 of 2 photos done, 1 failed" in captured.out and "corrupt.jpg" in captured.err
    rec = json.loads((out / "img1.json").read_text())
    assert rec["detections"] and (out / "img1.jpg").exists() and len(rec["detections"]) <= 10
    conf = [d["score"] for d in rec["detections"]]
    assert conf == sorted(conf, reverse=True) and all(0 <= c < 1 for c in conf)
    # The record holds what the trained detector finds on the photo, detected here in-process
    # with the same settings (rounded as the record rounds them).
    photo = load_rgb(voc / "img1.jpg")

    def detected(threshold):
        detector = Detector.load(trained)
        detector.set_detection(replace(detector.config.detection, score_threshold=threshold))
        r = detector.detect(photo)
        return [
            {"box": [round(float(v), 1) for v in b], "score": round(float(s), 4)}
            for b, s in zip(r.boxes, r.scores, strict=True)
        ]

    assert rec["image"] == str(voc / "img1.jpg") and rec["target"] == "cat"
    assert rec["detections"] == detected(0.0)
    # The annotated photo: the same size, and red (the detections' colour) on the left edge
    # of the best detection's box, where the photo itself has none.
    drawn = np.asarray(Image.open(out / "img1.jpg").convert("RGB")).astype(int)
    assert drawn.shape == photo.shape
    x1, y1, x2, y2 = (int(round(v)) for v in rec["detections"][0]["box"])
    edge = drawn[y1 + (y2 - y1) // 4 : y2 - (y2 - y1) // 4, min(x1 + 1, drawn.shape[1] - 1)]

    def red(px):
        return (px[:, 0] > 180) & (px[:, 1] < 110) & (px[:, 2] < 110)

    assert red(edge).mean() > 0.5 and red(photo.astype(int)).mean() < 0.01
    # An earlier run's results are kept unless --overwrite; two inputs with one stem refused.
    kept = (out / "img1.json").read_bytes(), (out / "img1.jpg").read_bytes()
    again = [
        "detect",
        "run",
        str(voc / "img1.jpg"),
        "--model",
        str(trained),
        "--out",
        str(out),
        "--score-threshold",
        "0.5",
    ]
    inode = (out / "img1.json").stat().st_ino
    assert main(again) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert ((out / "img1.json").read_bytes(), (out / "img1.jpg").read_bytes()) == kept
    assert main([*again, "--overwrite"]) == 0
    assert (out / "img1.json").stat().st_ino != inode  # written anew (temporary, then rename)
    # ... with --score-threshold 0.5's detections (the confidences reported are not the
    # thresholded probabilities: they come from box voting, so they are not compared to 0.5)
    assert json.loads((out / "img1.json").read_text())["detections"] == detected(0.5)
    assert (
        main(
            cli(
                "detect",
                "run",
                voc / "img1.jpg",
                trained / "img1.jpg",
                model=trained,
                out=tmp_path / "same",
            )
        )
        == 2
    )
    assert "different --out" in capsys.readouterr().err


# -- eval ------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_keeps_one_record_per_folder_and_reuses_only_a_match(
    voc, small, trained, tmp_path, capsys
):
    det = copy_of(trained, tmp_path)
    assert main(cli("detect", "eval", voc, model=det, json=True)) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert "malformed XML" in cap.err  # the input problems are printed
    assert res["images"] == 14 and res["gt_boxes"] == 13
    for k in ("ap50", "ap75", "map", "precision", "recall", "proposal_recall50"):
        assert 0 <= res[k] <= 1
    assert res["seconds_per_image"] > 0
    assert main(cli("detect", "eval", small, model=det, json=True)) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    recs = sorted((det / "evals").glob("*.json"))
    assert len(recs) == 2 and len(list((det / "evals").glob("*.md"))) == 2
    first = next(r for r in recs if r.name.startswith("voc"))
    fp = json.loads(first.read_text())["fingerprint"]
    assert fp["voc_dir"] == str(voc.resolve()) and len(fp["model_sha256"]) == 64
    # Same model, files and settings: reused. Another setting, a changed file, another
    # model: measured again.
    assert main(cli("detect", "eval", voc, model=det)) == 0
    assert "reusing" in capsys.readouterr().err
    nms = ["detect", "eval", str(small), "--model", str(det), "--nms-iou", "0.5"]
    assert main(nms) == 0
    assert "reusing" not in capsys.readouterr().err
    assert main(nms) == 0
    assert "reusing" in capsys.readouterr().err
    os.utime(small / "img2.jpg", ns=(1, 1))
    assert main(nms) == 0
    assert "reusing" not in capsys.readouterr().err
    ck = torch.load(det / "model.pt", weights_only=True)
    ck["state"]["head.4.bias"] += 1
    torch.save(ck, det / "model.pt")
    assert main(nms) == 0
    assert "reusing" not in capsys.readouterr().err


def test_course_preset_detection_settings(small, trained, tmp_path, capsys):
    """Every proposal, every box above the threshold, no NMS; a flag given wins over the
    preset (it sets only the flags not given)."""
    det = copy_of(trained, tmp_path)
    assert (
        main(cli("detect", "eval", small, model=det, json=True, preset="course", max_proposals=50))
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["settings"]["nms_iou"] == 1.0 and res["settings"]["vote_iou"] == 0.0
    assert res["settings"]["max_proposals"] == 50 and res["settings"]["refine_steps"] == 0


@pytest.mark.slow
def test_course_preset_and_end_to_end(small, weights, tmp_path):
    det = tmp_path / "det"
    assert (
        main(
            cli(
                "detect",
                "build",
                small,
                out=det,
                workers=1,
                ss_max_side=0,
                max_neg_per_image=4,
                pos_iou=0.8,
            )
        )
        == 0
    )
    # The course project's classifier: 224x224 crops, pooled 1280-d features, no regressor.
    assert (
        main(cli("detect", "train", det, epochs=1, backbone_weights=weights, preset="course")) == 0
    )
    ck = torch.load(det / "model.pt", weights_only=True)
    assert ck["config"]["features"]["mode"] == "crops" and "regressor.weight" not in ck["state"]
    assert ck["state"]["head.1.weight"].shape == (256, 1280)
    orig = torch.load(weights, weights_only=True)  # the course's backbone stays frozen
    assert all(torch.equal(ck["state"][k], orig[k]) for k in orig if k.startswith("features."))
    assert json.loads((det / "train.json").read_text())["train_config"]["end_to_end"] is False
    # The defaults: end to end, the backbone's blocks from 7 on move, 0-6 stay as loaded.
    end_to_end = dict(
        epochs=1,
        backbone_weights=weights,
        image_size=128,
        backbone_lr=0.01,
        overwrite=True,
    )
    assert main(cli("detect", "train", det, **end_to_end)) == 0
    ck = torch.load(det / "model.pt", weights_only=True)
    early = [k for k in orig if k.startswith("features.") and int(k.split(".")[1]) < 7]
    assert early and all(torch.equal(ck["state"][k], orig[k]) for k in early)
    assert not torch.equal(ck["state"]["features.18.0.weight"], orig["features.18.0.weight"])
    assert not torch.equal(
        ck["state"]["features.7.conv.0.0.weight"], orig["features.7.conv.0.0.weight"]
    )
    recorded = json.loads((det / "train.json").read_text())["train_config"]
    assert (recorded["end_to_end"], recorded["backbone_from"]) == (True, 7)
    # --backbone-from 17: blocks 17 and 18 move, blocks 0-16 stay as loaded.
    assert main(cli("detect", "train", det, **end_to_end, backbone_from=17)) == 0
    ck = torch.load(det / "model.pt", weights_only=True)
    frozen = [k for k in orig if k.startswith("features.") and int(k.split(".")[1]) < 17]
    assert frozen and all(torch.equal(ck["state"][k], orig[k]) for k in frozen)
    assert not torch.equal(ck["state"]["features.18.0.weight"], orig["features.18.0.weight"])
    assert not torch.equal(
        ck["state"]["features.17.conv.0.0.weight"], orig["features.17.conv.0.0.weight"]
    )
    # --box-loss: the box loss reaches the backbone (the box layer starts at zero and draws
    # no random numbers, so only the loss differs from the run above), and it is recorded.
    assert main(cli("detect", "train", det, **end_to_end, backbone_from=17, box_loss=1.0)) == 0
    boxed = torch.load(det / "model.pt", weights_only=True)
    assert all(torch.equal(boxed["state"][k], orig[k]) for k in frozen)
    assert not torch.equal(
        boxed["state"]["features.18.0.weight"], ck["state"]["features.18.0.weight"]
    )
    assert json.loads((det / "train.json").read_text())["train_config"]["box_loss"] == 1.0


# -- features --------------------------------------------------------------------------
def test_crop_features_match_one_crop_at_a_time(weights):
    """Batched crop features (mode "crops") equal a crop-by-crop loop; RoI features of a box
    do not depend on which other boxes share the call."""
    from torchvision.models import mobilenet_v2

    from dnnlab.detect.features import crop_batch

    m = mobilenet_v2(num_classes=1001)
    m.load_state_dict(torch.load(weights, weights_only=True))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 60, 50], [30, 20, 119, 89], [10, 40, 50, 80]], np.float32)
    crops = DetectorConfig(
        features=FeatureSpec("crops", 1, 0.1, crop_size=64), detection=DetectionConfig(batch=2)
    )
    model = Detector(crops, m.features, NORM).eval()
    with torch.no_grad():
        batched = model.embed(img, boxes)
        for i, b in enumerate(boxes):
            crop = crop_batch(img, b[None], 64, 0.1)
            one = m.features((crop - 0.5) / 0.5).mean((2, 3))
            assert torch.allclose(batched[i], one[0], atol=1e-4)
        roi = Detector(DetectorConfig(features=FeatureSpec(image_size=96)), m.features, NORM)
        all3 = roi.eval().embed(img, boxes)
        assert all3.shape == (3, 1280 * 9 + 96 * 49)
        assert torch.allclose(roi.embed(img, boxes[1:2])[0], all3[1], atol=1e-5)


def test_fine_grid_features_against_direct_roi_align(weights):
    """The regressors' extra part is the box (padded by the context) RoIAligned on the
    output of features[13] at stride 16, scaled; the head's part is unchanged by it."""
    from torchvision.models import mobilenet_v2
    from torchvision.ops import roi_align

    from dnnlab.detect.features import FINE_SCALE

    m = mobilenet_v2(num_classes=1001)
    m.load_state_dict(torch.load(weights, weights_only=True))
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    boxes = np.array([[8, 8, 72, 100], [40, 30, 127, 90]], np.float32)

    def detector(fine):
        cfg = DetectorConfig(features=FeatureSpec(image_size=128, fine_grid=fine))
        return Detector(cfg, m.features, NORM).eval()

    with torch.no_grad():
        x = detector(5).embed(img, boxes)
        assert x.shape == (2, 1280 * 9 + 96 * 25)
        assert torch.allclose(x[:, : 1280 * 9], detector(0).embed(img, boxes), atol=1e-5)
        t = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
        mid = m.features[:14](t)  # 8 x 8 at 128 px: stride 16
        b = torch.from_numpy(boxes)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        pad = torch.stack(
            [b[:, 0] - 0.2 * w, b[:, 1] - 0.2 * h, b[:, 2] + 0.2 * w, b[:, 3] + 0.2 * h], 1
        ).clamp(0, 128)
        want = roi_align(mid, [pad], 5, 1 / 16, 2, True).flatten(1) * FINE_SCALE
        assert torch.allclose(x[:, 1280 * 9 :], want, atol=1e-4)


def test_selective_search_is_reproducible():
    """OpenCV ranks regions with std::rand(): the same photo must give the same list."""
    from dnnlab.detect.config import ProposalConfig
    from dnnlab.detect.proposals import propose

    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    img[20:70, 30:90] = (200, 120, 40)
    a = propose(img, ProposalConfig(max_side=0))
    rng.random(5)  # other random work in between must not matter
    b = propose(img, ProposalConfig(max_side=0))
    assert len(a) > 10 and np.array_equal(a, b)


def test_train_line_names_only_the_stages_that_ran():
    # `detect train`'s line: each stage's time under its own name; without box regression
    # no "box regressors" time (it used to print the mirrored rows' embedding under it).
    base = {"best_val_acc": 0.9, "val_boxes": 10, "feature_seconds": 1.0, "head_seconds": 2.0}
    line = train_summary({**base, "mirror_seconds": 3.0, "iou_predictor_seconds": 4.0})
    assert line == (
        "trained: best val acc 0.9000 on 10 boxes; features 1.0 s, head 2.0 s, "
        "mirrored rows 3.0 s, IoU predictor 4.0 s"
    )
    assert "box regressors 5.0 s" in train_summary({**base, "regressor_seconds": 5.0})
    # Fine-tuned end to end (the default): that stage under its own name, before the
    # features computed on the tuned backbone.
    tuned = {"best_val_acc": 0.9, "val_boxes": 10, "fine_tune_seconds": 7.0, "feature_seconds": 1.0}
    assert train_summary(tuned).endswith("; head and backbone fine-tuned 7.0 s, features 1.0 s")


@pytest.mark.slow
def test_an_interrupted_fine_tuning_goes_on_from_its_last_epoch(
    small, weights, tmp_path, monkeypatch, capsys
):
    """detect train's default fine-tuning saves each epoch in DIR/fine_tune.pt: a command
    killed after epoch 1 of 2 goes on from there in the next one, and its model.pt is the
    uninterrupted command's, bit for bit. A checkpoint of other settings is not resumed,
    one that is not a checkpoint is refused by name, and a finished command deletes it."""
    import dnnlab.detect.train as T

    first = tmp_path / "first"
    argv = ["--workers", "1", "--ss-max-side", "0", "--max-neg-per-image", "4", "--pos-iou", "0.8"]
    assert main(["detect", "build", str(small), "--out", str(first), *argv]) == 0
    for name in ("whole", "cut", "other"):
        shutil.copytree(first, tmp_path / name)
    settings = dict(epochs=2, backbone_weights=weights, image_size=128, backbone_lr=0.01)
    settings.update(backbone_from=17, box_loss=1.0)  # the box layer is saved and restored too

    def train(det, **kw):
        assert main(cli("detect", "train", det, **{**settings, **kw})) == 0
        return json.loads((det / "train.json").read_text())

    uninterrupted = train(tmp_path / "whole")
    assert uninterrupted["fine_tune_resumed_epochs"] == 0
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state"]
    real = T.atomic_torch_save

    def killed_after_saving(obj, path):
        real(obj, path)
        if Path(path).name == "fine_tune.pt":
            raise KeyboardInterrupt  # as a kill at the end of epoch 1

    monkeypatch.setattr(T, "atomic_torch_save", killed_after_saving)
    for name in ("cut", "other"):
        assert main(cli("detect", "train", tmp_path / name, **settings)) == 130  # interrupted
        assert (tmp_path / name / "fine_tune.pt").exists()
        assert not (tmp_path / name / "model.pt").exists()
    monkeypatch.undo()
    got = train(tmp_path / "cut")
    assert got["fine_tune_resumed_epochs"] == 1 and len(got["epochs"]) == 2
    assert got["epochs"] == uninterrupted["epochs"]  # epoch 2's losses too, not only the best
    cut = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state"]
    assert cut.keys() == whole.keys() and all(torch.equal(cut[k], whole[k]) for k in whole)
    assert not (tmp_path / "cut" / "fine_tune.pt").exists()
    # Other settings (another learning rate): not resumed, the fine-tuning starts over.
    assert train(tmp_path / "other", backbone_lr=0.02)["fine_tune_resumed_epochs"] == 0
    # Not a checkpoint: refused, naming it and how to start over; the file is kept.
    (first / "fine_tune.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(cli("detect", "train", first, **settings)) == 2
    err = capsys.readouterr().err
    assert str(first / "fine_tune.pt") in err and "delete it to start the fine-tuning over" in err
    assert (first / "fine_tune.pt").read_bytes() == b"not a checkpoint"
