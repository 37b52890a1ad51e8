"""`dnnlab detect train`: box features, the head, the box regressors -> OUT/model.pt.

By default (`end_to_end`) the head trains with the backbone's blocks from `backbone_from`
on, reading each photo's boxes afresh every step (each epoch saved in DIR/fine_tune.pt, so
an interrupted command goes on from its last epoch, as if uninterrupted); then every
indexed box's features are computed on the tuned backbone. With the backbone frozen
(`--no-end-to-end`) boxes are not augmented (`scale_jitter` reads them at two more fixed
scales), so each box's features are computed once (cached per image and scale, so an
interrupted extraction resumes) and the head trains on the cache. Both go through one loop
(`fit_classifier`); the ridge regressors are fitted afterwards on the features of every
indexed box (boxreg.py). With `hard_negative_rounds` (frozen backbone only), the head is
then trained again on its training set and the training photos' hardest negatives
(mining.py), that many times; the ridge fits read the indexed rows only.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dnnlab.detect.boxes import box_deltas, flip_boxes
from dnnlab.detect.boxreg import fit_regressors
from dnnlab.detect.build import (
    FINE_TUNE_FILE,
    TRAINED_FILES,
    box_text,
    group_by_image,
    read_build,
    read_index,
)
from dnnlab.detect.config import (
    BuildConfig,
    DetectorConfig,
    DetectTrainConfig,
    FeatureSpec,
    HeadConfig,
    RegressorConfig,
    with_preset,
)
from dnnlab.detect.detector import Detector
from dnnlab.detect.features import load_backbone
from dnnlab.detect.localization import fit_iou_predictor, photo_targets
from dnnlab.detect.mining import mine_round, negative_pool
from dnnlab.detect.proposals import proposals_for
from dnnlab.detect.voc import load_rgb
from dnnlab.errors import InputError
from dnnlab.settings import given_flags
from dnnlab.utils.atomic import atomic_torch_save, atomic_write_json
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import check_output, remove_ours
from dnnlab.utils.paths import check_in_folder
from dnnlab.utils.plots import plot_train_curves
from dnnlab.utils.records import content_hash, file_sha256
from dnnlab.utils.safe_load import load_plain


def _feature_key(spec: FeatureSpec, weights: str | None) -> str:
    stamp = (
        [str(Path(weights).resolve()), Path(weights).stat().st_size] if weights else ["torchvision"]
    )
    return content_hash([json.dumps([stamp, asdict(spec)])])


@torch.no_grad()
def embed_index(model: Detector, rows, cache: Path | None, progress=True) -> torch.Tensor:
    """Features of every index row (len(rows), spec.dim), computed per image. With a cache
    they are stored per image as float16 and returned at that precision (what the head
    trains on); without one (a backbone tuned end to end, whose features change as it trains)
    they are returned in float32, unrounded."""
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    feats = torch.empty(len(rows), model.spec.dim)
    model.eval()
    for image, idx in tqdm(
        group_by_image(rows).items(), desc="backbone features", unit="img", disable=not progress
    ):
        boxes = np.array([rows[i]["box"] for i in idx], dtype=np.float32)
        f = None
        if cache is not None:
            key = content_hash([image, boxes.tobytes().hex()])
            f = cache / f"{key}.pt"
            cached = read_cached_features(f)
            if cached is not None:
                feats[idx] = cached
                continue
        out = model.embed(load_rgb(Path(image)), boxes).cpu()
        if f is not None:
            out = out.half()  # half: the grid features are wide
            atomic_torch_save(out, f)
        feats[idx] = out.float()
    return feats


def read_cached_features(f: Path) -> torch.Tensor | None:
    """A photo's cached box features as float, or None when absent or unreadable (a damaged
    cache file is recomputed)."""
    if not f.exists():
        return None
    try:
        t = load_plain(f)
    except Exception:
        return None
    return t.float() if isinstance(t, torch.Tensor) else None


def balanced(
    labels: torch.Tensor, cfg: DetectTrainConfig, gen
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions to train on, class weights)."""
    pos = (labels == 1).nonzero().squeeze(1)
    neg = (labels == 0).nonzero().squeeze(1)
    if cfg.balance == "ratio":
        k = min(len(neg), int(round(cfg.neg_ratio * len(pos))))
        neg = neg[torch.randperm(len(neg), generator=gen)[:k]]
        return torch.cat([pos, neg]).sort().values, torch.ones(2)
    return torch.arange(len(labels)), class_weights(labels)


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    """--balance weights: each class weighed by n / (2 x its count)."""
    n, neg, pos = len(labels), int((labels == 0).sum()), int((labels == 1).sum())
    return torch.tensor([n / (2 * max(neg, 1)), n / (2 * max(pos, 1))])


def _loss_acc(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where fit_classifier keeps an unfinished fit after each epoch, and what it is a fit
    of: `fingerprint` (fine_tune_fingerprint) names everything the fit depends on, and a
    file with another is not resumed. `modules`: what the fit trains (their weights are
    saved with the optimizer's and scheduler's state, `gen`'s and torch's random state, the
    history and the best state), so that the resumed fit is the uninterrupted one (bit for
    bit on a CPU; on a GPU the random state is restored too, but cuDNN's kernels need not
    repeat themselves); which is why a command with --overwrite (a model.pt replaced)
    resumes it too."""

    path: Path
    fingerprint: str
    modules: tuple
    gen: torch.Generator


def fit_classifier(
    tracked,
    param_groups,
    batches,
    train_mode,
    validate_fn,
    weights,
    cfg: DetectTrainConfig,
    checkpoint: EpochCheckpoint | None = None,
):
    """The one training loop: Adam over param_groups, StepLR, cross-entropy with class
    weights; after each epoch `validate_fn()` gives (loss, accuracy) or None; the state of
    `tracked` (a module) with the best validation accuracy (training accuracy without
    validation rows) is kept. `batches()` yields (logits, labels) for one epoch, or
    (logits, labels, another loss) to train on their sum (the history's loss is the
    cross-entropy alone). With `checkpoint`, each epoch's end is saved there and a saved fit
    of the same fingerprint goes on from it. Returns (history, best accuracy, best state,
    the epochs resumed from the checkpoint)."""
    opt = torch.optim.Adam(param_groups)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    hist, best, best_state = [], -1.0, None
    saved = read_epoch_checkpoint(checkpoint)
    if saved is not None:
        try:
            for module, state in zip(checkpoint.modules, saved["modules"], strict=True):
                module.load_state_dict(state)
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            checkpoint.gen.set_state(saved["gen"])
            torch.set_rng_state(saved["rng"])
            if saved.get("cuda_rng"):
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
        except (RuntimeError, ValueError, TypeError, KeyError) as e:  # another code's file
            raise InputError(
                f"{checkpoint.path}: a fine-tuning saved with these settings that this code "
                f"cannot go on from ({type(e).__name__}: {e}); delete it to start over"
            ) from None
        hist, best, best_state = saved["history"], saved["best"], saved["best_state"]
    resumed = len(hist)
    for epoch in range(resumed, cfg.epochs):
        train_mode()
        total = correct = seen = 0.0
        for logits, y, *other_losses in batches(epoch):
            loss = F.cross_entropy(logits, y, weight=weights)
            opt.zero_grad()
            (loss + sum(other_losses)).backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            correct += float((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        sched.step()
        val = validate_fn()
        vl, vacc = val if val is not None else (float("nan"), float("nan"))
        ta = correct / max(seen, 1)
        hist.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / max(seen, 1),
                "train_acc": ta,
                "val_loss": vl,
                "val_acc": vacc,
            }
        )
        score = vacc if val is not None else ta
        if score > best:
            best, best_state = score, copy.deepcopy(tracked.state_dict())
        if checkpoint is not None:  # the last epoch too: a kill after the fit loses nothing
            atomic_torch_save(
                {
                    "fingerprint": checkpoint.fingerprint,
                    "modules": [m.state_dict() for m in checkpoint.modules],
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "gen": checkpoint.gen.get_state(),
                    "rng": torch.get_rng_state(),
                    # The head's dropout on a GPU draws from its own generators.
                    "cuda_rng": torch.cuda.get_rng_state_all()
                    if torch.cuda.is_initialized()
                    else [],
                    "history": hist,
                    "best": best,
                    "best_state": best_state,
                },
                checkpoint.path,
            )
    return hist, best, best_state, resumed


def read_epoch_checkpoint(checkpoint: EpochCheckpoint | None) -> dict | None:
    """The fit saved at `checkpoint.path` when it is one of the same fingerprint; None when
    there is none or it is another fit's (other settings, build or weights: started over,
    and replaced at the first epoch's end). A file that cannot be read as one is refused,
    naming it: it is not deleted, since it is not known to be ours."""
    if checkpoint is None or not checkpoint.path.exists():
        return None
    keys = ("fingerprint", "modules", "optimizer", "scheduler", "gen", "rng", "history")
    keys += ("best", "best_state")
    try:
        saved = load_plain(checkpoint.path)
    except Exception as e:
        saved = e
    if not isinstance(saved, dict) or not all(k in saved for k in keys):
        why = saved if isinstance(saved, Exception) else f"it lacks one of {', '.join(keys)}"
        raise InputError(
            f"{checkpoint.path}: not an unfinished fine-tuning that dnnlab saved ({why}); "
            "delete it to start the fine-tuning over"
        )
    return saved if saved["fingerprint"] == checkpoint.fingerprint else None


def train_head(
    model: Detector, x, y, xva, yva, weights, cfg: DetectTrainConfig, gen, photo_of=None
):
    """The head alone on cached features (x: (n, head_dim), y: (n,)). With scale jitter, x is
    (scales, n, head_dim) and photo_of (n,) each row's photo number: each epoch reads each
    photo's rows at one scale drawn at random."""
    head = model.head

    def batches(epoch):
        xe = x
        if photo_of is not None:
            pick = torch.randint(len(x), (int(photo_of.max()) + 1,), generator=gen)[photo_of]
            xe = x[pick.to(x.device), torch.arange(len(y), device=x.device)]
        perm = torch.randperm(len(xe), generator=gen)
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            yield head(xe[b]), y[b]

    def validate_fn():
        if not len(xva):
            return None
        head.eval()
        with torch.no_grad():
            return _loss_acc(head(xva), yva)

    hist, best, state, _ = fit_classifier(
        head,
        [{"params": head.parameters(), "lr": cfg.lr}],
        batches,
        head.train,
        validate_fn,
        weights,
        cfg,
    )
    return hist, best, state


# torchvision's Faster R-CNN box coder weights (roi_heads: BoxCoder((10, 10, 5, 5))): the
# offsets' scale in the box loss of train_end_to_end, as the anchor trains its box head.
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def box_regression_loss(pred, props, gt, n_rows: int) -> torch.Tensor:
    """Fast R-CNN's box loss as torchvision's roi_heads.fastrcnn_loss computes it: smooth L1
    (beta 1/9) between the predicted offsets `pred` (n, 4) and the offsets from the boxes
    `props` (n, 4) to their targets `gt`, scaled by BOX_CODER_WEIGHTS, summed and divided
    by the batch's rows `n_rows` (positives and negatives)."""
    target = box_deltas(props, gt) * props.new_tensor(BOX_CODER_WEIGHTS)
    return F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum") / n_rows


def train_end_to_end(
    model,
    rows,
    train_idx,
    val_idx,
    labels,
    weights,
    cfg: DetectTrainConfig,
    gen,
    progress,
    checkpoint: EpochCheckpoint | None = None,
):
    """Backbone (its blocks from cfg.backbone_from on) and head together, one photo's boxes
    at a time (one backbone pass per photo in "roi" mode; crops in batches of batch_size).
    BatchNorm keeps ImageNet's statistics: batches of one photo's boxes are far too
    correlated to estimate them.

    With cfg.box_loss, Fast R-CNN's multi-task loss (Girshick 2015, eq. 1): a linear layer
    on each box's features (all of them, the regressors' fine grid too) predicts the offsets
    to its target box, and cfg.box_loss x its smooth L1 loss on the positive rows is added
    to the cross-entropy, so the tuned backbone is trained to keep where the cat is and not
    only whether it is there. The loss is the one torchvision's Faster R-CNN (the anchor,
    benchmarks/anchor_faster_rcnn.py) trains its box head with (box_regression_loss). The
    layer is dropped afterwards: the ridge regressors are fitted on the tuned backbone's
    features as always. With `checkpoint` (of `model`), each epoch is saved there, the box
    layer too, and an interrupted fine-tuning goes on from its last epoch (fit_classifier).
    Returns (history, best accuracy, best state, the epochs resumed)."""
    by_image = group_by_image(rows, train_idx.tolist())
    images = list(by_image)
    chunk = cfg.batch_size if model.spec.mode == "crops" else len(rows)
    box_layer, targeted = None, set()
    if cfg.box_loss:  # zero at the start (Fast R-CNN: N(0, 0.001)), drawing no random numbers
        box_layer = nn.Linear(model.spec.dim, 4).to(cfg.device)
        nn.init.zeros_(box_layer.weight)
        nn.init.zeros_(box_layer.bias)
        # The rows the box loss reads: positives with a target box (Fast R-CNN's foreground).
        targeted = {i for i in train_idx.tolist() if labels[i] == 1 and rows[i]["gt"] is not None}

    def box_loss(x, b):
        pos = [j for j, i in enumerate(b) if i in targeted]
        if not pos:
            return x.new_zeros(())
        props = torch.tensor([rows[b[j]]["box"] for j in pos], dtype=torch.float32)
        gt = torch.tensor([rows[b[j]]["gt"] for j in pos], dtype=torch.float32)
        pred = box_layer(x[pos])
        return cfg.box_loss * box_regression_loss(pred, props.to(x.device), gt.to(x.device), len(b))

    def batches(epoch):
        order = torch.randperm(len(images), generator=gen).tolist()
        for k in tqdm(
            order, desc=f"end-to-end epoch {epoch + 1}", unit="img", disable=not progress
        ):
            idx = by_image[images[k]]
            img = load_rgb(Path(images[k]))
            for s in range(0, len(idx), chunk):
                b = idx[s : s + chunk]
                boxes = np.array([rows[i]["box"] for i in b], dtype=np.float32)
                x = model.embed(img, boxes)
                y = labels[b].to(cfg.device)
                if box_layer is None:
                    yield model.logits(x), y
                else:
                    yield model.logits(x), y, box_loss(x, b)

    def train_mode():
        model.train()
        model.features.eval()

    def validate_fn():
        if not len(val_idx):
            return None
        model.eval()
        xva = embed_index(model, [rows[i] for i in val_idx.tolist()], None, False)
        with torch.no_grad():
            return _loss_acc(model.logits(xva.to(cfg.device)), labels[val_idx].to(cfg.device))

    tuned = model.features[cfg.backbone_from :]  # the earlier blocks stay frozen
    tuned.requires_grad_(True)
    groups = [
        {"params": model.head.parameters(), "lr": cfg.lr},
        {"params": tuned.parameters(), "lr": cfg.backbone_lr},
    ]
    if box_layer is not None:
        groups.append({"params": box_layer.parameters(), "lr": cfg.lr})
        if checkpoint is not None:
            checkpoint = replace(checkpoint, modules=(*checkpoint.modules, box_layer))
    out = fit_classifier(
        model, groups, batches, train_mode, validate_fn, weights.to(cfg.device), cfg, checkpoint
    )
    model.features.requires_grad_(False)
    return out


def train_detector(
    out,
    features: FeatureSpec | None = None,
    head: HeadConfig | None = None,
    regressors: RegressorConfig | None = None,
    cfg: DetectTrainConfig | None = None,
    progress=True,
    overwrite: bool = False,
) -> dict:
    """Train the detector of the build in `out`; writes model.pt, train.json and the head's
    curves. The target and proposal settings come from the build; None: the defaults."""
    features, head = features or FeatureSpec(), head or HeadConfig()
    regressors, cfg = regressors or RegressorConfig(), cfg or DetectTrainConfig()
    if cfg.scale_jitter:
        cfg.jitter_sizes(features)  # --features roi, sizes in range: refused before any work
    out = Path(out).expanduser()  # as the write gate takes it
    check_output(
        out,
        "DIR",
        "detect build",
        inputs=[cfg.backbone_weights],
        files=[out / f for f in TRAINED_FILES],
        overwrite=True,  # a trained model.pt is refused by name without --overwrite, below
    )
    with folder_lock(out, "DIR"):
        return _train_locked(out, features, head, regressors, cfg, progress, overwrite)


def _train_locked(out: Path, features, head, regressors, cfg, progress, overwrite) -> dict:
    """train_detector() once the lock of its folder is held."""
    t0 = time.perf_counter()
    info, rows, labels, tr, va = read_training_set(out, overwrite)
    labelling = build_labelling(out, info) if cfg.hard_negative_rounds else None
    config = DetectorConfig(
        target=info["target"],
        proposals=info["proposals"],
        features=features,
        head=head,
        regressors=regressors,
    )
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    backbone, norm = load_backbone(cfg.backbone_weights)
    model = Detector(config, backbone, norm).to(cfg.device)
    model.features.requires_grad_(False)  # frozen backbone unless end to end
    pick, weights = balanced(labels[tr], cfg, gen)
    seconds: dict[str, float] = {}
    resumed = None  # the fine-tuning's epochs taken from an interrupted command's checkpoint
    if cfg.end_to_end:
        fp = fine_tune_fingerprint(out, config, cfg)
        checkpoint = EpochCheckpoint(out / FINE_TUNE_FILE, fp, (model,), gen)
        hist, best, feats, resumed = _end_to_end_then_features(
            model, rows, tr[pick], va, labels, weights, cfg, gen, progress, seconds, checkpoint
        )
    else:
        first = copy.deepcopy(model.head.state_dict())  # the hard-negative rounds restart here
        cache = out / "cache" / f"features-{_feature_key(features, cfg.backbone_weights)}"
        hist, best, feats = _features_then_head(
            model, rows, cache, tr[pick], va, labels, weights, cfg, gen, progress, seconds
        )
    mined = []
    if cfg.hard_negative_rounds:
        t = time.perf_counter()
        hd, dev = model.spec.head_dim, cfg.device
        hist, best, mined = train_hard_negatives(
            model,
            feats[tr[pick], :hd].to(dev),
            labels[tr[pick]].to(dev),
            feats[va, :hd].to(dev),
            labels[va].to(dev),
            negative_pools(out, info, rows, tr[pick], labelling, progress),
            lambda image: functools.partial(model.embed, load_rgb(Path(image))),
            first,
            (hist, best),
            cfg,
            gen,
            progress,
        )
        seconds["hard_negative_seconds"] = round(time.perf_counter() - t, 2)
    fit_rows = (feats, rows)  # what the ridge fits read: every indexed row (mirrored too)
    if regressors.mirror and (regressors.box_regression or regressors.iou_predictor):
        t_mirror = time.perf_counter()
        xf, rows_f = embed_mirrored(model, rows, progress)
        fit_rows = (torch.cat([feats, xf]), rows + rows_f)
        seconds["mirror_seconds"] = round(time.perf_counter() - t_mirror, 2)
    if regressors.box_regression:
        t_reg = time.perf_counter()
        fit_box_regressors(model, *fit_rows)
        seconds["regressor_seconds"] = round(time.perf_counter() - t_reg, 2)
    if regressors.iou_predictor:
        t_iou = time.perf_counter()
        model.iou_predictor = fit_iou_predictor(
            model, *fit_rows, cfg.seed, regressors.reg_lambda, progress
        ).to(model.mean.device)
        seconds["iou_predictor_seconds"] = round(time.perf_counter() - t_iou, 2)
    model.eval().save(out)
    plot_train_curves(hist, out / "head_curves.png", "head", dpi=90)
    summary = {
        "best_val_acc": best,
        "epochs": hist,
        "train_boxes": len(pick) + sum(r["added"] for r in mined),
        "val_boxes": len(va),
        "hard_negative_rounds": mined,
        "train_config": asdict(cfg),
        "fine_tune_resumed_epochs": resumed,
        **seconds,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "train.json", summary)
    # model.pt and train.json are in place: the unfinished fine-tuning is not needed.
    remove_ours(out / FINE_TUNE_FILE, "detect build", within=out)
    return summary


def read_training_set(out: Path, overwrite: bool):
    """(build record, index rows, labels, training rows' positions, validation rows'), all
    checked before any work: a trained model.pt is replaced only with overwrite."""
    info = read_build(out)
    if (out / "model.pt").exists() and not overwrite:
        raise InputError(
            f"{out / 'model.pt'} holds a trained detector; pass --overwrite to "
            "replace it, or build into another folder"
        )
    rows = read_index(out)
    labels = torch.tensor([r["label"] for r in rows])
    is_val = torch.tensor([r["split"] == "val" for r in rows])
    tr, va = (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)
    if not (labels[tr] == 1).any():
        raise InputError(
            f"{out / 'index.csv'}: no positive box among the training rows; "
            "rebuild with another --target or data"
        )
    return info, rows, labels, tr, va


def build_labelling(out: Path, info: dict) -> BuildConfig:
    """The labelling settings of the build in `out` (build.json's "config"), which the
    hard-negative rounds label the training photos' proposals with; checked before any
    work."""
    f = out / "build.json"
    c = info.get("config")
    keys = ("pos_iou", "neg_iou", "min_area", "workers")
    if not isinstance(c, dict) or any(k not in c for k in keys):
        raise InputError(
            f"{f}: no labelling settings ({', '.join(keys)}), which --hard-negative-rounds "
            "needs; rebuild with `dnnlab detect build`"
        )
    try:
        return BuildConfig(**{k: c[k] for k in keys})
    except InputError as e:
        raise InputError(f"{f}: {e}; rebuild with `dnnlab detect build`") from None


def negative_pools(
    out: Path, info: dict, rows, train_idx, labelling: BuildConfig, progress=True
) -> dict[str, np.ndarray]:
    """{training photo: its negative proposals not among the training rows train_idx}
    (mining.negative_pool), on the build's cached proposals labelled as the build labelled
    them, the boxes in index.csv's two decimals. The training photos only: those of the
    rows the split put in training (the validation photos are never mined)."""
    train_rows = [rows[i] for i in train_idx.tolist()]
    photos = list(group_by_image(rows, [i for i, r in enumerate(rows) if r["split"] == "train"]))
    targets = photo_targets([r for r in rows if r["split"] == "train"])
    props = proposals_for(
        [Path(p) for p in photos],
        info["proposals"],
        out / "cache" / "proposals",
        labelling.workers,
        progress,
    )
    taken = group_by_image(train_rows)
    pools = {}
    for image, p in zip(photos, props, strict=True):
        p = np.array([[float(v) for v in box_text(b)] for b in p.tolist()], np.float32)
        mine = np.array([train_rows[i]["box"] for i in taken.get(image, [])], np.float32)
        pools[image] = negative_pool(
            p.reshape(-1, 4),
            targets[(image, False)],
            labelling.neg_iou,
            labelling.min_area,
            mine,
        )
    return pools


def train_hard_negatives(
    model, x, y, xva, yva, pools, features_of, first, trained, cfg: DetectTrainConfig, gen, progress
):
    """cfg.hard_negative_rounds rounds of hard-negative mining on the head trained on (x, y)
    (head features; `trained`: its (history, best accuracy)): each round adds each photo's
    cfg.hard_negatives_per_image hardest negatives of its pool (pools: {photo: boxes}, which
    the round empties of them; mining.mine_round on the features `features_of(photo)(boxes)`)
    to the training set and trains the head again, from its first weights (`first`), with
    the same recipe (--balance weights: the class weights of the enlarged set). Stops early
    when no pool has a box left. (history, best accuracy of the last round, one record per
    round: the negatives added, the training boxes, the best accuracy)."""
    dev, (hist, best) = x.device, trained
    records = []
    for r in tqdm(
        range(cfg.hard_negative_rounds), desc="hard negatives", unit="round", disable=not progress
    ):
        mined = mine_round(model, pools, features_of, cfg.hard_negatives_per_image)
        if not mined:
            break
        for photo, (pos, _) in mined.items():
            pools[photo] = np.delete(pools[photo], pos, 0)
        xn = torch.cat([f[:, : model.spec.head_dim] for _, f in mined.values()]).to(dev)
        x, y = torch.cat([x, xn]), torch.cat([y, y.new_zeros(len(xn))])
        weights = class_weights(y) if cfg.balance == "weights" else torch.ones(2)
        model.head.load_state_dict(first)
        hist, best, state = train_head(model, x, y, xva, yva, weights.to(dev), cfg, gen)
        model.head.load_state_dict(state)
        records.append({"round": r + 1, "added": len(xn), "train_boxes": len(y), "best": best})
    return hist, best, records


def _features_then_head(
    model, rows, cache, train_idx, val_idx, labels, weights, cfg, gen, progress, seconds
):
    """Frozen backbone: every row's features (cached), then the head on them."""
    t = time.perf_counter()
    feats = embed_index(model, rows, cache, progress)
    seconds["feature_seconds"] = round(time.perf_counter() - t, 1)
    dev = cfg.device
    hx = feats[:, : model.spec.head_dim]  # the head's part; the fine grid is the regressors'
    x, photo_of = hx[train_idx], None
    if cfg.scale_jitter:
        t = time.perf_counter()
        x, photo_of = scaled_features(model, rows, train_idx, x, cache.parent, cfg, progress)
        seconds["scale_jitter_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    hist, best, state = train_head(
        model,
        x.to(dev),
        labels[train_idx].to(dev),
        hx[val_idx].to(dev),
        labels[val_idx].to(dev),
        weights.to(dev),
        cfg,
        gen,
        photo_of,
    )
    model.head.load_state_dict(state)
    seconds["head_seconds"] = round(time.perf_counter() - t, 2)
    return hist, best, feats


def scaled_features(
    model: Detector, rows, train_idx, x, caches: Path | None, cfg: DetectTrainConfig, progress=True
):
    """(head features (3, n, head_dim) of the rows train_idx read on their photo at the longer
    sides cfg.jitter_sizes gives and at spec.image_size (x, the middle one), each row's photo
    number (n,)). Each scale's features are computed for every row of the training photos,
    so that they are cached per (photo, scale) as embed_index caches them (under `caches`,
    one folder per feature key; None: not cached) and reused whatever the negative sample;
    rounded to float16 as the cache either way."""
    spec, norm = model.spec, (model.mean.flatten().tolist(), model.std.flatten().tolist())
    photos = list(group_by_image(rows, train_idx.tolist()))
    number = {image: k for k, image in enumerate(photos)}
    every = [i for i, r in enumerate(rows) if r["image"] in number]  # the photos' rows
    where = {i: k for k, i in enumerate(every)}
    at = torch.tensor([where[i] for i in train_idx.tolist()])
    stack = []
    for size in cfg.jitter_sizes(spec):
        s = replace(spec, image_size=size)
        scaled = Detector(replace(model.config, features=s), model.features, norm, model.head)
        key = _feature_key(s, cfg.backbone_weights)
        cache = None if caches is None else caches / f"features-{key}"
        f = embed_index(scaled.to(model.mean.device), [rows[i] for i in every], cache, progress)
        stack.append(f[at, : spec.head_dim].half().float())
    photo_of = torch.tensor([number[rows[i]["image"]] for i in train_idx.tolist()])
    return torch.stack([stack[0], x, stack[1]]), photo_of


def _end_to_end_then_features(
    model,
    rows,
    train_idx,
    val_idx,
    labels,
    weights,
    cfg: DetectTrainConfig,
    gen,
    progress,
    seconds,
    checkpoint: EpochCheckpoint,
):
    """Backbone and head together (each epoch saved at `checkpoint`), then every row's
    features on the tuned backbone (for the ridge fits; not cached: they belong to this
    run's backbone only). (history, best accuracy, features, the epochs resumed)."""
    t = time.perf_counter()
    hist, best, state, resumed = train_end_to_end(
        model, rows, train_idx, val_idx, labels, weights, cfg, gen, progress, checkpoint
    )
    model.load_state_dict(state)
    seconds["fine_tune_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    feats = embed_index(model, rows, None, progress)
    seconds["feature_seconds"] = round(time.perf_counter() - t, 1)
    return hist, best, feats, resumed


def fine_tune_fingerprint(out: Path, config: DetectorConfig, cfg: DetectTrainConfig) -> str:
    """What an end-to-end fine-tuning of the build in `out` depends on: its index, the
    detector's settings and detect train's, and the backbone's weights by content."""
    weights = file_sha256(cfg.backbone_weights) if cfg.backbone_weights else "torchvision"
    settings = json.dumps([asdict(config), asdict(cfg)], sort_keys=True, default=str)
    return content_hash([settings, file_sha256(out / "index.csv"), weights])


def mirror_rows(rows: list[dict], widths: dict[str, int]) -> list[dict]:
    """Index rows mirrored left-right: box and target box flipped in their photo's width
    (widths: {image: pixels}) and "mirrored" set; IoU and label unchanged."""
    out = []
    for r in rows:
        w = widths[r["image"]]
        b = torch.tensor([r["box"], r["gt"] or r["box"]], dtype=torch.float64)
        box, gt = flip_boxes(b, w).tolist()
        out.append({**r, "box": box, "gt": None if r["gt"] is None else gt, "mirrored": True})
    return out


@torch.no_grad()
def embed_mirrored(model: Detector, rows, progress=True) -> tuple[torch.Tensor, list[dict]]:
    """(features (len(rows), spec.dim), mirror_rows(rows)): each row's box mirrored and read
    on the mirrored photo, one backbone pass per photo, rounded to float16 as the cache."""
    feats = torch.empty(len(rows), model.spec.dim)
    widths = {}
    model.eval()
    by_image = group_by_image(rows)
    for image, idx in tqdm(
        by_image.items(), desc="mirrored features", unit="img", disable=not progress
    ):
        img = np.ascontiguousarray(load_rgb(Path(image))[:, ::-1])
        widths[image] = img.shape[1]
        boxes = flip_boxes(torch.tensor([rows[i]["box"] for i in idx]), img.shape[1])
        feats[idx] = model.embed(img, boxes.numpy()).cpu().half().float()
    return feats, mirror_rows(rows, widths)


def fit_box_regressors(model: Detector, feats: torch.Tensor, rows) -> None:
    """Set the detector's box regressors, fitted on every row given: the validation photos'
    too, since ridge has no epochs to choose there and more photos raised cross-validated
    mAP (docs/RESULTS.md); with `mirror`, the caller adds the mirrored rows."""
    first, later = fit_regressors(feats, rows, range(len(rows)), model.config.regressors)
    dev = model.mean.device
    model.regressor = first.to(dev)
    model.regressor2 = later.to(dev) if later is not None else None


def train_summary(s: dict) -> str:
    """`detect train`'s one line from train_detector's summary dict."""
    stages = [
        ("head and backbone fine-tuned", "fine_tune_seconds"),  # then the tuned features
        ("features", "feature_seconds"),
        ("scale-jittered features", "scale_jitter_seconds"),
        ("head", "head_seconds"),
        ("hard-negative rounds", "hard_negative_seconds"),
        ("mirrored rows", "mirror_seconds"),
        ("box regressors", "regressor_seconds"),
        ("IoU predictor", "iou_predictor_seconds"),
    ]
    times = ", ".join(f"{name} {s[key]} s" for name, key in stages if key in s)
    resumed = s.get("fine_tune_resumed_epochs")
    if resumed:
        times += (
            f" (the fine-tuning went on after its epoch {resumed}, saved by an earlier command)"
        )
    return f"trained: best val acc {s['best_val_acc']:.4f} on {s['val_boxes']} boxes; {times}"


def main(args) -> int:
    """`dnnlab detect train DIR`, from its parsed flags (a --preset fills in the flags not
    given)."""
    check_in_folder(args.dir, "DIR")
    s = train_detector(
        args.dir,
        *(
            with_preset(c, given_flags(args, c), args.preset)
            for c in (FeatureSpec, HeadConfig, RegressorConfig, DetectTrainConfig)
        ),
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    print(train_summary(s))
    return 0
