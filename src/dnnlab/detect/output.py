"""`dnnlab detect run`'s outputs: an annotated image and a JSON record per photo, written
only where they replace nothing (unless overwrite); and the summaries the `dnnlab detect`
commands print."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from dnnlab.detect.detector import Detector, load_detector
from dnnlab.detect.voc import load_rgb
from dnnlab.errors import InputError
from dnnlab.utils.atomic import atomic_file, atomic_write_json
from dnnlab.utils.images import UnreadableImage
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import check_output, mark


def draw(img: np.ndarray, boxes, scores, path: Path, label: str, gt=None) -> None:
    """The photo with detections (red, "label score") and target boxes (green), as JPEG."""
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for g in gt if gt is not None else []:
        d.rectangle([float(v) for v in g], outline=(0, 200, 0), width=2)
    for box, sc in zip(boxes, scores, strict=True):
        d.rectangle([float(v) for v in box], outline=(255, 40, 40), width=3)
        d.text((float(box[0]) + 3, float(box[1]) + 2), f"{label} {sc:.2f}", fill=(255, 255, 0))
    with atomic_file(path, "wb") as fh:
        im.save(fh, format="JPEG", quality=90)


def output_files(images: list[Path], out_dir: Path) -> list[Path]:
    """What `detect run` writes: STEM.json and STEM.jpg in out_dir for each photo."""
    return [out_dir / f"{p.stem}{ext}" for p in images for ext in (".json", ".jpg")]


def check_detection_outputs(
    images: list[Path], out_dir: Path, overwrite: bool, model_dir: Path | None = None
) -> None:
    """Each photo writes STEM.json and STEM.jpg: refuse, before any work is done, through
    the write gate (utils/outputs.py), an out_dir that is a photo's own folder or the
    model's (they are inputs) or a folder of the user's (never, even with overwrite), and
    (unless overwrite) outputs already in out_dir; and two inputs with one stem."""
    files = output_files(images, out_dir)
    check_output(
        out_dir,
        "--out",
        "detect run",
        inputs=[*images, model_dir],
        files=files,
        overwrite=overwrite,
    )
    seen: dict[str, Path] = {}
    for p in images:
        if p.stem in seen:
            raise InputError(
                f"{seen[p.stem]} and {p} would both be written as "
                f"{out_dir / p.stem}.json/.jpg; run them into different --out "
                "folders"
            )
        seen[p.stem] = p


def run_detector(
    images, detector: Detector, out_dir, progress=True, overwrite: bool = False, model_dir=None
) -> list[dict]:
    """Detect on each photo; one record per input: {"image", "detections", "seconds"}, or
    {"image", "error"} for a photo that could not be read (the others go on)."""
    images = [Path(i) for i in images]
    out_dir = Path(out_dir).expanduser()  # as the write gate takes it
    check_detection_outputs(images, out_dir, overwrite, model_dir)
    bar = dict(desc="detect", unit="img", disable=not progress)
    with folder_lock(out_dir):
        mark(out_dir, "detect run")
        return [detect_one(p, detector, out_dir) for p in tqdm(images, **bar)]


def detect_one(p: Path, detector: Detector, out_dir: Path) -> dict:
    """One photo's record, with its JSON and annotated image written to out_dir; a photo
    that cannot be read gives {"image", "error"} and writes nothing."""
    try:
        img = load_rgb(p)
    except UnreadableImage as e:
        return {"image": str(p), "error": f"unreadable image ({e.reason})"}
    r = detector.detect(img)
    dets = [
        {"box": [round(float(v), 1) for v in b], "score": round(float(s), 4)}
        for b, s in zip(r.boxes, r.scores, strict=True)
    ]
    rec = {
        "image": str(p),
        "target": detector.config.target,
        "detections": dets,
        "seconds": round(r.seconds, 3),
    }
    atomic_write_json(out_dir / f"{p.stem}.json", rec)
    draw(img, r.boxes, r.scores, out_dir / f"{p.stem}.jpg", detector.config.target)
    return rec


def print_run(results: list[dict], out_dir) -> int:
    """`detect run`'s report: a line per photo (failures on stderr), then the totals.
    Returns the number of photos that failed."""
    for r in results:
        if "error" in r:
            print(f"{r['image']}: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['image']}: {len(r['detections'])} detections, {r['seconds']:.2f} s")
    failed = sum("error" in r for r in results)
    where = (
        f"annotated images and JSON in {out_dir}/" if failed < len(results) else "nothing written"
    )
    print(f"{len(results) - failed} of {len(results)} photos done, {failed} failed; {where}")
    return failed


def main(args) -> int:
    """`dnnlab detect run PHOTO... --model DIR`: every output checked before the detector is
    loaded, then a line per photo; exit status 1 when any photo failed."""
    check_detection_outputs(
        [Path(i) for i in args.images], Path(args.out), args.overwrite, args.model
    )
    detector = load_detector(args)
    results = run_detector(
        args.images,
        detector,
        args.out,
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
        model_dir=args.model,
    )
    return 1 if print_run(results, args.out) else 0
