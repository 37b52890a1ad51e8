"""The trained detector: `Detector.load(dir).detect(photo)`. Inference only: nothing here
imports the training code.

A photo goes through: selective-search proposals -> near-duplicates dropped -> the
backbone's maps -> each box's features -> the head's probability and the box regressors'
rounds (with flip_test, on the mirrored photo too, averaged) -> threshold, NMS, top-K, box
voting, and the IoU predictor's localization confidence (selection.select).

model.pt holds plain data only (tensors, numbers, strings): the config as a dict, the input
normalization and the state dict; it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.detect.boxes import apply_deltas, flip_boxes
from dnnlab.detect.config import DetectionConfig, DetectorConfig, HeadConfig, with_preset
from dnnlab.detect.features import (
    crop_batch,
    mobilenet_features,
    photo_tensor,
    pool_boxes,
    resize_photo,
    run_backbone,
)
from dnnlab.detect.proposals import propose
from dnnlab.detect.selection import prefilter, select
from dnnlab.errors import InputError
from dnnlab.settings import given_flags
from dnnlab.utils.atomic import atomic_torch_save
from dnnlab.utils.paths import check_in_folder
from dnnlab.utils.safe_load import load_error_reason, load_plain
from dnnlab.utils.weights import check_weight_values

MODEL_FILE = "model.pt"
FORMAT = "dnnlab detector 1"


def make_head(in_dim: int, cfg: HeadConfig) -> nn.Sequential:
    """Dropout, Linear in_dim -> hidden, ReLU, Dropout, Linear hidden -> 2 (not / target)."""
    return nn.Sequential(
        nn.Dropout(cfg.dropout),
        nn.Linear(in_dim, cfg.hidden),
        nn.ReLU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, 2),
    )


@dataclass
class Detections:
    """One photo's result: boxes (k, 4) and confidences (k,), best first; the proposals
    scored (n, 4) and their probabilities (n,); wall seconds (all, and proposals alone)."""

    boxes: np.ndarray
    scores: np.ndarray
    proposals: np.ndarray
    all_scores: np.ndarray
    seconds: float
    proposal_seconds: float


class Detector(nn.Module):
    """Backbone, head and box regressors of one config; the input normalization inside."""

    def __init__(
        self,
        config: DetectorConfig,
        backbone: nn.Module,
        norm,
        head: nn.Module | None = None,
        regressor: nn.Module | None = None,
        regressor2: nn.Module | None = None,
        iou_predictor: nn.Module | None = None,
    ):
        super().__init__()
        self.config = config
        self.features = backbone.to(memory_format=torch.channels_last)
        spec = config.features
        self.head = head if head is not None else make_head(spec.head_dim, config.head)
        self.regressor = regressor
        self.regressor2 = regressor2  # rounds after the first (None: reuse the first)
        self.iou_predictor = iou_predictor  # features -> IoU with the target (None: none)
        self.register_buffer("mean", torch.tensor(norm[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm[1]).view(1, 3, 1, 1))

    @property
    def spec(self):
        return self.config.features

    def set_detection(self, detection: DetectionConfig) -> None:
        """Detect with these settings from now on (same weights); iou_confidence "auto"
        becomes "rank" with an IoU predictor and "off" without one."""
        mode = detection.iou_confidence
        if mode == "auto":
            mode = "rank" if self.iou_predictor is not None else "off"
        elif mode != "off" and self.iou_predictor is None:
            raise InputError(
                f"--iou-confidence {mode}: this detector has no IoU predictor (trained before "
                "it existed, or with --no-iou-predictor); pass --iou-confidence off or auto, "
                "or retrain it without --no-iou-predictor"
            )
        self.config = replace(self.config, detection=replace(detection, iou_confidence=mode))

    # -- saving and loading -------------------------------------------------------------
    def save(self, folder) -> Path:
        path = Path(folder) / MODEL_FILE
        norm = [self.mean.flatten().tolist(), self.std.flatten().tolist()]
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_torch_save(
            {"format": FORMAT, "config": self.config.to_dict(), "norm": norm, "state": state}, path
        )
        return path

    @classmethod
    def load(cls, folder, device="cpu", detection: DetectionConfig | None = None) -> Detector:
        """The detector in folder/model.pt, with other detection settings when given."""
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise InputError(f"{path}: no trained detector; run `dnnlab detect train {folder}`")
        try:
            ck = load_plain(path)
        except pickle.UnpicklingError as e:
            raise InputError(f"{path}: refused: {load_error_reason(e)}") from None
        except Exception as e:
            raise InputError(
                f"{path}: not a readable detector file ({load_error_reason(e)})"
            ) from None
        if (
            not isinstance(ck, dict)
            or ck.get("format") != FORMAT
            or set(ck) != {"format", "config", "norm", "state"}
        ):
            raise InputError(
                f"{path}: not a {FORMAT!r} file (keys: "
                f"{sorted(ck) if isinstance(ck, dict) else type(ck).__name__})"
            )
        config = DetectorConfig.from_dict(ck["config"], str(path))
        state = ck["state"]
        try:
            dim = config.features.dim
            reg = nn.Linear(dim, 4) if "regressor.weight" in state else None
            reg2 = nn.Linear(dim, 4) if "regressor2.weight" in state else None
            iou = nn.Linear(dim, 1) if "iou_predictor.weight" in state else None
            if (iou is not None) != config.regressors.iou_predictor:
                raise ValueError("the IoU predictor's weights and iou_predictor disagree")
            model = cls(config, mobilenet_features(), ck["norm"], None, reg, reg2, iou)
            check_weight_values(model, state, str(path), InputError)  # NaN: no detections
            model.load_state_dict(state)
        except InputError:
            raise
        except (RuntimeError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{path}: its weights do not fit its config ({e})") from None
        try:
            model.set_detection(detection or config.detection)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        return model.to(device).eval()

    # -- box features -------------------------------------------------------------------
    def feature_map(self, img: np.ndarray) -> list[torch.Tensor]:
        """Mode "roi": the maps of a whole photo (uint8 H x W x 3): [last], then the
        stride-16 map when the spec has a fine grid."""
        t = resize_photo(photo_tensor(img, self.mean.device), self.spec.image_size)
        return run_backbone(self.features, t, self.mean, self.std, bool(self.spec.fine))

    def embed_crops(self, img: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """Mode "crops": each box cut, resized and run through the backbone (batched)."""
        dev, spec, batch = self.mean.device, self.spec, self.config.detection.batch
        out = []
        for s in range(0, len(boxes), batch):
            crops = crop_batch(img, boxes[s : s + batch], spec.crop_size, spec.context).to(dev)
            fmap = run_backbone(self.features, crops, self.mean, self.std, False)[0]
            out.append(F.adaptive_avg_pool2d(fmap, spec.grid).flatten(1))
        return torch.cat(out) if out else torch.zeros(0, spec.dim, device=dev)

    def box_features(self, img: np.ndarray):
        """A function from boxes (a tensor, image pixels) to their features on this photo.

        In mode "roi" the backbone runs here, once; each call only RoIAligns, so boxes that
        move (box regression rounds) are re-read at no backbone cost.
        """
        if self.spec.mode == "crops":
            return lambda b: self.embed_crops(img, b.cpu().numpy())
        h, w = img.shape[:2]
        maps = self.feature_map(img)
        return lambda b: pool_boxes(maps, b, h, w, self.spec)

    def embed(self, img: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """(len(boxes), spec.dim) features of the boxes of one photo."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return torch.zeros(0, self.spec.dim, device=self.mean.device)
        return self.box_features(img)(torch.from_numpy(boxes).to(self.mean.device))

    # -- head and regressors ------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head on its part of the features (the fine grid is the regressors')."""
        return self.head(x[:, : self.spec.head_dim])

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), 1)[:, 1]

    def refine(
        self, x: torch.Tensor, boxes: torch.Tensor, height: int, width: int, round: int = 0
    ) -> torch.Tensor:
        """Boxes moved by the regressor (unchanged without one); rounds after the first use
        the second regressor when there is one."""
        if self.regressor is None:
            return boxes
        reg = self.regressor2 if round > 0 and self.regressor2 is not None else self.regressor
        return apply_deltas(boxes, reg(x).to(boxes.dtype), width, height)

    # -- detection ----------------------------------------------------------------------
    def views(self, img: np.ndarray) -> list:
        """The photo's views, as detection reads them: a box-features function (box_features)
        of the photo, and with flip_test also one of the mirrored photo (boxes given in its
        mirrored coordinates), the test-time augmentation's second view."""
        out = [self.box_features(img)]
        if self.config.detection.flip_test:
            out.append(self.box_features(np.ascontiguousarray(img[:, ::-1])))
        return out

    def rounds(self, views: list, boxes: torch.Tensor, height: int, width: int):
        """(probability (n,), refined box (n, 4)) of boxes (n, 4) after the regression
        rounds; with a mirrored view, the mean of both, the mirrored one mirrored back."""
        steps = self.config.detection.refine_steps
        s, b = refine_rounds(self, views[0], boxes, height, width, steps)
        if len(views) > 1:
            s2, b2 = refine_rounds(self, views[1], flip_boxes(boxes, width), height, width, steps)
            s, b = (s + s2) / 2, (b + flip_boxes(b2, width)) / 2
        return s, b

    def predicted_iou(self, views: list, boxes: torch.Tensor, width: int) -> torch.Tensor:
        """The IoU predictor's value of boxes (n, 4), clipped to [0, 1] (n,); with a
        mirrored view, the mean with the mirrored boxes' on the mirrored photo."""
        if len(boxes) == 0:
            return boxes.new_zeros(0)
        q = self.iou_predictor(views[0](boxes))[:, 0]
        if len(views) > 1:
            q = (q + self.iou_predictor(views[1](flip_boxes(boxes, width)))[:, 0]) / 2
        return q.clamp(0, 1).to(boxes.dtype)

    def _scored(self, img: np.ndarray, boxes: np.ndarray):
        """(views, probability (n,), refined box (n, 4)) of boxes (n, 4) of one photo; no
        view (no backbone pass) when there is no box."""
        b = torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)).to(self.mean.device)
        if len(b) == 0:
            return [], b.new_zeros(0), b
        views = self.views(img)
        return views, *self.rounds(views, b, *img.shape[:2])

    @torch.inference_mode()
    def score_boxes(self, img: np.ndarray, boxes: np.ndarray):
        """(probability (n,), refined box (n, 4)) of every proposal of one photo."""
        _, s, b = self._scored(img, boxes)
        return s.cpu().numpy(), b.cpu().numpy()

    def propose(self, img: np.ndarray) -> np.ndarray:
        """The proposals scored on this photo: (n, 4)."""
        return prefilter(propose(img, self.config.proposals), self.config.detection)

    @torch.inference_mode()
    def detect(self, img: np.ndarray) -> Detections:
        """Detections of one photo (uint8 H x W x 3 RGB)."""
        t0 = time.perf_counter()
        props = self.propose(img)
        t1 = time.perf_counter()
        views, s, b = self._scored(img, props)
        quality = None
        if self.config.detection.iou_confidence != "off" and views:
            quality = lambda boxes: self.predicted_iou(views, boxes, img.shape[1])  # noqa: E731
        out_b, out_s = select(b, s, self.config.detection, quality)
        return Detections(
            out_b.cpu().numpy(),
            out_s.cpu().numpy(),
            props,
            s.cpu().numpy(),
            time.perf_counter() - t0,
            t1 - t0,
        )


def refine_rounds(
    model: Detector, features, boxes: torch.Tensor, height: int, width: int, steps: int
):
    """(probability, refined boxes) after `steps` regression rounds, on any features
    function (boxes -> features), e.g. a cache.

    Each round re-reads the box as it now stands; the probability is that of the box the
    last round started from (the classifier never saw the final box, but one much closer to
    it than the proposal).
    """
    x = features(boxes)
    s = model.scores(x)
    rounds = steps if model.regressor is not None else 0
    for t in range(rounds):
        boxes = model.refine(x, boxes, height, width, t)
        if t < rounds - 1:
            x = features(boxes)
            s = model.scores(x)
    return s, boxes


def load_detector(args) -> Detector:
    """The detector in --model with the detection flags of `detect run` and `detect eval`
    (and their --preset) applied."""
    check_in_folder(args.model, "--model")
    detection = with_preset(DetectionConfig, given_flags(args, DetectionConfig), args.preset)
    return Detector.load(args.model, args.device, detection)
