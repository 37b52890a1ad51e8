"""Selective-search region proposals (OpenCV contrib), cached per image, in parallel."""

from __future__ import annotations

import ctypes
import functools
import json
import multiprocessing as mp
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from dnnlab.detect.config import ProposalConfig
from dnnlab.detect.voc import load_rgb
from dnnlab.utils.atomic import atomic_file
from dnnlab.utils.records import content_hash


@functools.cache
def _c_srand():
    """The C library's srand, or None where libc cannot be reached (loaded once a process)."""
    try:
        return ctypes.CDLL("msvcrt" if sys.platform == "win32" else None).srand
    except (OSError, AttributeError):
        return None


def _seed_c_rand(seed: int = 0) -> None:
    """OpenCV's selective search ranks its regions by hierarchy level x std::rand(), so the
    order of the proposals (and with it the near-duplicate filter and the sampled negatives)
    changes from run to run unless the C library's generator is seeded. Where libc cannot be
    reached the proposals are the same set, in a run-dependent order."""
    srand = _c_srand()
    if srand is not None:
        srand(ctypes.c_uint(seed))


def _selective_search(img_rgb: np.ndarray, mode: str) -> np.ndarray:
    cv2.setNumThreads(1)  # parallelism is across images
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(img_rgb[:, :, ::-1].copy())  # OpenCV wants BGR
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality()
    elif mode == "single":
        ss.switchToSingleStrategy()
    else:
        raise ValueError(f"unknown selective-search mode {mode!r}; fast, quality or single")
    _seed_c_rand(0)
    rects = ss.process()  # x, y, w, h
    return np.asarray(rects, dtype=np.float32).reshape(-1, 4)


def propose(img_rgb: np.ndarray, cfg: ProposalConfig) -> np.ndarray:
    """Boxes (n, 4) as (x1, y1, x2, y2) in the image's own pixel coordinates, float32."""
    h, w = img_rgb.shape[:2]
    scale = 1.0
    small = img_rgb
    if cfg.max_side and max(h, w) > cfg.max_side:
        scale = cfg.max_side / max(h, w)
        small = cv2.resize(
            img_rgb,
            (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA,
        )
    r = _selective_search(small, cfg.mode)
    boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], 1) / scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (bw >= cfg.min_size) & (bh >= cfg.min_size)
    boxes = boxes[keep]
    # Selective search lists its regions roughly from most to least likely; keep that order.
    return boxes[: cfg.max_boxes].astype(np.float32)


def cache_key(image: Path, cfg: ProposalConfig) -> str:
    st = image.stat()
    # "seeded": proposals made before the C generator was seeded had a run-dependent order.
    text = json.dumps([str(image.resolve()), st.st_size, st.st_mtime_ns, asdict(cfg), "seeded"])
    return content_hash([text])


def _work(args):
    image, cfg, cache_dir = args
    f = Path(cache_dir) / f"{cache_key(Path(image), cfg)}.npy"
    if f.exists():
        return np.load(f)
    boxes = propose(load_rgb(Path(image)), cfg)
    with atomic_file(f, "wb") as fh:  # a unique temporary: two workers never share one
        np.save(fh, boxes)
    return boxes


def proposals_for(
    images: list[Path], cfg: ProposalConfig, cache_dir, workers: int = 2, progress: bool = True
) -> list[np.ndarray]:
    """Proposals for every image, from the cache when there; computed ones are cached."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), cfg, str(cache_dir)) for p in images]
    bar = dict(total=len(jobs), desc="selective search", unit="img", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        return [_work(j) for j in tqdm(jobs, **bar)]
    with mp.get_context("spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(_work, jobs), **bar))


def proposal_recall(props: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """Fraction of ground-truth boxes that some proposal covers at IoU >= 0.5 and >= 0.7."""
    hit50 = hit70 = total = 0
    for p, g in zip(props, gts, strict=True):
        if len(g) == 0:
            continue
        total += len(g)
        if len(p) == 0:
            continue
        best = box_iou(torch.from_numpy(g), torch.from_numpy(p)).max(1).values
        hit50 += int((best >= 0.5).sum())
        hit70 += int((best >= 0.7).sum())
    return {
        "recall50": hit50 / total if total else float("nan"),
        "recall70": hit70 / total if total else float("nan"),
        "gt_boxes": total,
    }
