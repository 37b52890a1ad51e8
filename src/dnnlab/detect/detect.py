"""Detection: proposals, batched classification, score threshold, NMS, top-K; and mAP."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from dnnlab.detect.proposals import ProposalConfig, proposal_recall, propose
from dnnlab.detect.voc import Problems, load_rgb, read_voc_dir
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text


@dataclass
class DetectConfig:
    score_threshold: float = 0.5
    nms_iou: float = 0.3
    max_detections: int = 10
    # Proposals classified per image: selective search's first ones after dropping
    # near-duplicates (IoU > prefilter_iou). With RoI features every proposal costs almost
    # nothing; with crops this bounds the time per photo.
    max_proposals: int = 2000
    prefilter_iou: float = 0.8
    batch: int = 16  # crops per backbone batch (mode "crops")
    # Box-regression rounds: each moves the boxes, the next one re-reads their features.
    # 1 is R-CNN's single regression; 2 ("iterative localization", Gidaris & Komodakis 2015)
    # costs one more RoIAlign and added 0.07-0.21 AP50 on cats-voc/valid across builds
    # (docs/RESULTS.md).
    refine_steps: int = 2
    # Box voting: each kept box becomes the score-weighted mean of the refined boxes above
    # the threshold that overlap it at IoU >= vote_iou (0: no voting), and its confidence
    # the support 1 - exp(-S / support_scale), S = their summed probability (support_scale
    # 0: the classifier's probability). The classifier gives 0.99+ to most
    # boxes on a cat, so its probability cannot rank a true box above a false one; how many
    # refined boxes agree can. 5-fold cross-validation over all 170 cats-voc photos: AP50
    # 0.555 -> 0.662 (voting) -> 0.719 (and support), benchmarks/cv_detect.py.
    vote_iou: float = 0.5
    support_scale: float = 10.0


SEED_DETECT = dict(nms_iou=1.0, max_detections=10**9, max_proposals=10**9, prefilter_iou=1.0,
                   refine_steps=0, vote_iou=0.0)


def _prefilter(boxes: np.ndarray, cfg: DetectConfig) -> np.ndarray:
    """Drop near-duplicate proposals, keeping selective search's order, then take the first K."""
    if len(boxes) == 0:
        return boxes
    if cfg.prefilter_iou < 1:
        b = torch.from_numpy(boxes)
        # Earlier proposals rank higher: a descending score that follows the list order.
        keep = nms(b, torch.linspace(1, 0, len(b)), cfg.prefilter_iou)
        boxes = boxes[keep.sort().values.numpy()]
    return boxes[: cfg.max_proposals]


@torch.inference_mode()
def score_boxes(model, img: np.ndarray, boxes: np.ndarray, batch: int = 16, steps: int = 1):
    """(cat probability, refined box) of every proposal of one photo, all at once.

    With a box regressor and steps > 1 the boxes are refined `steps` times, each time from
    the features of the box as it now stands; the score is that of the box the last round
    started from (the classifier never saw the final box, but it saw one much closer to it
    than the proposal). In mode "roi" the backbone still runs once: rounds only re-pool.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
    b = torch.from_numpy(np.asarray(boxes, np.float32)).to(model.mean.device)
    s, b = refine_rounds(model, model.box_features(img, batch), b, *img.shape[:2], steps)
    return s.cpu().numpy(), b.cpu().numpy().astype(np.float32)


def refine_rounds(model, features, boxes: torch.Tensor, height: int, width: int, steps: int):
    """score_boxes()'s rounds on any features function (boxes -> features), e.g. a cache."""
    x = features(boxes)
    s = model.scores(x)
    rounds = steps if model.regressor is not None else 0
    for t in range(rounds):
        boxes = model.refine(x, boxes, height, width, t)
        if t < rounds - 1:
            x = features(boxes)
            s = model.scores(x)
    return s, boxes


def vote(kept: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
         iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Box voting (Gidaris & Komodakis 2015): (voted boxes, support).

    Each kept box is replaced by the score-weighted mean of the boxes that overlap it at
    IoU >= iou (itself included); its support is their summed score.
    """
    if len(kept) == 0:
        return kept.reshape(0, 4), scores.new_zeros(0)
    w = (box_iou(kept, boxes) >= iou).to(scores.dtype) * scores  # (kept, boxes)
    support = w.sum(1)
    return (w @ boxes) / support[:, None], support


def confidence(support: torch.Tensor, scale: float) -> torch.Tensor:
    """Support as a number in [0, 1): about 0.63 at `scale` fully confident boxes."""
    return 1 - torch.exp(-support / scale)


def select(boxes: torch.Tensor, scores: torch.Tensor, cfg: DetectConfig):
    """Score threshold, NMS, top-K, then box voting: (boxes, confidences), best first."""
    keep = scores > cfg.score_threshold
    b, s = boxes[keep], scores[keep]
    k = nms(b, s, cfg.nms_iou) if cfg.nms_iou < 1 else s.argsort(descending=True)
    k = k[: cfg.max_detections]
    out_b, out_s = b[k], s[k]
    if cfg.vote_iou > 0:
        out_b, support = vote(out_b, b, s, cfg.vote_iou)
        if cfg.support_scale > 0:
            out_s = confidence(support, cfg.support_scale)
        order = out_s.argsort(descending=True, stable=True)
        out_b, out_s = out_b[order], out_s[order]
    return out_b, out_s


def detect_image(model, img, pcfg: ProposalConfig, cfg: DetectConfig) -> dict:
    t0 = time.perf_counter()
    props = _prefilter(propose(img, pcfg), cfg)
    t1 = time.perf_counter()
    scores, refined = score_boxes(model, img, props, cfg.batch, cfg.refine_steps)
    out_b, out_s = select(torch.from_numpy(refined), torch.from_numpy(scores), cfg)
    return {"boxes": out_b.numpy(), "scores": out_s.numpy(), "proposals": props,
            "all_scores": scores, "seconds": time.perf_counter() - t0,
            "proposal_seconds": t1 - t0}  # fmt: skip


def draw(img: np.ndarray, boxes, scores, path: Path, gt=None) -> None:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for g in gt if gt is not None else []:
        d.rectangle([float(v) for v in g], outline=(0, 200, 0), width=2)
    for box, sc in zip(boxes, scores, strict=True):
        d.rectangle([float(v) for v in box], outline=(255, 40, 40), width=3)
        d.text((float(box[0]) + 3, float(box[1]) + 2), f"cat {sc:.2f}", fill=(255, 255, 0))
    tmp = path.with_name(f".{path.name}.tmp.jpg")
    im.save(tmp, quality=90)
    tmp.replace(path)


def proposal_settings(ck: dict) -> ProposalConfig:
    """Detection proposes boxes the way the training set was built."""
    b = ck["build"]
    return ProposalConfig(b["ss_mode"], b["ss_max_side"], b["max_proposals"])


def _check_outputs(images: list[Path], out_dir: Path, overwrite: bool) -> None:
    """Each photo writes STEM.json and STEM.jpg: refuse two inputs with one stem, and (unless
    overwrite) outputs an earlier run left in out_dir, before any work is done."""
    seen: dict[str, Path] = {}
    for p in images:
        if p.stem in seen:
            raise ValueError(f"{seen[p.stem]} and {p} would both be written as "
                             f"{out_dir / p.stem}.json/.jpg; run them into different --out "
                             "folders")  # fmt: skip
        seen[p.stem] = p
    if overwrite:
        return
    old = [out_dir / f"{p.stem}{ext}" for p in images for ext in (".json", ".jpg")
           if (out_dir / f"{p.stem}{ext}").exists()]  # fmt: skip
    if old:
        more = f" and {len(old) - 3} more" if len(old) > 3 else ""
        raise FileExistsError(f"{', '.join(map(str, old[:3]))}{more}: an earlier run's "
                              "results; pass --overwrite to replace them, or another --out")


def run_detector(images, model_dir, out_dir, cfg: DetectConfig = DetectConfig(),  # noqa: B008
                 device="cpu", progress=True, overwrite: bool = False) -> list[dict]:  # fmt: skip
    from tqdm.auto import tqdm

    from dnnlab.detect.train import load_detector

    images = [Path(i) for i in images]
    out_dir = Path(out_dir)
    _check_outputs(images, out_dir, overwrite)
    model, ck = load_detector(model_dir, device)
    pcfg = proposal_settings(ck)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for p in tqdm(images, desc="detect", unit="img", disable=not progress):
        try:
            img = load_rgb(p)
        except Exception as e:
            results.append({"image": str(p), "error": f"unreadable image: {e}"})
            continue
        r = detect_image(model, img, pcfg, cfg)
        dets = [{"box": [round(float(v), 1) for v in b], "score": round(float(s), 4)}
                for b, s in zip(r["boxes"], r["scores"], strict=True)]  # fmt: skip
        rec = {"image": str(p), "detections": dets, "seconds": round(r["seconds"], 3)}
        atomic_write_json(out_dir / f"{p.stem}.json", rec)
        draw(img, r["boxes"], r["scores"], out_dir / f"{p.stem}.jpg")
        results.append(rec)
    return results


def evaluate(voc_dir, model_dir, cfg: DetectConfig = DetectConfig(), device="cpu",  # noqa: B008
             target="cat", progress=True, draw_dir: Path | None = None) -> dict:  # fmt: skip
    """AP50 and COCO mAP (torchmetrics), precision/recall at the threshold, timing."""
    from torchmetrics.detection import MeanAveragePrecision
    from tqdm.auto import tqdm

    from dnnlab.detect.train import load_detector

    model, ck = load_detector(model_dir, device)
    pcfg = proposal_settings(ck)
    problems = Problems()
    items = read_voc_dir(voc_dir, problems, target)
    # COCO's rule: at most 100 detections per image count (only the seed's no-NMS settings
    # reach it); said once in eval.md rather than warned per image.
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy")
    metric.warn_on_many_detections = False
    tp = fp = n_gt = 0
    secs, props_all, gts = [], [], []
    for item in tqdm(items, desc="evaluate", unit="img", disable=not progress):
        try:
            img = load_rgb(item.image)
        except Exception as e:
            problems.add("unreadable image", str(item.image), str(e))
            continue
        r = detect_image(model, img, pcfg, cfg)
        secs.append(r["seconds"])
        gt = item.boxes(target)
        props_all.append(r["proposals"])
        gts.append(gt)
        # AP of the detector as configured: what passes the threshold, NMS and top-K.
        metric.update(
            [{"boxes": torch.from_numpy(r["boxes"]).float().reshape(-1, 4),
              "scores": torch.from_numpy(r["scores"]).float(),
              "labels": torch.zeros(len(r["boxes"]), dtype=torch.long)}],
            [{"boxes": torch.from_numpy(gt).float().reshape(-1, 4),
              "labels": torch.zeros(len(gt), dtype=torch.long)}],
        )  # fmt: skip
        n_gt += len(gt)
        matched = set()
        if len(r["boxes"]) and len(gt):
            iou = box_iou(torch.from_numpy(r["boxes"]), torch.from_numpy(gt))
            for d in range(len(r["boxes"])):  # detections come sorted by score
                j = int(iou[d].argmax())
                if iou[d, j] >= 0.5 and j not in matched:
                    matched.add(j)
                    tp += 1
                else:
                    fp += 1
        else:
            fp += len(r["boxes"])
        if draw_dir is not None:
            Path(draw_dir).mkdir(parents=True, exist_ok=True)
            draw(img, r["boxes"], r["scores"], Path(draw_dir) / f"{item.image.stem}.jpg", gt)
    m = metric.compute()
    rec = proposal_recall(props_all, gts)  # r["proposals"] are already prefiltered
    result = {
        "ap50": float(m["map_50"]),
        "map": float(m["map"]),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / n_gt if n_gt else float("nan"),
        "proposal_recall50": rec["recall50"],
        "proposal_recall70": rec["recall70"],
        "seconds_per_image": statistics.median(secs) if secs else float("nan"),
        "mean_seconds_per_image": statistics.fmean(secs) if secs else float("nan"),
        "images": len(secs),
        "gt_boxes": n_gt,
        "settings": asdict(cfg),
        "problems": problems.to_dict(),
    }
    return result


def write_eval(model_dir, voc_dir, result: dict) -> None:
    model_dir = Path(model_dir)
    atomic_write_json(model_dir / "eval.json", {"voc_dir": str(voc_dir), **result})
    md = ["# Detector evaluation", "", f"Data: `{voc_dir}` ({result['images']} images, "
          f"{result['gt_boxes']} boxes)", "", "| metric | value |", "|---|---|"]  # fmt: skip
    for k in ("ap50", "map", "precision", "recall", "proposal_recall50", "proposal_recall70",
              "seconds_per_image"):  # fmt: skip
        md.append(f"| {k} | {result[k]:.4f} |")
    md += ["", f"Settings: `{json.dumps(result['settings'])}`"]
    atomic_write_text(model_dir / "eval.md", "\n".join(md) + "\n")
