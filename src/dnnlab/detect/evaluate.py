"""`dnnlab detect eval`: AP50 and COCO mAP of a detector on a VOC folder, kept as one record
per evaluated folder (MODEL_DIR/evals/NAME.json and .md) with a fingerprint of its inputs:
the model file's content hash, the folder's file list (names, sizes, modification times) and
the settings. A stored record is reused only when all of it matches.
"""

from __future__ import annotations

import json
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from dnnlab.detect.detector import MODEL_FILE, Detector, load_detector
from dnnlab.detect.output import draw
from dnnlab.detect.proposals import proposal_recall
from dnnlab.detect.voc import Problems, load_rgb, read_voc_dir
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text
from dnnlab.utils.images import UnreadableImage
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import check_output, mark
from dnnlab.utils.paths import check_in_folder
from dnnlab.utils.records import RecordError, content_hash, file_sha256, read_json

MATCH_IOU = 0.5  # a detection is true when it covers an unmatched target box this well
EVALS = "evals"
SHOWN = (
    "ap50",
    "ap75",
    "map",
    "precision",
    "recall",
    "proposal_recall50",
    "proposal_recall70",
    "seconds_per_image",
)


def match_detections(boxes: np.ndarray, gt: np.ndarray, iou: float = MATCH_IOU) -> np.ndarray:
    """Greedy matching, detections (k, 4) taken in the given order (best first) against
    target boxes (g, 4): detection d is true (True in the (k,) result) when the target box
    it overlaps most is not yet taken and overlaps it at IoU >= iou; it then takes it."""
    hit = np.zeros(len(boxes), bool)
    if len(boxes) == 0 or len(gt) == 0:
        return hit
    ious = box_iou(
        torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.as_tensor(gt, dtype=torch.float32).reshape(-1, 4),
    )
    taken = set()
    for d in range(len(boxes)):
        j = int(ious[d].argmax())
        if ious[d, j] >= iou and j not in taken:
            taken.add(j)
            hit[d] = True
    return hit


def average_precisions(
    boxes: list[np.ndarray], scores: list[np.ndarray], gts: list[np.ndarray]
) -> dict:
    """COCO's one-class AP (torchmetrics, 101 recall points) over photos: per photo the
    detections (k, 4), their confidences (k,) and the target boxes (g, 4).
    {"ap50": AP at IoU 0.5, "ap75": at IoU 0.75, "map": the mean over IoU 0.5:0.95}."""
    # Here, not at the top: torchmetrics adds 1.1-1.3 s to this module's import, and a refused
    # input never reaches it (benchmarks/lazy_imports.py, docs/RESULTS.md §9).
    from torchmetrics.detection import MeanAveragePrecision

    # COCO's rule: at most 100 detections per photo count (only the course preset, without
    # NMS, reaches it); said once in the record rather than warned per photo.
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy")
    metric.warn_on_many_detections = False
    for b, s, g in zip(boxes, scores, gts, strict=True):
        metric.update([_as_metric(b, s)], [_as_metric(g)])
    m = metric.compute()
    return {"ap50": float(m["map_50"]), "ap75": float(m["map_75"]), "map": float(m["map"])}


def evaluate_detector(
    voc_dir, detector: Detector, progress=True, draw_dir: Path | None = None
) -> dict:
    """AP50, AP75 and COCO mAP (average_precisions) of the detections as configured
    (threshold, NMS, top-K), precision/recall at the threshold, proposal recall, seconds per
    photo, and the input problems found."""
    target = detector.config.target
    problems = Problems()
    items = read_voc_dir(voc_dir, problems, target)
    found: tuple[list, list] = ([], [])
    tp = fp = n_gt = 0
    secs, props_all, gts = [], [], []
    for item in tqdm(items, desc="evaluate", unit="img", disable=not progress):
        try:
            img = load_rgb(item.image)
        except UnreadableImage as e:  # changed since it was listed: counted, the rest go on
            problems.add("unreadable image", str(item.image), e.reason)
            continue
        r = detector.detect(img)
        gt = item.boxes(target)
        secs.append(r.seconds)
        props_all.append(r.proposals)
        gts.append(gt)
        found[0].append(r.boxes)
        found[1].append(r.scores)
        hit = match_detections(r.boxes, gt)
        tp, fp, n_gt = tp + int(hit.sum()), fp + int((~hit).sum()), n_gt + len(gt)
        if draw_dir is not None:
            draw(img, r.boxes, r.scores, Path(draw_dir) / f"{item.image.stem}.jpg", target, gt)
    rec = proposal_recall(props_all, gts)
    return {
        **average_precisions(*found, gts),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / n_gt if n_gt else float("nan"),
        "proposal_recall50": rec["recall50"],
        "proposal_recall70": rec["recall70"],
        "seconds_per_image": statistics.median(secs) if secs else float("nan"),
        "mean_seconds_per_image": statistics.fmean(secs) if secs else float("nan"),
        "images": len(secs),
        "gt_boxes": n_gt,
        "settings": detector.config.to_dict()["detection"],
        "problems": problems.to_dict(),
    }


def _as_metric(boxes: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """One photo's boxes (k, 4) (and scores) in torchmetrics' form, one class."""
    d = {
        "boxes": torch.from_numpy(boxes).float().reshape(-1, 4),
        "labels": torch.zeros(len(boxes), dtype=torch.long),
    }
    if scores is not None:
        d["scores"] = torch.from_numpy(scores).float()
    return d


def eval_inputs(voc_dir, model_dir, detector: Detector) -> dict:
    """What an evaluation's figures depend on: the model file's bytes, every file of the
    folder (name, size, modification time) and the detector's whole config."""
    folder = Path(voc_dir).resolve()
    listing = []
    for p in sorted(folder.iterdir()):
        st = p.stat()
        listing.append([p.name, st.st_size, st.st_mtime_ns])
    return {
        "model_sha256": file_sha256(Path(model_dir) / MODEL_FILE),
        "voc_dir": str(folder),
        "files": len(listing),
        "files_hash": content_hash([json.dumps(listing)]),
        "config": detector.config.to_dict(),
    }


def record_path(model_dir, voc_dir) -> Path:
    """MODEL_DIR/evals/NAME-HASH.json: one record per evaluated folder."""
    folder = Path(voc_dir).resolve()
    tag = content_hash([str(folder)])[:8]  # 8 digits: the names earlier versions gave
    return Path(model_dir) / EVALS / f"{folder.name}-{tag}.json"


def stored_result(model_dir, voc_dir, fp: dict) -> dict | None:
    """The stored result for this folder when its fingerprint equals fp, else None."""
    path = record_path(model_dir, voc_dir)
    try:
        rec = read_json(path)
    except RecordError:  # none yet, or damaged: measured again, and the record rewritten
        return None
    if not isinstance(rec, dict) or rec.get("fingerprint") != fp:
        return None
    res = rec.get("result")
    # A record written before a figure was added to SHOWN (ap75) is measured again.
    if not isinstance(res, dict) or any(k not in res for k in SHOWN):
        return None
    return res


def write_record(model_dir, voc_dir, fp: dict, result: dict) -> Path:
    """The folder's record as JSON and as markdown (what the study report shows)."""
    path = record_path(model_dir, voc_dir)
    atomic_write_json(path, {"fingerprint": fp, "result": result})
    md = [
        "# Detector evaluation",
        "",
        f"Data: `{fp['voc_dir']}` ({result['images']} images, {result['gt_boxes']} boxes); "
        f"model.pt sha256 `{fp['model_sha256'][:16]}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    md += [f"| {k} | {result[k]:.4f} |" for k in SHOWN]
    md += [
        "",
        f"Settings: `{json.dumps(result['settings'])}`",
        "",
        f"Input: {Problems.from_dict(result['problems']).summary()}",
    ]
    atomic_write_text(path.with_suffix(".md"), "\n".join(md) + "\n")
    return path


def check_draw_dir(draw_dir, voc_dir, model_dir, overwrite: bool = False) -> None:
    """The write gate (utils/outputs.py), as for `detect run --out`: refuse a --draw folder
    that is the evaluated folder, the model's, one that would replace any file of the
    evaluated folder (also through symlinks), a folder of the user's (even with overwrite),
    and (unless overwrite) one that already holds a file with a drawn photo's name."""
    folder = Path(voc_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    drawn = sorted({Path(draw_dir) / f"{p.stem}.jpg" for p in files})
    inputs = [voc_dir, model_dir, *files]
    check_output(
        draw_dir, "--draw", "detect eval --draw", inputs=inputs, files=drawn, overwrite=overwrite
    )


def check_eval_inputs(voc_dir, model_dir, draw_dir=None, overwrite: bool = False) -> None:
    """Before any work: the evaluated folder and the model's are folders, a --draw folder
    passes the write gate (check_draw_dir), and the model's folder, where the records are
    written (MODEL/evals/), is one of dnnlab's."""
    check_in_folder(voc_dir, "VOC_DIR")
    check_in_folder(model_dir, "--model")
    if draw_dir is not None:
        check_draw_dir(draw_dir, voc_dir, model_dir, overwrite)
    check_output(model_dir, "--model", "detect build")  # its evals/ records are written there


def evaluate_once(
    voc_dir, model_dir, detector: Detector, draw_dir=None, progress=False, overwrite=False
) -> dict:
    """The evaluation of the detector in model_dir on voc_dir: the stored record when its
    fingerprint matches (never when drawing), else a fresh evaluation, then recorded.
    overwrite: drawn images may replace files already in draw_dir."""
    check_eval_inputs(voc_dir, model_dir, draw_dir, overwrite)
    with ExitStack() as locks:  # one writer of MODEL_DIR/evals (and of --draw) at a time
        locks.enter_context(folder_lock(Path(model_dir) / EVALS, "--model"))
        if draw_dir is not None:
            locks.enter_context(folder_lock(draw_dir, "--draw"))
            mark(draw_dir, "detect eval --draw")
        return _evaluate_locked(voc_dir, model_dir, detector, draw_dir, progress)


def _evaluate_locked(voc_dir, model_dir, detector: Detector, draw_dir, progress) -> dict:
    """evaluate_once while its folders' locks are held."""
    fp = eval_inputs(voc_dir, model_dir, detector)
    res = None if draw_dir else stored_result(model_dir, voc_dir, fp)
    if res is not None:
        print(
            f"reusing {record_path(model_dir, voc_dir)}: same model, files and settings",
            file=sys.stderr,
        )
        return res
    res = evaluate_detector(voc_dir, detector, progress=progress, draw_dir=draw_dir)
    write_record(model_dir, voc_dir, fp, res)
    return res


def print_eval(res: dict, as_json: bool = False) -> None:
    """The data's problems on stderr, then the result: one JSON object, or SHOWN's metrics."""
    print(Problems.from_dict(res["problems"]).summary(), file=sys.stderr)
    if as_json:
        print(json.dumps(res))
    else:
        for k in SHOWN:
            print(f"{k:<20}{res[k]:.4f}")


def main(args) -> int:
    """`dnnlab detect eval VOC_DIR --model DIR`: the inputs and --draw checked before the
    detector is loaded, then the figures (a stored result for the same inputs is reused)."""
    check_eval_inputs(args.voc_dir, args.model, args.draw, args.overwrite)
    detector = load_detector(args)
    res = evaluate_once(
        args.voc_dir,
        args.model,
        detector,
        draw_dir=args.draw,
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    print_eval(res, as_json=args.json)
    return 0
