"""`dnnlab detect train`: the head on cached backbone features (or end to end).

The backbone is frozen and boxes are not augmented, so each box's features are computed once
(cached per image, so an interrupted extraction resumes) and the head trains on the cache:
the same optimization as the seed's, far faster. `end_to_end` trains the backbone too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from dnnlab.detect.build import build_info, read_index
from dnnlab.detect.classifier import BoxClassifier, BoxFeatures, load_backbone, make_head
from dnnlab.detect.voc import load_rgb
from dnnlab.utils.atomic import atomic_savefig, atomic_torch_save, atomic_write_json


@dataclass
class DetTrainConfig:
    """The seed's head recipe (Adam 0.005, StepLR(3, 0.3), 10 epochs, batch 32, negatives
    subsampled 1:1) on RoI-grid features, with R-CNN's box regression on top."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.005
    step_size: int = 3
    gamma: float = 0.3
    balance: str = "ratio"  # "ratio": subsample negatives to neg_ratio x positives; "weights"
    neg_ratio: float = 1.0
    features: str = "roi"  # "roi": one backbone pass per photo; "crops": the seed's
    grid: int = 3
    context: float = 0.2
    image_size: int = 640
    crop_size: int = 224
    # The regressors also read the box on the stride-16 map, fine_grid x fine_grid cells (0:
    # only the head's 3x3 grid on the stride-32 map). 5-fold mAP 0.269 -> 0.307 and 0.267 ->
    # 0.314 for two seeds, AP50 0.819 -> 0.814 and 0.771 -> 0.804 (benchmarks/cv_detect.py).
    fine_grid: int = 7
    box_regression: bool = True
    reg_lambda: float = 1000.0
    reg_min_iou: float = 0.5
    # The first round gets its own regressor, fitted on rows down to IoU 0.3 (a cat's head,
    # half a cat): those are the boxes it must move furthest, and R-CNN's IoU >= 0.5 rows
    # teach it only small corrections. Later rounds use the IoU >= reg_min_iou one.
    # None: one regressor for every round (R-CNN's). docs/RESULTS.md has the measurements.
    coarse_min_iou: float | None = 0.3
    # The later rounds' regressor fitted on boxes the first one has moved (cascade) instead.
    # Off by default: measured only against R-CNN's one regressor (5-fold AP50 0.790 ->
    # 0.835 in a prototype, no change on valid) for 39 s more training (docs/RESULTS.md).
    cascade: bool = False
    end_to_end: bool = False  # also train the backbone (on crops or RoIs of the photos)
    backbone_lr: float = 1e-4
    backbone_weights: str | None = None
    seed: int = 0
    device: str = "cpu"
    embed_batch: int = 16  # MobileNetV2 on a CPU: 16 crops a batch beat 64 (cache-sized)

    def spec(self) -> BoxFeatures:
        return BoxFeatures(self.features, self.grid, self.context, self.image_size,
                           self.crop_size, self.fine_grid)  # fmt: skip


SEED_TRAIN = dict(features="crops", grid=1, context=0.0, box_regression=False, cascade=False,
                  fine_grid=0)


def _feature_key(cfg: DetTrainConfig) -> str:
    w = cfg.backbone_weights
    stamp = [str(Path(w).resolve()), Path(w).stat().st_size] if w else ["torchvision"]
    return hashlib.sha256(json.dumps([stamp, asdict(cfg.spec())]).encode()).hexdigest()[:12]


@torch.no_grad()
def embed_index(model: BoxClassifier, rows, cfg: DetTrainConfig, cache: Path | None,
                progress=True) -> torch.Tensor:  # fmt: skip
    """Features of every index row, computed per image; cached per image when cache is given."""
    from tqdm.auto import tqdm

    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_image.setdefault(r["image"], []).append(i)
    feats = torch.empty(len(rows), model.spec.dim)
    model.eval()
    for image, idx in tqdm(by_image.items(), desc="backbone features", unit="img",
                           disable=not progress):  # fmt: skip
        boxes = np.array([rows[i]["box"] for i in idx], dtype=np.float32)
        f = None
        if cache is not None:
            key = hashlib.sha256((image + boxes.tobytes().hex()).encode()).hexdigest()[:20]
            f = cache / f"{key}.pt"
            if f.exists():
                feats[idx] = torch.load(f, weights_only=True).float()
                continue
        out = model.embed(load_rgb(Path(image)), boxes, cfg.embed_batch).cpu()
        if f is not None:
            out = out.half()  # half: the grid features are wide
            atomic_torch_save(out, f)
        # The same values whether they came from the cache or not: a rerun trains alike.
        feats[idx] = out.float()
    return feats


def _balanced(labels: torch.Tensor, cfg: DetTrainConfig, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions to train on, class weights)."""
    pos = (labels == 1).nonzero().squeeze(1)
    neg = (labels == 0).nonzero().squeeze(1)
    if cfg.balance == "ratio":
        k = min(len(neg), int(round(cfg.neg_ratio * len(pos))))
        neg = neg[torch.randperm(len(neg), generator=gen)[:k]]
        return torch.cat([pos, neg]).sort().values, torch.ones(2)
    if cfg.balance == "weights":
        n = len(labels)
        w = torch.tensor([n / (2 * max(len(neg), 1)), n / (2 * max(len(pos), 1))])
        return torch.arange(n), w
    raise ValueError(f"unknown balance {cfg.balance!r}; 'ratio' or 'weights'")


def _accuracy(head, x, y):
    head.eval()
    with torch.no_grad():
        logits = head(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _train_head(head, xtr, ytr, xva, yva, weights, cfg: DetTrainConfig, gen):
    """The seed's loop on cached features; returns (history, best head state)."""
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    hist, best, best_state = [], -1.0, None
    for epoch in range(cfg.epochs):
        head.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            loss = F.cross_entropy(head(xtr[b]), ytr[b], weight=weights.to(xtr.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        tl, ta = _accuracy(head, xtr, ytr)
        vl, vacc = _accuracy(head, xva, yva) if len(xva) else (float("nan"), float("nan"))
        hist.append({"epoch": epoch + 1, "train_loss": total / len(perm), "train_acc": ta,
                     "val_loss": vl, "val_acc": vacc})  # fmt: skip
        score = vacc if len(xva) else ta
        if score > best:
            best, best_state = score, copy.deepcopy(head.state_dict())
    return hist, best, best_state


def _train_end_to_end(model: BoxClassifier, rows, train_idx, val_idx, labels, weights,
                      cfg: DetTrainConfig, gen, progress):  # fmt: skip
    """Backbone and head together, one photo's boxes at a time (one backbone pass per photo
    in "roi" mode). BatchNorm keeps ImageNet's statistics: batches of one photo's crops are
    far too correlated to estimate them."""
    from tqdm.auto import tqdm

    model.features.requires_grad_(True)
    opt = torch.optim.Adam([{"params": model.head.parameters(), "lr": cfg.lr},
                            {"params": model.features.parameters(), "lr": cfg.backbone_lr}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    by_image: dict[str, list[int]] = {}
    for i in train_idx.tolist():
        by_image.setdefault(rows[i]["image"], []).append(i)
    images = list(by_image)
    chunk = cfg.batch_size if cfg.spec().mode == "crops" else 10**9
    w = weights.to(cfg.device)
    hist, best, best_state = [], -1.0, None
    for epoch in range(cfg.epochs):
        model.train()
        model.features.eval()
        total = correct = seen = 0.0
        order = torch.randperm(len(images), generator=gen).tolist()
        bar = tqdm(order, desc=f"end-to-end epoch {epoch + 1}", unit="img", disable=not progress)
        for k in bar:
            idx = by_image[images[k]]
            img = load_rgb(Path(images[k]))
            for s in range(0, len(idx), chunk):
                b = idx[s : s + chunk]
                boxes = np.array([rows[i]["box"] for i in b], dtype=np.float32)
                y = labels[b].to(cfg.device)
                logits = model.logits(model.embed(img, boxes, cfg.embed_batch))
                loss = F.cross_entropy(logits, y, weight=w)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                correct += float((logits.argmax(1) == y).sum())
                seen += len(b)
        sched.step()
        model.eval()
        if len(val_idx):
            xva = embed_index(model, [rows[i] for i in val_idx.tolist()], cfg, None, False)
            xva = xva[:, : model.spec.head_dim].to(cfg.device)
            vl, vacc = _accuracy(model.head, xva, labels[val_idx].to(cfg.device))
        else:
            vl = vacc = float("nan")
        ta = correct / max(seen, 1)
        hist.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "train_acc": ta,
                     "val_loss": vl, "val_acc": vacc})  # fmt: skip
        score = vacc if len(val_idx) else ta
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.features.requires_grad_(False)
    return hist, best, best_state


def _fit_regressor(feats, rows, idx, cfg: DetTrainConfig, min_iou: float):
    """R-CNN's ridge regression on training rows that overlap a target box enough."""
    from dnnlab.detect.boxreg import box_deltas, fit_ridge

    use = [i for i in idx.tolist() if rows[i]["gt"] is not None
           and rows[i]["iou"] >= min_iou]  # fmt: skip
    props = torch.tensor([rows[i]["box"] for i in use], dtype=torch.float32).reshape(-1, 4)
    gt = torch.tensor([rows[i]["gt"] for i in use], dtype=torch.float32).reshape(-1, 4)
    return fit_ridge(feats[use], box_deltas(props, gt), cfg.reg_lambda)


def _fit_regressors(feats, rows, idx, cfg: DetTrainConfig):
    """(first round's regressor, later rounds' or None): coarse then fine, or R-CNN's one."""
    fine = _fit_regressor(feats, rows, idx, cfg, cfg.reg_min_iou)
    if cfg.coarse_min_iou is None or cfg.coarse_min_iou >= cfg.reg_min_iou:
        return fine, None
    return _fit_regressor(feats, rows, idx, cfg, cfg.coarse_min_iou), fine


@torch.no_grad()
def _fit_cascade(model: BoxClassifier, rows, idx, cfg: DetTrainConfig, progress=True):
    """The later rounds' regressor: every row of idx within IoU 0.3 of a target box is
    moved by the first regressor, re-read, and regressed onto its target box from there."""
    from tqdm.auto import tqdm

    from dnnlab.detect.boxreg import box_deltas, fit_ridge

    by_image: dict[str, list[int]] = {}
    for i in idx.tolist():
        if rows[i]["gt"] is not None and rows[i]["iou"] >= 0.3:
            by_image.setdefault(rows[i]["image"], []).append(i)
    xs, bs, gs = [], [], []
    for image, ids in tqdm(by_image.items(), desc="cascade regressor", unit="img",
                           disable=not progress):  # fmt: skip
        img = load_rgb(Path(image))
        h, w = img.shape[:2]
        features = model.box_features(img, cfg.embed_batch)
        b0 = torch.tensor([rows[i]["box"] for i in ids], dtype=torch.float32, device=cfg.device)
        gt = torch.tensor([rows[i]["gt"] for i in ids], dtype=torch.float32, device=cfg.device)
        # float16 round trip: the first regressor was fitted on the cache's rounded values
        b1 = model.refine(features(b0).half().float(), b0, h, w)
        ok = torch.diag(box_iou(b1, gt)) >= cfg.reg_min_iou
        xs.append(features(b1[ok]).half().float().cpu())
        bs.append(b1[ok].cpu())
        gs.append(gt[ok].cpu())
    if not xs:
        return None
    return fit_ridge(torch.cat(xs), box_deltas(torch.cat(bs), torch.cat(gs)), cfg.reg_lambda)


def train_detector(out, cfg: DetTrainConfig = DetTrainConfig(), progress=True,  # noqa: B008
                   overwrite: bool = False) -> dict:  # fmt: skip
    out = Path(out)
    t0 = time.perf_counter()
    info = build_info(out)
    if (out / "model.pt").exists() and not overwrite:
        raise FileExistsError(f"{out / 'model.pt'} holds a trained detector; pass --overwrite "
                              "to replace it, or build into another folder")  # fmt: skip
    rows = read_index(out)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    features, norm = load_backbone(cfg.backbone_weights)
    model = BoxClassifier(features, norm, cfg.spec()).to(cfg.device)
    model.features.requires_grad_(False)  # frozen backbone, as the seed
    labels = torch.tensor([r["label"] for r in rows])
    is_val = torch.tensor([r["split"] == "val" for r in rows])
    tr = (~is_val).nonzero().squeeze(1)
    va = is_val.nonzero().squeeze(1)
    pick, weights = _balanced(labels[tr], cfg, gen)
    t_feat = time.perf_counter()
    if cfg.end_to_end:
        hist, best, state = _train_end_to_end(model, rows, tr[pick], va, labels, weights, cfg,
                                              gen, progress)  # fmt: skip
        model.load_state_dict(state)
        head_seconds = time.perf_counter() - t_feat
        # The regressor needs the tuned backbone's features of every training row.
        t_feat = time.perf_counter()
        feats = embed_index(model, rows, cfg, None, progress)
        feat_seconds = time.perf_counter() - t_feat
    else:
        feats = embed_index(model, rows, cfg, out / "cache" / f"features-{_feature_key(cfg)}",
                            progress)  # fmt: skip
        feat_seconds = time.perf_counter() - t_feat
        t_head = time.perf_counter()
        dev = cfg.device
        hx = feats[:, : model.spec.head_dim]  # the head's part; the fine grid is the regressors'
        hist, best, state = _train_head(
            model.head, hx[tr][pick].to(dev), labels[tr][pick].to(dev), hx[va].to(dev),
            labels[va].to(dev), weights, cfg, gen)  # fmt: skip
        model.head.load_state_dict(state)
        head_seconds = time.perf_counter() - t_head
    t_reg = time.perf_counter()
    if cfg.box_regression:
        # The validation photos' rows too: ridge has no epochs to choose there, and 43 %
        # more photos raised cross-validated mAP on both seeds tried (docs/RESULTS.md).
        every = torch.arange(len(rows))
        first, later = _fit_regressors(feats, rows, every, cfg)
        model.regressor = first.to(cfg.device)
        model.regressor2 = later.to(cfg.device) if later is not None else None
        if cfg.cascade:
            model.eval()
            model.regressor2 = _fit_cascade(model, rows, every, cfg, progress)
    reg_seconds = time.perf_counter() - t_reg
    model.eval()
    atomic_torch_save({"model": model.state_dict(), "norm": norm, "config": asdict(cfg),
                       "build": info["config"]}, out / "model.pt")  # fmt: skip
    _plot(hist, out / "head_curves.png")
    summary = {"best_val_acc": best, "epochs": hist, "train_crops": len(pick),
               "val_crops": len(va), "feature_seconds": round(feat_seconds, 1),
               "head_seconds": round(head_seconds, 2), "regressor_seconds": round(reg_seconds, 2),
               "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    atomic_write_json(out / "train.json", summary)
    return summary


def _plot(hist, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [h["epoch"] for h in hist]
    for a, k in zip(ax, ("loss", "acc"), strict=True):
        a.plot(ep, [h[f"train_{k}"] for h in hist], label="train")
        a.plot(ep, [h[f"val_{k}"] for h in hist], label="validation")
        a.set_xlabel("epoch")
        a.set_title(f"head {k}")
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)


def load_detector(model_dir, device="cpu") -> tuple[BoxClassifier, dict]:
    """The trained detector (backbone + head + regressor + normalization) from model.pt."""
    from torchvision.models import mobilenet_v2

    f = Path(model_dir) / "model.pt"
    if not f.exists():
        raise FileNotFoundError(f"{f}: no trained detector; run `dnnlab detect train {model_dir}`")
    ck = torch.load(f, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    known = {k: v for k, v in cfg.items() if k in DetTrainConfig.__dataclass_fields__}
    known.setdefault("fine_grid", 0)  # models saved before the fine grid existed
    spec = DetTrainConfig(**known).spec()
    reg = nn.Linear(spec.dim, 4) if "regressor.weight" in ck["model"] else None
    reg2 = nn.Linear(spec.dim, 4) if "regressor2.weight" in ck["model"] else None
    model = BoxClassifier(mobilenet_v2().features, ck["norm"], spec, make_head(spec.head_dim), reg,
                          reg2)  # fmt: skip
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck
