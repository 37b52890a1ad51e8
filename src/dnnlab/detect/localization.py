"""Fitting the localization confidence: a ridge predictor from a box's features to its IoU
with the target box it overlaps most (IoU-Net's idea, Jiang et al., ECCV 2018, on the
detector's features, the backbone's as trained; training only, detection reads it in Detector).

The classifier gives 0.99+ to most boxes that touch a cat, so its probability cannot tell a
tight box from a loose one, and mAP (IoU 0.5 to 0.95) is lost there. The predictor is fitted
on the indexed rows near a target box (IoU >= NEAR_IOU), a sample of the others, and
jittered copies of every target box: the index itself holds few boxes between IoU 0.7 and 1,
where the ranking matters most.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from dnnlab.detect.boxreg import fit_ridge
from dnnlab.detect.voc import load_rgb

NEAR_IOU = 0.3  # rows at least this close to a target box are all used
FAR_PER_PHOTO = 8  # rows below NEAR_IOU used, per photo, at random
JITTER_PER_TARGET = 16  # jittered copies of each target box
JITTER_SIGMAS = (0.03, 0.08, 0.15)  # a copy's coordinates move by N(0, sigma x box size)


def jitter_boxes(targets: np.ndarray, rng, n: int, width: int, height: int) -> np.ndarray:
    """n jittered copies of each box of targets (g, 4): every coordinate moved by a normal
    draw of JITTER_SIGMAS[k] of the box's width or height (k in turn), clipped to the image,
    copies narrower or lower than 2 pixels dropped: (m <= g * n, 4)."""
    t = np.asarray(targets, np.float32).reshape(-1, 4)
    if len(t) == 0:
        return np.zeros((0, 4), np.float32)
    b = np.repeat(t, n, 0)
    size = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, 1)
    sigma = np.tile(np.resize(np.float32(JITTER_SIGMAS), n), len(t))[:, None]
    b = b + rng.normal(size=b.shape).astype(np.float32) * sigma * size
    b[:, [0, 2]] = np.sort(b[:, [0, 2]].clip(0, width), 1)
    b[:, [1, 3]] = np.sort(b[:, [1, 3]].clip(0, height), 1)
    return b[(b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2)]


def pick_rows(ious: np.ndarray, photos: int, rng) -> np.ndarray:
    """Which rows the predictor is fitted on (sorted positions): every row at IoU >= NEAR_IOU
    and FAR_PER_PHOTO x photos of the others at random."""
    far = np.flatnonzero(ious < NEAR_IOU)
    picked = [np.flatnonzero(ious >= NEAR_IOU), rng.permutation(far)[: FAR_PER_PHOTO * photos]]
    return np.sort(np.concatenate(picked))


def photo_targets(rows: list[dict]) -> dict[tuple[str, bool], np.ndarray]:
    """{(photo, mirrored): its target boxes (g, 4)}, from the rows' target boxes (a build adds
    every target box as a row of its own, so none is missing)."""
    out: dict[tuple[str, bool], set] = {}
    for r in rows:
        key = (r["image"], bool(r.get("mirrored", False)))
        out.setdefault(key, set())
        if r["gt"] is not None:
            out[key].add(tuple(r["gt"]))
    return {k: np.array(sorted(v), np.float32).reshape(-1, 4) for k, v in out.items()}


@torch.no_grad()
def jittered_samples(model, targets_of: dict, rng, progress=True):
    """(features (m, spec.dim), IoU with the nearest target box (m,)) of JITTER_PER_TARGET
    jittered copies of each photo's target boxes (targets_of: photo_targets), read on that
    photo (mirrored when so keyed); one backbone pass per photo, rounded to float16 as the
    training cache."""
    xs, ts = [], []
    model.eval()
    for (image, mirrored), targets in tqdm(
        targets_of.items(), desc="IoU predictor", unit="img", disable=not progress
    ):
        if len(targets) == 0:
            continue
        img = load_rgb(Path(image))
        if mirrored:
            img = np.ascontiguousarray(img[:, ::-1])
        h, w = img.shape[:2]
        boxes = jitter_boxes(targets, rng, JITTER_PER_TARGET, w, h)
        if len(boxes) == 0:
            continue
        xs.append(model.embed(img, boxes).cpu().half().float())
        ts.append(box_iou(torch.from_numpy(boxes), torch.from_numpy(targets)).max(1).values)
    if not xs:
        return torch.zeros(0, model.spec.dim), torch.zeros(0)
    return torch.cat(xs), torch.cat(ts)


def fit_iou_predictor(
    model, feats: torch.Tensor, rows: list[dict], seed: int, lam: float, progress=True
) -> nn.Linear:
    """Ridge (penalty lam) from features (spec.dim) to IoU: Linear(spec.dim, 1), fitted on
    pick_rows(rows) of feats (len(rows), spec.dim) and the jittered target boxes."""
    rng = np.random.default_rng(seed)
    ious = np.array([r["iou"] for r in rows], np.float32)
    targets_of = photo_targets(rows)  # one entry per photo (and per mirrored photo)
    pick = pick_rows(ious, len(targets_of), rng)
    xj, tj = jittered_samples(model, targets_of, rng, progress)
    x = torch.cat([feats[torch.from_numpy(pick)], xj])
    t = torch.cat([torch.from_numpy(ious[pick]), tj.float()])
    return fit_ridge(x, t[:, None], lam)
