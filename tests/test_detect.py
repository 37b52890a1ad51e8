import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou, nms

from dnnlab.cli import main
from dnnlab.detect.labelling import label_proposals
from dnnlab.detect.train import load_detector
from dnnlab.detect.voc import Problems, read_voc_dir

XML = """<annotation><filename>{fn}</filename><size><width>{w}</width><height>{h}</height>
<depth>3</depth></size>{objs}</annotation>"""
OBJ = ("<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
       "<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def write_item(folder, stem, boxes, size=(160, 120), ext="jpg", rng=None, mode="RGB"):
    w, h = size
    rng = rng or np.random.default_rng(0)
    img = (rng.normal(90, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)
    for name, (x1, y1, x2, y2) in boxes:
        color = (230, 120, 30) if name == "cat" else (40, 90, 220)
        img[int(max(y1, 0)):int(y2), int(max(x1, 0)):int(x2)] = color
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
        write_item(d, f"img{i}", boxes, ext="png" if i == 3 else "jpg", rng=rng,
                   mode="L" if i == 5 else ("RGBA" if i == 3 else "RGB"))
    write_item(d, "empty", [], rng=rng)                          # no target object
    write_item(d, "outside", [("cat", (100, 60, 200, 140))], rng=rng)  # clipped
    write_item(d, "zero", [("cat", (50, 50, 50, 80)), ("cat", (10, 10, 60, 60))], rng=rng)
    (d / "broken.xml").write_text("<annotation><filename>x.jpg</filename")  # malformed
    (d / "orphan.xml").write_text(XML.format(fn="nothere.jpg", w=10, h=10, objs=""))
    (d / "corrupt.jpg").write_bytes(b"not an image")
    (d / "corrupt.xml").write_text(XML.format(fn="corrupt.jpg", w=10, h=10, objs=""))
    return d


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "mnv2_random_1001.pth"
    torch.save(mobilenet_v2(num_classes=1001).state_dict(), p)
    return p


def test_iou_hand_cases():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]])
    # overlap 50 / union 150; identical; disjoint; contained quarter
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 3, 1.0, 0.0, 0.25]]))


def test_labelling_bands_and_gt_added():
    gt = np.array([[0, 0, 10, 10]], dtype=np.float32)
    props = np.array([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 5], [0, 0, 10, 2],
                      [50, 50, 60, 60], [0, 0, 1, 1]], dtype=np.float32)  # IoU 1, .8, .5, .2, 0
    boxes, labels, ious, match = label_proposals(props, gt, pos_iou=0.7, neg_iou=0.3, min_area=2)
    # 1.0 and 0.8 positive; 0.5 in the band (dropped); 0.2 and 0 negative; tiny box dropped
    assert labels.tolist() == [1, 1, 0, 0, 1] and np.allclose(ious[:4], [1, 0.8, 0.2, 0])
    assert np.allclose(boxes[-1], gt[0])  # the ground-truth box itself, added
    _, l2, _, _ = label_proposals(props, np.zeros((0, 4)), 0.5, 0.5)
    assert (l2 == 0).all()


def test_nms_behaviour():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
    keep = nms(boxes, torch.tensor([0.9, 0.95, 0.5]), iou_threshold=0.3)
    assert keep.tolist() == [1, 2]  # the lower-scored overlapping box is suppressed


def test_box_voting_hand_case_and_loop_oracle():
    from dnnlab.detect.detect import confidence, vote

    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 40], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.6, 0.8, 0.99])
    # box 1 overlaps box 0 at IoU 80/120, box 2 at 100/400 (below 0.5), box 3 not at all
    voted, support = vote(boxes[[0, 3]], boxes, scores, 0.5)
    assert torch.allclose(voted[0], torch.tensor([0.6 * 2 / 1.5, 0, 10 + 0.6 * 2 / 1.5, 10]))
    assert torch.allclose(voted[1], boxes[3]) and torch.allclose(support, torch.tensor([1.5, 0.99]))
    # Five agreeing boxes outrank one lone box that the classifier likes more.
    assert confidence(support, 10.0)[0] > confidence(support, 10.0)[1]
    # Against a float64 loop on random boxes.
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


def test_coarse_and_fine_regressors_fit_their_rows():
    from dnnlab.detect.boxreg import box_deltas, fit_ridge
    from dnnlab.detect.train import DetTrainConfig, _fit_regressors

    g = torch.Generator().manual_seed(0)
    n = 40
    feats = torch.randn(n, 12, generator=g)
    ious = torch.linspace(0.0, 0.95, n)
    rows = []
    for k in range(n):
        x0, y0 = float(k), float(2 * k)
        gt = [x0 + 1, y0 - 2, x0 + 24 + 3 * float(feats[k, 0]) + k % 3, y0 + 27]
        rows.append({"box": [x0, y0, x0 + 20, y0 + 30], "iou": float(ious[k]),
                     "gt": None if k % 7 == 0 else gt})  # fmt: skip
    idx = torch.arange(n - 5)  # rows outside idx must not enter either fit

    def oracle(lo):
        use = [k for k in idx.tolist() if rows[k]["gt"] is not None and rows[k]["iou"] >= lo]
        props = torch.tensor([rows[k]["box"] for k in use])
        gt = torch.tensor([rows[k]["gt"] for k in use])
        return fit_ridge(feats[use], box_deltas(props, gt), 1.0)

    first, later = _fit_regressors(feats, rows, idx, DetTrainConfig(reg_lambda=1.0))
    for got, lo in ((first, 0.3), (later, 0.5)):
        want = oracle(lo)
        assert torch.allclose(got.weight, want.weight) and torch.allclose(got.bias, want.bias)
    assert not torch.allclose(first.weight, later.weight)
    cfg = DetTrainConfig(reg_lambda=1.0, coarse_min_iou=None)
    one, none = _fit_regressors(feats, rows, idx, cfg)
    assert none is None and torch.allclose(one.weight, later.weight)


def test_cascade_regressor_serves_later_rounds():
    from torch import nn

    from dnnlab.detect.classifier import BoxClassifier, BoxFeatures

    def shift(dx):
        reg = nn.Linear(1280, 4)
        nn.init.zeros_(reg.weight)
        with torch.no_grad():
            reg.bias.copy_(torch.tensor([dx, 0.0, 0.0, 0.0]))
        return reg

    m = BoxClassifier(nn.Identity(), ((0.5,) * 3, (0.5,) * 3), BoxFeatures(grid=1),
                      regressor=shift(0.1), regressor2=shift(-0.1))  # fmt: skip
    box, x = torch.tensor([[10.0, 10, 30, 30]]), torch.zeros(1, 1280)
    assert m.refine(x, box, 100, 100, 0)[0, 0].item() == pytest.approx(12.0)  # first regressor
    assert m.refine(x, box, 100, 100, 1)[0, 0].item() == pytest.approx(8.0)  # the second
    m.regressor2 = None
    assert m.refine(x, box, 100, 100, 1)[0, 0].item() == pytest.approx(12.0)


def test_voc_problems_are_counted_not_fatal(voc):
    probs = Problems()
    items = read_voc_dir(voc, probs)
    c = probs.counts
    assert c["malformed XML"] == 1 and c["XML without its image"] == 1
    assert c["unreadable image"] == 1 and c["box of zero area (dropped)"] == 1
    assert c["box outside the image (clipped)"] == 1
    assert c["image without a 'cat' object (all proposals negative)"] == 1
    assert len(items) == 15
    out = next(i for i in items if i.image.stem == "outside")
    assert out.objects[0].box == (100.0, 60.0, 160.0, 120.0)
    img0 = next(i for i in items if i.image.stem == "img0")
    assert img0.objects[0].box[0] % 1 == 0.5  # float coordinates kept
    assert [o.name for o in img0.objects] == ["cat", "dog"]
    assert next(i for i in items if i.image.stem == "img3").image.suffix == ".png"


def test_build_train_run_eval(voc, weights, tmp_path, capsys):
    before = sorted(p.name for p in voc.iterdir())
    det = tmp_path / "det"
    assert main(["detect", "build", str(voc), "--out", str(det), "--workers", "1",
                 "--ss-max-side", "0"]) == 0  # fmt: skip
    assert "malformed XML" in capsys.readouterr().out
    info = json.loads((det / "build.json").read_text())
    assert info["images"] == 15 and info["proposal_recall"]["recall50"] > 0.5
    lines = (det / "index.csv").read_text().splitlines()
    assert lines[0] == "image,x1,y1,x2,y2,label,iou,split,gx1,gy1,gx2,gy2"
    imgs = {}
    for line in lines[1:]:
        f = line.split(",")
        imgs.setdefault(f[0], set()).add(f[7])
    assert all(len(s) == 1 for s in imgs.values())  # split by image, never by crop
    assert main(["detect", "train", str(det), "--epochs", "1", "--backbone-weights",
                 str(weights), "--image-size", "160", "--cascade"]) == 0  # fmt: skip
    assert (det / "model.pt").exists() and (det / "train.json").exists()
    ck = torch.load(det / "model.pt", weights_only=False)
    # The regressors read the RoI grid 3 and the stride-16 7x7 grid; the head only the first.
    assert ck["model"]["regressor.weight"].shape == (4, 1280 * 9 + 96 * 49)
    assert ck["model"]["regressor2.weight"].shape == (4, 1280 * 9 + 96 * 49)  # the cascade's
    assert ck["model"]["head.1.weight"].shape == (256, 1280 * 9)
    assert main(["detect", "show", str(det)]) == 0
    assert (det / "samples_positives.png").exists()
    out = tmp_path / "dets"
    assert main(["detect", "run", str(voc / "img1.jpg"), str(voc / "corrupt.jpg"), "--model",
                 str(det), "--out", str(out), "--score-threshold", "0.0"]) == 0  # fmt: skip
    rec = json.loads((out / "img1.json").read_text())
    assert rec["detections"] and (out / "img1.jpg").exists()
    assert len(rec["detections"]) <= 10
    conf = [d["score"] for d in rec["detections"]]
    assert conf == sorted(conf, reverse=True) and all(0 <= c < 1 for c in conf)
    # An earlier run's results are kept unless --overwrite; two inputs with one stem refused.
    capsys.readouterr()
    kept = (out / "img1.json").read_bytes(), (out / "img1.jpg").read_bytes()
    again = ["detect", "run", str(voc / "img1.jpg"), "--model", str(det), "--out", str(out),
             "--score-threshold", "0.5"]  # fmt: skip
    inode = (out / "img1.json").stat().st_ino
    assert main(again) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert ((out / "img1.json").read_bytes(), (out / "img1.jpg").read_bytes()) == kept
    assert (out / "img1.json").stat().st_ino == inode
    assert main([*again, "--overwrite"]) == 0
    assert (out / "img1.json").stat().st_ino != inode  # written anew (temporary, then rename)
    assert main(["detect", "run", str(voc / "img1.jpg"), str(det / "img1.jpg"), "--model",
                 str(det), "--out", str(tmp_path / "same")]) == 2  # fmt: skip
    assert "different --out" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["detect", "eval", str(voc), "--model", str(det), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for k in ("ap50", "map", "precision", "recall", "proposal_recall50", "seconds_per_image"):
        assert k in res and res[k] == res[k]  # present, not NaN
    assert (det / "eval.json").exists() and (det / "eval.md").exists()
    # Without the fine grid, and a model.pt from before it existed (no fine_grid in its config).
    assert main(["detect", "train", str(det), "--epochs", "1", "--backbone-weights",
                 str(weights), "--image-size", "160", "--fine-grid", "0", "--overwrite"]) == 0
    ck = torch.load(det / "model.pt", weights_only=False)
    assert ck["model"]["regressor.weight"].shape == (4, 1280 * 9)
    del ck["config"]["fine_grid"]
    torch.save(ck, det / "model.pt")
    model, _ = load_detector(det)
    assert model.spec.fine_grid == 0 and model.spec.dim == 1280 * 9
    assert main(["detect", "run", str(voc / "img1.jpg"), "--model", str(det), "--out",
                 str(tmp_path / "dets0")]) == 0  # fmt: skip
    assert sorted(p.name for p in voc.iterdir()) == before  # nothing written into the data


def test_seed_settings_and_end_to_end(voc, weights, tmp_path, capsys):
    det = tmp_path / "det"
    assert main(["detect", "build", str(voc), "--out", str(det), "--workers", "1",
                 "--ss-max-side", "0"]) == 0  # fmt: skip
    # The seed's classifier: 224x224 crops, pooled 1280-d features, no box regressor.
    assert main(["detect", "train", str(det), "--epochs", "1", "--backbone-weights",
                 str(weights), "--seed-settings"]) == 0  # fmt: skip
    ck = torch.load(det / "model.pt", weights_only=False)
    assert ck["config"]["features"] == "crops" and "regressor.weight" not in ck["model"]
    assert ck["model"]["head.1.weight"].shape == (256, 1280)
    capsys.readouterr()
    assert main(["detect", "eval", str(voc), "--model", str(det), "--json", "--seed-settings",
                 "--score-threshold", "0.0"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert res["settings"]["nms_iou"] == 1.0  # the seed drew every box: no NMS
    # End to end: the backbone's weights move too. A trained model is never replaced
    # without --overwrite.
    again = ["detect", "train", str(det), "--epochs", "1", "--backbone-weights", str(weights),
             "--image-size", "128", "--end-to-end", "--backbone-lr", "0.01"]  # fmt: skip
    before = (det / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(again) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (det / "model.pt").read_bytes() == before
    assert main([*again, "--overwrite"]) == 0
    ck = torch.load(det / "model.pt", weights_only=False)
    orig = torch.load(weights, weights_only=True)
    assert ck["config"]["end_to_end"]
    assert not torch.equal(ck["model"]["features.18.0.weight"], orig["features.18.0.weight"])


def test_missing_weights_message(tmp_path, voc, capsys):
    assert main(["detect", "train", str(tmp_path), "--backbone-weights",
                 str(tmp_path / "none.pth")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "build.json" in err or "no such weights file" in err


def test_box_deltas_round_trip_and_ridge_against_lstsq():
    from dnnlab.detect.boxreg import apply_deltas, box_deltas, fit_ridge

    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, 2, generator=g) * 100 + 20  # inside the image after the noise
    p = torch.cat([p, p + 10 + torch.rand(50, 2, generator=g) * 80], 1)
    gt = p + torch.randn(50, 4, generator=g) * 3
    back = apply_deltas(p, box_deltas(p, gt), 1000, 1000)
    assert torch.allclose(back, gt, atol=1e-3)
    # The dual-form ridge equals the textbook primal solution (float64 numpy, centred).
    x = torch.randn(30, 80, generator=g)
    t = torch.randn(30, 4, generator=g)
    lam = 2.5
    layer = fit_ridge(x, t, lam)
    xn, tn = x.double().numpy(), t.double().numpy()
    xc = xn - xn.mean(0)
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(80), xc.T @ (tn - tn.mean(0)))
    b = tn.mean(0) - xn.mean(0) @ w
    assert np.allclose(layer.weight.detach().numpy().T, w, atol=1e-4)
    assert np.allclose(layer(x).detach().numpy(), xn @ w + b, atol=1e-4)
    with pytest.raises(ValueError, match="nothing to fit"):
        fit_ridge(torch.zeros(0, 80), torch.zeros(0, 4), 1.0)


def test_crop_features_match_one_crop_at_a_time(weights):
    """Batched crop features (mode "crops") equal the seed's crop-by-crop loop; RoI features
    of a box do not depend on which other boxes share the call."""
    from torchvision.models import mobilenet_v2

    from dnnlab.detect.classifier import BoxClassifier, BoxFeatures, CropSpec, crop_batch

    m = mobilenet_v2(num_classes=1001)
    m.load_state_dict(torch.load(weights, weights_only=True))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 60, 50], [30, 20, 119, 89], [10, 40, 50, 80]], np.float32)
    model = BoxClassifier(m.features, ((0.5,) * 3, (0.5,) * 3),
                          BoxFeatures("crops", 1, 0.1, crop_size=64)).eval()  # fmt: skip
    with torch.no_grad():
        batched = model.embed(img, boxes, batch=2)
        for i, b in enumerate(boxes):
            crop = crop_batch(img, b[None], CropSpec(64, 0.1))
            one = m.features((crop - 0.5) / 0.5).mean((2, 3))
            assert torch.allclose(batched[i], one[0], atol=1e-4)
        roi = BoxClassifier(m.features, ((0.5,) * 3, (0.5,) * 3), BoxFeatures(image_size=96))
        roi.eval()
        all3 = roi.embed(img, boxes)
        assert all3.shape == (3, 1280 * 9 + 96 * 49)
        assert torch.allclose(roi.embed(img, boxes[1:2])[0], all3[1], atol=1e-5)


def test_fine_grid_features_against_direct_roi_align(weights):
    """The regressors' extra part is the box (padded by the context) RoIAligned on the
    output of features[13] at stride 16, scaled; the head's part is unchanged by it."""
    from torchvision.models import mobilenet_v2
    from torchvision.ops import roi_align

    from dnnlab.detect.classifier import FINE_SCALE, BoxClassifier, BoxFeatures

    m = mobilenet_v2(num_classes=1001)
    m.load_state_dict(torch.load(weights, weights_only=True))
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    boxes = np.array([[8, 8, 72, 100], [40, 30, 127, 90]], np.float32)
    norm = ((0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        x = BoxClassifier(m.features, norm, BoxFeatures(image_size=128, fine_grid=5)).eval()
        x = x.embed(img, boxes)
        plain = BoxClassifier(m.features, norm, BoxFeatures(image_size=128, fine_grid=0)).eval()
        assert x.shape == (2, 1280 * 9 + 96 * 25)
        assert torch.allclose(x[:, : 1280 * 9], plain.embed(img, boxes), atol=1e-5)
        t = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
        mid = m.features[:14](t)  # 8 x 8 at 128 px: stride 16
        b = torch.from_numpy(boxes)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        pad = torch.stack([b[:, 0] - 0.2 * w, b[:, 1] - 0.2 * h, b[:, 2] + 0.2 * w,
                           b[:, 3] + 0.2 * h], 1).clamp(0, 128)  # fmt: skip
        want = roi_align(mid, [pad], 5, 1 / 16, 2, True).flatten(1) * FINE_SCALE
        assert torch.allclose(x[:, 1280 * 9 :], want, atol=1e-4)


def test_selective_search_is_reproducible():
    """OpenCV ranks regions with std::rand(): the same photo must give the same list."""
    from dnnlab.detect.proposals import ProposalConfig, propose

    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    img[20:70, 30:90] = (200, 120, 40)
    a = propose(img, ProposalConfig(max_side=None))
    rng.random(5)  # other random work in between must not matter
    b = propose(img, ProposalConfig(max_side=None))
    assert len(a) > 10 and np.array_equal(a, b)
