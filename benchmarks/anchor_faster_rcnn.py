"""The anchor (issue 38): torchvision's Faster R-CNN on the cat detector's backbone and folds.

What a user would reach for instead of dnnlab's R-CNN: torchvision's `FasterRCNN` built as in
its docstring's MobileNetV2 example (the backbone's `features`, out_channels 1280, one map at
stride 32; an AnchorGenerator of 5 sizes x 3 aspect ratios on it; MultiScaleRoIAlign 7 x 7
on that map), its backbone the same ImageNet MobileNetV2 weights dnnlab's detector loads
(`dnnlab.detect.features.load_backbone`, the same input normalization), the photos' longer
side resized to --image-size (640, dnnlab's `features.image_size`). BatchNorm stays as loaded
(the shared weights fold it into the convolutions; batches of two photos cannot estimate
it), as dnnlab's fine-tuning keeps it. Blocks before --trainable-from stay frozen.

Trained on each cross-validation fold's training photos (the same folds as
benchmarks/cv_detect.py: `fold_ids`, the photos in `voc_items` order) with the augmentation
dnnlab's detector uses, mirrored photos (each photo mirrored left-right with probability 0.5
at each step; dnnlab fits its regressors on the mirrored photos), with the recipe of
torchvision's own detection fine-tuning tutorial (TorchVision Object Detection Finetuning,
PennFudan, also about 170 photos): SGD at 0.005, momentum 0.9, weight decay 0.0005, two
photos a step, 10 epochs, the learning rate x 0.1 every 3 epochs, a linear warm-up from
1/1000 over the first epoch's steps; torchvision's defaults otherwise (--roi-batch: 512
sampled RoIs a photo). Scored on the held-out fold with dnnlab's own `detect
eval` code (`evaluate.average_precisions`: AP50, AP75, mAP), without test-time flip (what
torchvision's model does; dnnlab's defaults flip at test time). Each fold's record (figures,
training seconds, detection seconds a photo, every held-out photo's detections) is appended
to --out as the fold finishes; a rerun skips the folds already there with the same settings.
At the end the anchor's rows are printed beside dnnlab's rows of cv_detect.py's results
file (--compare) on exactly the folds the anchor has, then the anchor minus each dnnlab row
on the same photos with a 95 % interval over the held-out photos (cv_detect.print_paired).

    python benchmarks/anchor_faster_rcnn.py ../shared/data/cats-voc/train \\
        ../shared/data/cats-voc/valid \\
        --backbone-weights ../shared/weights/mobilenet_v2_imagenet_1001.pth \\
        --out /tmp/anchor/results.jsonl --compare /tmp/cv/results.jsonl --folds 0 --threads 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from cv_detect import (
    append_record,
    detections_of,
    fold_figures,
    fold_ids,
    print_paired,
    print_summary,
    read_records,
    summarize,
    voc_items,
)
from dnnlab.detect.boxes import flip_boxes
from dnnlab.detect.features import load_backbone
from dnnlab.detect.voc import load_rgb
from dnnlab.errors import InputError

NAME = "faster-rcnn (torchvision, MobileNetV2)"


def make_model(weights: str, image_size: int, trainable_from: int) -> FasterRCNN:
    """torchvision's FasterRCNN on the shared MobileNetV2's features, as its docstring's
    example; blocks features[:trainable_from] and every BatchNorm frozen."""
    features, norm = load_backbone(weights)
    features.out_channels = 1280
    for k, block in enumerate(features):
        block.requires_grad_(k >= trainable_from)
    for m in features.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(False)
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(
        features,
        num_classes=2,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi,
        min_size=image_size,
        max_size=image_size,
        image_mean=list(norm[0]),
        image_std=list(norm[1]),
    )


def train_mode(model: FasterRCNN) -> None:
    """Training mode with every BatchNorm in eval (the loaded statistics)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def lr_factor(step: int, per_epoch: int, warmup: int) -> float:
    """The tutorial's schedule: linear warm-up from 1/1000 over the first `warmup` steps,
    x 0.1 every 3 epochs (StepLR(step_size=3, gamma=0.1))."""
    w = 1.0 if step >= warmup else 0.001 + (1 - 0.001) * step / warmup
    return w * 0.1 ** (step // per_epoch // 3)


def train(model, photos: list[dict], args, seed: int) -> list[dict]:
    """SGD over the photos ({"image": (3, H, W) in [0, 1], "gt": (g, 4)}), each mirrored
    with probability 0.5 at each step; one dict per epoch (loss, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=0.0005)
    per_epoch = math.ceil(len(photos) / args.batch)
    warmup = min(1000, max(1, per_epoch - 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, per_epoch, warmup))
    hist = []
    for epoch in range(args.epochs):
        train_mode(model)
        t0, c0, losses = time.perf_counter(), time.process_time(), []
        order = torch.randperm(len(photos), generator=gen).tolist()
        flips = torch.rand(len(photos), generator=gen) < 0.5
        for s in range(0, len(order), args.batch):
            images, targets = [], []
            for i in order[s : s + args.batch]:
                img, gt = photos[i]["image"], torch.from_numpy(photos[i]["gt"])
                if flips[i]:
                    img, gt = img.flip(-1), flip_boxes(gt, img.shape[-1])
                images.append(img)
                targets.append(
                    {"boxes": gt.reshape(-1, 4), "labels": torch.ones(len(gt), dtype=int)}
                )
            loss = sum(model(images, targets).values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}: loss {float(loss)}; lower --lr")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        hist.append(
            {
                "epoch": epoch + 1,
                "loss": statistics.fmean(losses),
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
            }
        )
        print(
            f"  epoch {epoch + 1}/{args.epochs}: loss {hist[-1]['loss']:.3f}, "
            f"{hist[-1]['seconds']:.0f} s wall, {hist[-1]['cpu_seconds']:.0f} s CPU "
            f"({hist[-1]['cpu_seconds'] / len(photos):.2f} CPU s/photo)",
            flush=True,
        )
    return hist


@torch.inference_mode()
def detect(model, photos: list[dict]) -> tuple[list[dict], list[float]]:
    """Each photo's detections (detections_of), detection seconds and CPU seconds."""
    model.eval()
    out, secs, cpu = [], [], []
    for ph in photos:
        t0, c0 = time.perf_counter(), time.process_time()
        r = model([ph["image"]])[0]
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        out.append(detections_of(r["boxes"].numpy(), r["scores"].numpy(), ph["gt"]))
    return out, secs, cpu


def as_float(photos: list[dict], ids: list[int]) -> list[dict]:
    """The photos ids as the model takes them: (3, H, W) floats in [0, 1], and cat boxes."""
    return [{"image": photos[i]["rgb"].float() / 255, "gt": photos[i]["gt"]} for i in ids]


def check_args(args) -> None:
    """Every flag in range before any work, naming the flag."""
    checks = [
        ("--k", args.k >= 2, "at least 2"),
        ("--photos", args.photos is None or args.photos >= 2, "at least 2"),
        ("--epochs", args.epochs >= 1, "at least 1"),
        ("--batch", args.batch >= 1, "at least 1"),
        ("--lr", args.lr > 0 and math.isfinite(args.lr), "a positive number"),
        ("--roi-batch", args.roi_batch >= 1, "at least 1"),
        ("--image-size", 32 <= args.image_size <= 4096, "32 to 4096"),
        ("--trainable-from", 0 <= args.trainable_from <= 19, "0 to 19 (19: backbone frozen)"),
        ("--threads", args.threads >= 1, "at least 1"),
        ("--limit-train", args.limit_train is None or args.limit_train >= 1, "at least 1"),
        ("--limit-test", args.limit_test is None or args.limit_test >= 1, "at least 1"),
    ]
    for flag, ok, want in checks:
        if not ok:
            raise InputError(f"{flag}: must be {want}")
    for f in args.folds or []:
        if not 0 <= f < args.k:
            raise InputError(f"--folds: {f} is not a fold of --k {args.k} (0 to {args.k - 1})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("voc_dirs", nargs="+")
    ap.add_argument("--backbone-weights", required=True)
    ap.add_argument("--out", required=True, help="results file (jsonl), appended per fold")
    ap.add_argument("--compare", help="cv_detect.py's results file: its rows on the same folds")
    ap.add_argument("--k", type=int, default=5, help="number of folds (RESULTS section 12: 5)")
    ap.add_argument("--folds", type=int, nargs="+", help="which folds to run (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2, help="photos per step")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument(
        "--roi-batch", type=int, default=512, help="RoIs sampled a photo for the box head"
    )
    ap.add_argument("--image-size", type=int, default=640, help="the photos' longer side")
    ap.add_argument(
        "--trainable-from",
        type=int,
        default=7,
        help="MobileNetV2 features[N:] are trained (0: all 19 blocks; 7: from the 64-channel "
        "stride-16 stage on)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--photos", type=int, help="smoke test: the first N photos only (other folds)")
    ap.add_argument(
        "--limit-train", type=int, help="smoke test: the fold's first N training photos"
    )
    ap.add_argument("--limit-test", type=int, help="smoke test: the fold's first N held-out photos")
    args = ap.parse_args()
    check_args(args)
    items = voc_items(args.voc_dirs)[: args.photos]
    if args.k > len(items):
        raise InputError(f"--k: {args.k} folds of {len(items)} photos")
    torch.set_num_threads(args.threads)
    settings = {
        k: getattr(args, k)
        for k in ("k", "epochs", "batch", "lr", "roi_batch", "image_size", "trainable_from")
        + ("limit_train", "limit_test")
    }
    settings["photos"] = len(items)
    done = {(r["seed"], r["fold"]) for r in read_records(args.out) if r.get("settings") == settings}
    photos = None
    for seed in args.seeds:
        for fold in args.folds if args.folds is not None else range(args.k):
            if (seed, fold) in done:
                print(f"seed {seed} fold {fold}: in {args.out}, skipped")
                continue
            if photos is None:  # decoded once, kept as uint8
                photos = [
                    {
                        "rgb": torch.from_numpy(load_rgb(it.image).copy())
                        .permute(2, 0, 1)
                        .contiguous(),
                        "gt": it.boxes("cat"),
                    }
                    for it in items
                ]
            train_ids, test_ids = fold_ids(len(items), args.k, fold)
            train_ids, test_ids = train_ids[: args.limit_train], test_ids[: args.limit_test]
            torch.manual_seed(seed)
            model = make_model(args.backbone_weights, args.image_size, args.trainable_from)
            model.roi_heads.fg_bg_sampler.batch_size_per_image = args.roi_batch
            print(f"seed {seed} fold {fold}: {len(train_ids)} training photos", flush=True)
            t0, c0 = time.perf_counter(), time.process_time()
            hist = train(model, as_float(photos, train_ids), args, seed)
            train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
            dets, secs, cpu = detect(model, as_float(photos, test_ids))
            rec = {
                "name": NAME,
                "settings": settings,
                "seed": seed,
                "fold": fold,
                **fold_figures(dets),
                "train_seconds": train_s,
                "train_cpu_seconds": train_cpu,
                "seconds_per_photo": statistics.median(secs),
                "cpu_seconds_per_photo": statistics.median(cpu),
                "threads": args.threads,
                "epochs": hist,
                "test_ids": test_ids,
                "detections": dets,
            }
            append_record(args.out, rec)
            print(
                f"seed {seed} fold {fold}: AP50 {rec['ap50']:.3f} AP75 {rec['ap75']:.3f} "
                f"mAP {rec['map']:.3f}; training {train_s / 60:.1f} min wall, "
                f"{train_cpu / 60:.1f} min CPU; detection {rec['seconds_per_photo']:.2f} s/photo "
                f"wall, {rec['cpu_seconds_per_photo']:.2f} CPU (medians of {len(secs)})",
                flush=True,
            )
    mine = [r for r in read_records(args.out) if r.get("settings") == settings]
    folds = {r["fold"] for r in mine}
    rows = summarize(mine, folds)
    if args.compare:
        theirs = [
            r
            for r in read_records(args.compare)
            if r.get("k") == args.k and r.get("photos") == len(items) and r["fold"] in folds
        ]
        rows = {**summarize(theirs, folds), **rows}
    print_summary(rows, f"held-out folds {sorted(folds)} of {args.k} (mean ± fold-to-fold SD)")
    if args.compare:
        print(
            "\nPaired by photo, the anchor minus each dnnlab row, 95 % bootstrap interval over "
            "the held-out photos (not over training seeds):"
        )
        for name in dict.fromkeys(r["name"] for r in theirs):
            print_paired(mine + [r for r in theirs if r["name"] == name], name)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except InputError as e:
        raise SystemExit(f"anchor_faster_rcnn.py: {e}") from None
