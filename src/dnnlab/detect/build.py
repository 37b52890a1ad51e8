"""`dnnlab detect build`: proposals, IoU labels and one index file of (image, box, label).

OUT/index.csv holds one row per labelled box; OUT/build.json the settings (the detector's
target and proposal settings, the labelling settings) and the input problems found.
Nothing is written into the VOC folder: proposals are cached under OUT/cache/proposals.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dnnlab.detect.config import BuildConfig, ProposalConfig
from dnnlab.detect.labelling import label_proposals, sample_rows
from dnnlab.detect.proposals import proposal_recall, proposals_for
from dnnlab.detect.voc import Problems, read_voc_dir
from dnnlab.errors import InputError
from dnnlab.settings import given_flags
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import check_output, mark, remove_ours
from dnnlab.utils.records import read_json
from dnnlab.utils.spare_inputs import check_outputs_spare_inputs

SPLITS = ("train", "val")
INDEX_COLS = ["image", "x1", "y1", "x2", "y2", "label", "iou", "split", "gx1", "gy1", "gx2", "gy2"]
# An unfinished end-to-end fine-tuning's last epoch (detect/train.py), deleted once it ends.
FINE_TUNE_FILE = "fine_tune.pt"
# What a trained detector adds to a build folder: stale once the index is rebuilt.
TRAINED_FILES = ("model.pt", "train.json", "head_curves.png", FINE_TUNE_FILE)


def split_images(n: int, val_frac: float, seed: int) -> np.ndarray:
    """'train'/'val' per image (by image, never by box), seeded."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = int(round(n * val_frac)) if n > 1 else 0
    out = np.array(["train"] * n, dtype=object)
    out[order[:n_val]] = "val"
    return out


def check_build_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace a build that a trained detector came from, unless overwrite."""
    trained = out / "model.pt"
    if trained.exists() and not overwrite:
        raise InputError(
            f"{trained} holds a detector trained on this folder's index; pass "
            "--overwrite to rebuild (the trained detector is then removed), or "
            "build into another folder"
        )


def build(
    voc_dir,
    out,
    target: str = "cat",
    proposals: ProposalConfig | None = None,
    cfg: BuildConfig | None = None,
    progress=True,
    overwrite=False,
) -> dict:
    """Write OUT/index.csv and OUT/build.json; returns build.json's content. OUT is never
    the VOC folder, and one process at a time writes it (its lock)."""
    out = Path(out).expanduser()  # as the write gate takes it
    check_output(out, "--out", "detect build", inputs=[voc_dir])
    with folder_lock(out):
        return _build_locked(voc_dir, out, target, proposals, cfg, progress, overwrite)


def _build_locked(voc_dir, out: Path, target, proposals, cfg, progress, overwrite) -> dict:
    """build() once the lock of OUT is held."""
    proposals, cfg = proposals or ProposalConfig(), cfg or BuildConfig()
    t0 = time.perf_counter()
    check_build_target(out, overwrite)
    problems = Problems()
    items = read_voc_dir(voc_dir, problems, target)  # every input checked before any write
    check_outputs_spare_inputs(
        [p for i in items for p in (i.xml, i.image)],
        out,
        [out / f for f in ("index.csv", "build.json", *TRAINED_FILES)],
    )
    if not any(len(i.boxes(target)) for i in items):
        raise InputError(
            f"{voc_dir}: no {target!r} box in any usable annotation; nothing to "
            f"train on (--target {target}; {problems.summary()})"
        )
    mark(out, "detect build")
    props = proposals_for(
        [i.image for i in items], proposals, out / "cache" / "proposals", cfg.workers, progress
    )
    splits = split_images(len(items), cfg.val_frac, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for item, p, split in zip(items, props, splits, strict=True):
        rows += photo_rows(item, p, split, target, cfg, rng)
    counts = {s: [sum(r[5] == k for r in rows if r[7] == s) for k in (0, 1)] for s in SPLITS}
    if counts["train"][1] == 0:
        raise InputError(f"{voc_dir}: no {target!r} box among the training photos")
    buf = io.StringIO()
    csv.writer(buf).writerows([INDEX_COLS, *rows])
    info = {
        "target": target,
        "proposals": asdict(proposals),
        "config": asdict(cfg),
        "voc_dir": str(Path(voc_dir).resolve()),
        "images": len(items),
        "images_by_split": {s: int((splits == s).sum()) for s in SPLITS},
        "boxes": {s: {"negative": c[0], "positive": c[1]} for s, c in counts.items()},
        "proposals_per_image": float(np.mean([len(p) for p in props])),
        "proposal_recall": proposal_recall(props, [i.boxes(target) for i in items]),
        "problems": problems.to_dict(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / "index.csv", buf.getvalue())
    atomic_write_json(out / "build.json", info)
    # The new index is in place: a detector trained on the old one no longer describes it.
    for name in TRAINED_FILES:
        remove_ours(out / name, "detect build", within=out)
    return info


def photo_rows(item, props, split: str, target: str, cfg: BuildConfig, rng) -> list[list]:
    """One photo's index rows (INDEX_COLS): its proposals labelled, then sampled."""
    boxes, labels, ious, match = label_proposals(
        props, item.boxes(target), cfg.pos_iou, cfg.neg_iou, cfg.min_area
    )
    hard = item.other_boxes(target)
    keep = sample_rows(
        boxes, labels, ious, hard, rng, cfg.max_neg_per_image, cfg.near_iou, cfg.hard_iou
    )
    image = str(item.image.resolve())
    return [
        [
            image,
            *box_text(boxes[k]),
            int(labels[k]),
            f"{float(ious[k]):.4f}",
            split,
            *("" if np.isnan(v) else f"{float(v):.2f}" for v in match[k]),
        ]
        for k in keep
    ]


def box_text(box) -> list[str]:
    """A box's coordinates as index.csv holds them: two decimals."""
    return [f"{float(v):.2f}" for v in box]


def read_index(out) -> list[dict]:
    """The rows of OUT/index.csv, with box, label, iou and gt (the matched target box or
    None) parsed; a missing, truncated or malformed file is an InputError naming it."""
    f = Path(out) / "index.csv"
    if not f.is_file():
        raise InputError(f"{f}: no index; run `dnnlab detect build VOC_DIR --out {out}`")
    try:
        text = f.read_text(encoding="utf-8-sig")  # a re-saved file's byte-order mark is no cell
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{f}: cannot be read ({e})") from None
    if not text.endswith("\n"):  # every row the build writes ends with a line break
        raise InputError(
            f"{f}: truncated (its last line is incomplete); rebuild it with `dnnlab detect build`"
        )
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header != INDEX_COLS:
            raise InputError(
                f"{f}: not a dnnlab detector index (header {header}); "
                "rebuild it with `dnnlab detect build`"
            )
        rows = [_index_row(r, f, n) for n, r in enumerate(reader, start=2)]
    except csv.Error as e:
        raise InputError(f"{f}: cannot be read as CSV ({e})") from None
    if not rows:
        raise InputError(f"{f}: holds no boxes; rebuild it with `dnnlab detect build`")
    return rows


def _index_row(r: list[str], f: Path, line: int) -> dict:
    try:
        if len(r) != len(INDEX_COLS):
            raise ValueError(f"{len(r)} fields, not {len(INDEX_COLS)}")
        d = dict(zip(INDEX_COLS, r, strict=True))
        d["box"] = [float(d[k]) for k in ("x1", "y1", "x2", "y2")]
        d["label"] = int(d["label"])
        d["iou"] = float(d["iou"])
        g = [d[k] for k in ("gx1", "gy1", "gx2", "gy2")]
        d["gt"] = [float(v) for v in g] if all(g) else None
        if d["label"] not in (0, 1) or d["split"] not in ("train", "val"):
            raise ValueError(f"label {d['label']}, split {d['split']!r}")
        numbers = d["box"] + [d["iou"]] + (d["gt"] or [])
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"a coordinate or IoU that is not a finite number ({numbers})")
    except ValueError as e:
        raise InputError(
            f"{f} line {line}: malformed row ({e}); the file is truncated or "
            "edited: rebuild it with `dnnlab detect build`"
        ) from None
    return d


def read_build(out) -> dict:
    """OUT/build.json; a missing or malformed file is an InputError naming it."""
    f = Path(out) / "build.json"
    if not f.is_file():
        raise InputError(f"{f}: no build record; run `dnnlab detect build VOC_DIR --out {out}`")
    try:
        info = read_json(f, ("proposals", "target"))
        info["proposals"] = ProposalConfig(**info["proposals"])
        if not isinstance(info["target"], str):
            raise TypeError("target is not a string")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{f}: not a dnnlab build record ({type(e).__name__}: {e}); rebuild "
            "with `dnnlab detect build`"
        ) from None
    return info


def group_by_image(rows: list[dict], idx=None) -> dict[str, list[int]]:
    """{image path: its row numbers}, in first-seen order, over idx (default: every row)."""
    by_image: dict[str, list[int]] = {}
    for i in range(len(rows)) if idx is None else idx:
        by_image.setdefault(rows[i]["image"], []).append(i)
    return by_image


def build_summary(info: dict) -> str:
    """`detect build`'s report of the info dict build() returns: sizes, proposal recall and
    the problems found in the VOC files."""
    pr = info["proposal_recall"]
    return (
        f"{info['images']} images ({info['images_by_split']}), boxes {info['boxes']}, "
        f"{info['proposals_per_image']:.0f} proposals/image, proposal recall "
        f"{pr['recall50']:.3f} @0.5, {pr['recall70']:.3f} @0.7; {info['seconds']} s\n"
        + Problems.from_dict(info["problems"]).summary()
    )


def main(args) -> int:
    """`dnnlab detect build VOC_DIR --out DIR`, from its parsed flags."""
    info = build(
        args.voc_dir,
        args.out,
        args.target,
        ProposalConfig(**given_flags(args, ProposalConfig)),
        BuildConfig(**given_flags(args, BuildConfig)),
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    print(build_summary(info))
    return 0
