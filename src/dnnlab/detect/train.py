"""`dnnlab detect train`: the head on cached backbone features (or end to end).

The backbone is frozen and crops are not augmented, so each crop's pooled 1280-d feature is
computed once (cached per image, so an interrupted extraction resumes) and the head trains
on the cache: the same optimization as the seed's, far faster.
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

from dnnlab.detect.build import build_info, read_index
from dnnlab.detect.classifier import CropClassifier, CropSpec, crop_batch, load_backbone, make_head
from dnnlab.detect.voc import load_rgb
from dnnlab.utils.atomic import atomic_savefig, atomic_torch_save, atomic_write_json


@dataclass
class DetTrainConfig:
    """The seed's head recipe: Adam 0.005, StepLR(3, 0.3), 10 epochs, batch 32, 1:1 balance."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.005
    step_size: int = 3
    gamma: float = 0.3
    balance: str = "ratio"  # "ratio": subsample negatives to neg_ratio x positives; "weights"
    neg_ratio: float = 1.0
    crop_size: int = 224
    context: float = 0.0
    backbone_weights: str | None = None
    seed: int = 0
    device: str = "cpu"
    embed_batch: int = 16  # MobileNetV2 on a CPU: 16 crops a batch beat 64 (cache-sized)


def _feature_key(cfg: DetTrainConfig) -> str:
    w = cfg.backbone_weights
    stamp = [str(Path(w).resolve()), Path(w).stat().st_size] if w else ["torchvision"]
    return hashlib.sha256(json.dumps([stamp, cfg.crop_size, cfg.context]).encode()).hexdigest()[:12]


@torch.no_grad()
def embed_index(model: CropClassifier, rows, cfg: DetTrainConfig, cache: Path, progress=True):
    """Pooled features for every index row, computed per image and cached per image."""
    from tqdm.auto import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    spec = CropSpec(cfg.crop_size, cfg.context)
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_image.setdefault(r["image"], []).append(i)
    feats = torch.empty(len(rows), 1280)
    model.eval()
    for image, idx in tqdm(by_image.items(), desc="backbone features", unit="img",
                           disable=not progress):  # fmt: skip
        boxes = np.array([rows[i]["box"] for i in idx], dtype=np.float32)
        key = hashlib.sha256((image + boxes.tobytes().hex()).encode()).hexdigest()[:20]
        f = cache / f"{key}.pt"
        if f.exists():
            feats[idx] = torch.load(f, weights_only=True)
            continue
        crops = crop_batch(load_rgb(Path(image)), boxes, spec)
        out = torch.cat([model.embed(crops[s : s + cfg.embed_batch].to(cfg.device)).cpu()
                         for s in range(0, len(crops), cfg.embed_batch)])  # fmt: skip
        atomic_torch_save(out, f)
        feats[idx] = out
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


def train_detector(out, cfg: DetTrainConfig = DetTrainConfig(), progress=True) -> dict:  # noqa: B008
    out = Path(out)
    t0 = time.perf_counter()
    info = build_info(out)
    rows = read_index(out)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    features, norm = load_backbone(cfg.backbone_weights)
    model = CropClassifier(features, norm, make_head()).to(cfg.device)
    for p in model.features.parameters():
        p.requires_grad_(False)  # frozen backbone, as the seed
    labels = torch.tensor([r["label"] for r in rows])
    is_val = torch.tensor([r["split"] == "val" for r in rows])
    t_feat = time.perf_counter()
    feats = embed_index(model, rows, cfg, out / "cache" / f"features-{_feature_key(cfg)}",
                        progress)  # fmt: skip
    feat_seconds = time.perf_counter() - t_feat
    tr = (~is_val).nonzero().squeeze(1)
    va = is_val.nonzero().squeeze(1)
    pick, weights = _balanced(labels[tr], cfg, gen)
    xtr, ytr = feats[tr][pick].to(cfg.device), labels[tr][pick].to(cfg.device)
    xva, yva = feats[va].to(cfg.device), labels[va].to(cfg.device)
    head = model.head
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    hist, best, best_state = [], -1.0, None
    t_head = time.perf_counter()
    for epoch in range(cfg.epochs):
        head.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            loss = F.cross_entropy(head(xtr[b]), ytr[b], weight=weights.to(cfg.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        tl, ta = _accuracy(head, xtr, ytr)
        vl, vacc = _accuracy(head, xva, yva) if len(va) else (float("nan"), float("nan"))
        hist.append({"epoch": epoch + 1, "train_loss": total / len(perm), "train_acc": ta,
                     "val_loss": vl, "val_acc": vacc})  # fmt: skip
        score = vacc if len(va) else ta
        if score > best:
            best, best_state = score, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    head_seconds = time.perf_counter() - t_head
    atomic_torch_save({"model": model.state_dict(), "norm": norm, "config": asdict(cfg),
                       "build": info["config"]}, out / "model.pt")  # fmt: skip
    _plot(hist, out / "head_curves.png")
    summary = {"best_val_acc": best, "epochs": hist, "train_crops": len(xtr),
               "val_crops": len(xva), "feature_seconds": round(feat_seconds, 1),
               "head_seconds": round(head_seconds, 2),
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


def load_detector(model_dir, device="cpu") -> tuple[CropClassifier, dict]:
    """The trained classifier (backbone + head + normalization) from model.pt."""
    from torchvision.models import mobilenet_v2

    f = Path(model_dir) / "model.pt"
    if not f.exists():
        raise FileNotFoundError(f"{f}: no trained detector; run `dnnlab detect train {model_dir}`")
    ck = torch.load(f, map_location="cpu", weights_only=False)
    norm = ck["norm"]
    model = CropClassifier(mobilenet_v2().features, norm, make_head())
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck
