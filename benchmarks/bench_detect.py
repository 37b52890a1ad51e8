"""Detection speed on this CPU, on the same proposals of the same photos:

  * the course project's loop: cut, resize (224) and classify one proposal at a time;
  * batched crops: the same crops and the same numbers, 16 to a backbone call;
  * the model's own features (default "roi": one backbone pass per photo, RoIAlign per box);

and the per-photo detection time, proposals included, with the detection settings the
model loads with beside those before issue 22 (no IoU predictor, no test-time flip) and with
test-time flip, on the same photos in the same run (--square 640 resizes every photo to
640 x 640 first, the size of the issue's target).

    python benchmarks/bench_detect.py --model det/ --images ../shared/data/cats-voc/valid \
        --square 640

With --train BUILD (a `detect build` folder) it times the commands instead, before and after
in one run (issue 38): for each --variant NAME CHECKOUT FLAGS, in the order given, a copy of
the build's index.csv and build.json (no feature cache) is trained by `python -m dnnlab
detect train COPY --backbone-weights W FLAGS` with CHECKOUT/src first on the module path
(the code of that checkout: "." is this one, a `git worktree` of an older commit is
"before"), then `python -m dnnlab detect run` detects on the --n photos of --images resized
to --square (saved as JPEG, quality 95) with the trained model; each photo's "seconds" (its
JSON; selective search included) gives the median and the slowest. Printed per variant:
training wall time, its CPU time and peak RSS (the child's rusage), detection seconds.

    git -C . worktree add /tmp/before HEAD~3   # the code before, beside this checkout
    python benchmarks/bench_detect.py --train det/ --images ../shared/data/cats-voc/valid \
        --square 640 --backbone-weights ../shared/weights/mobilenet_v2_imagenet_1001.pth \
        --variant before /tmp/before "" --variant frozen . "--no-end-to-end" --variant after . ""
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dnnlab.detect.config import FeatureSpec
from dnnlab.detect.detector import Detector
from dnnlab.detect.features import crop_batch, run_backbone
from dnnlab.detect.voc import load_rgb
from dnnlab.errors import InputError


def square(img: np.ndarray, side: int) -> np.ndarray:
    """The photo resized to side x side (bilinear); unchanged for side 0."""
    if not side:
        return img
    return np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))


def time_detection(model: Detector, photos) -> tuple[float, float, float]:
    """(median seconds a photo, median of its proposals' part, the slowest) of detect()."""
    times, prop_times = [], []
    for img in photos:
        r = model.detect(img)
        times.append(r.seconds)
        prop_times.append(r.proposal_seconds)
    return statistics.median(times), statistics.median(prop_times), max(times)


@torch.no_grad()
def one_at_a_time(model: Detector, img, boxes):
    """The course project's loop: crop, resize and embed each proposal on its own."""
    spec = model.spec
    return torch.cat(
        [
            run_backbone(
                model.features,
                crop_batch(img, b[None], spec.crop_size, spec.context),
                model.mean,
                model.std,
                False,
            )[0].mean((2, 3))
            for b in boxes
        ]
    )


def run_timed(argv: list[str], src: Path, log: Path) -> dict:
    """One command in a child process with src first on its module path, its output in log:
    {"wall", "cpu" (user + system seconds), "peak_rss_mb"}; a failure names the log."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)  # reaped here for its own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise InputError(f"{shlex.join(argv)} failed (exit {proc.returncode}); its output: {log}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}


def time_commands(args, paths: list[Path]) -> None:
    """--train: each variant's `detect train` on a copy of the build, then `detect run` on
    the photos at --square; one line per variant."""
    build = Path(args.train)
    for name, checkout, flags in args.variant:
        if not (Path(checkout) / "src" / "dnnlab" / "__init__.py").is_file():
            raise InputError(
                f"--variant {name}: {checkout} is not a dnnlab checkout (no src/dnnlab)"
            )
        shlex.split(flags)  # a quoting error is named before any work
    for f in ("index.csv", "build.json"):
        if not (build / f).is_file():
            raise InputError(f"--train: {build / f} is missing; pass a `detect build` folder")
    if not Path(args.backbone_weights or "").is_file():
        raise InputError("--backbone-weights: pass the MobileNetV2 weights file (with --train)")
    work = Path(tempfile.mkdtemp(prefix="bench_detect-"))
    shown = work / "photos"
    shown.mkdir()
    for p in paths:  # the photos at --square, one JPEG each, read by `detect run`
        Image.fromarray(square(load_rgb(p), args.square)).save(shown / f"{p.stem}.jpg", quality=95)
    photos = sorted(shown.iterdir())
    py = [sys.executable, "-m", "dnnlab", "detect"]
    for name, checkout, flags in args.variant:
        det = work / f"det-{name}"
        det.mkdir()
        for f in ("index.csv", "build.json"):
            shutil.copy2(build / f, det / f)
        src = Path(checkout).resolve() / "src"
        train = [*py, "train", str(det), "--backbone-weights", args.backbone_weights]
        t = run_timed([*train, *shlex.split(flags)], src, work / f"train-{name}.log")
        run = [*py, "run", *map(str, photos), "--model", str(det), "--out", str(work / name)]
        run_timed(run, src, work / f"run-{name}.log")
        secs = [json.loads((work / name / f"{p.stem}.json").read_text())["seconds"] for p in photos]
        print(
            f"{name} ({checkout}, flags {flags!r}): detect train {t['wall'] / 60:.1f} min wall, "
            f"{t['cpu'] / 60:.1f} min CPU, peak RSS {t['peak_rss_mb'] / 1024:.1f} GB; detect run "
            f"on {len(photos)} photos{f' at {args.square} x {args.square}' if args.square else ''}"
            f": median {statistics.median(secs):.2f} s/photo, max {max(secs):.2f} s",
            flush=True,
        )
    print(f"models, logs and detections in {work}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="a trained detector's folder (detection settings timed)")
    ap.add_argument("--train", help="a `detect build` folder: time the commands per --variant")
    ap.add_argument(
        "--variant",
        nargs=3,
        action="append",
        metavar=("NAME", "CHECKOUT", "FLAGS"),
        help="with --train: a name, a dnnlab checkout whose code runs, extra `detect train` "
        "flags (one string); repeat for before and after",
    )
    ap.add_argument("--backbone-weights", help="with --train: the MobileNetV2 weights file")
    ap.add_argument("--images", required=True, help="a folder of photos")
    ap.add_argument("--n", type=int, default=20, help="photos to time")
    ap.add_argument("--compare", type=int, default=2, help="photos for the one-at-a-time loop")
    ap.add_argument("--square", type=int, default=0, help="resize photos to N x N (0: as is)")
    args = ap.parse_args()
    if (args.model is None) == (args.train is None):
        raise InputError("pass --model (detection settings) or --train (the commands), one of them")
    if args.train is not None and not args.variant:
        raise InputError("--train: pass at least one --variant NAME CHECKOUT FLAGS")
    if args.n < 1 or args.compare < 0 or args.square < 0:
        raise InputError("--n must be at least 1, --compare and --square at least 0")
    paths = sorted(
        p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )[: args.n]
    if not paths:
        raise InputError(f"--images: no .jpg, .jpeg or .png photo in {args.images}")
    if args.train is not None:
        time_commands(args, paths)
        return 0
    torch.set_grad_enabled(False)
    model = Detector.load(args.model)
    loaded = model.config.detection
    photos = [square(load_rgb(p), args.square) for p in paths]
    rows = {
        "before issue 22 (no IoU predictor, no flip)": replace(
            loaded, iou_confidence="off", flip_test=False
        ),
        f"as loaded (iou-confidence {loaded.iou_confidence}, flip-test {loaded.flip_test})": (
            loaded
        ),
        "as loaded, with --flip-test": replace(loaded, flip_test=True),
    }
    base = None
    for name, detection in rows.items():
        model.set_detection(detection)
        med, props, worst = time_detection(model, photos)
        base = base or med
        print(
            f"{len(photos)} photos{f' at {args.square} x {args.square}' if args.square else ''}"
            f", {name}: median {med:.2f} s/photo ({med / base:.2f}x; proposals {props:.2f} s), "
            f"max {worst:.2f} s",
            flush=True,
        )
    model.set_detection(loaded)
    if args.compare:
        compare_loops(model, photos[: args.compare])
    return 0


def compare_loops(model: Detector, photos) -> None:
    """The course project's one-at-a-time loop, batched crops and the model's own features,
    on the same proposals of the same photos."""
    norm = (model.mean.flatten().tolist(), model.std.flatten().tolist())
    crops_cfg = replace(model.config, features=FeatureSpec("crops", 1, model.spec.context))
    crops = Detector(crops_cfg, model.features, norm).eval()
    # One regression round, as the comparison has always been timed.
    one_round = replace(model.config.detection, refine_steps=1)
    scorer = Detector(
        replace(model.config, detection=one_round),
        model.features,
        norm,
        model.head,
        model.regressor,
        model.regressor2,
    ).eval()
    t_seed = t_batch = t_own = 0.0
    n = 0
    for img in photos:
        boxes = model.propose(img)
        t0 = time.perf_counter()
        a = crops.embed(img, boxes)
        t_batch += time.perf_counter() - t0
        t0 = time.perf_counter()
        b = one_at_a_time(crops, img, boxes)
        t_seed += time.perf_counter() - t0
        t0 = time.perf_counter()
        scorer.score_boxes(img, boxes)
        t_own += time.perf_counter() - t0
        n += len(boxes)
        assert torch.allclose(a, b, atol=1e-3), "batched and one-at-a-time features differ"
    print(
        f"{n} proposals of {len(photos)} photos: the course project's one-at-a-time loop "
        f"{t_seed:.1f} s, batched crops {t_batch:.1f} s ({t_seed / t_batch:.2f}x faster, same "
        f"features), the model's {model.spec.mode!r} features {t_own:.2f} s "
        f"({t_seed / t_own:.0f}x faster than the one-at-a-time loop)"
    )


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except InputError as e:
        raise SystemExit(f"bench_detect.py: {e}") from None
