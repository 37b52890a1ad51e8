"""The trained detector: `Detector.load(dir).detect(photo)`. Inference only: nothing here
imports the training code.

A photo goes through: selective-search proposals -> near-duplicates dropped -> the
backbone's maps -> each box's features -> the head's probability and the box regressors'
rounds -> threshold, NMS, top-K, box voting (selection.select).

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

from dnnlab.detect.boxes import apply_deltas
from dnnlab.detect.config import DetectConfig, DetectorConfig, HeadConfig
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
from dnnlab.utils.atomic import atomic_torch_save

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
    ):
        super().__init__()
        self.config = config
        self.features = backbone.to(memory_format=torch.channels_last)
        spec = config.features
        self.head = head if head is not None else make_head(spec.head_dim, config.head)
        self.regressor = regressor
        self.regressor2 = regressor2  # rounds after the first (None: reuse the first)
        self.register_buffer("mean", torch.tensor(norm[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm[1]).view(1, 3, 1, 1))

    @property
    def spec(self):
        return self.config.features

    def with_detection(self, detection: DetectConfig) -> Detector:
        """This detector with other detection settings (same weights)."""
        self.config = replace(self.config, detection=detection)
        return self

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
    def load(cls, folder, device="cpu") -> Detector:
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise InputError(f"{path}: no trained detector; run `dnnlab detect train {folder}`")
        from dnnlab.utils.safe_load import load_error_reason, load_plain

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
            model = cls(config, mobilenet_features(), ck["norm"], None, reg, reg2)
            model.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{path}: its weights do not fit its config ({e})") from None
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
    @torch.inference_mode()
    def score_boxes(self, img: np.ndarray, boxes: np.ndarray):
        """(probability (n,), refined box (n, 4)) of every proposal of one photo."""
        if len(boxes) == 0:
            return np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
        b = torch.from_numpy(np.asarray(boxes, np.float32)).to(self.mean.device)
        s, b = refine_rounds(
            self, self.box_features(img), b, *img.shape[:2], self.config.detection.refine_steps
        )
        return s.cpu().numpy(), b.cpu().numpy().astype(np.float32)

    def propose(self, img: np.ndarray) -> np.ndarray:
        """The proposals scored on this photo: (n, 4)."""
        return prefilter(propose(img, self.config.proposals), self.config.detection)

    def detect(self, img: np.ndarray) -> Detections:
        """Detections of one photo (uint8 H x W x 3 RGB)."""
        t0 = time.perf_counter()
        props = self.propose(img)
        t1 = time.perf_counter()
        scores, refined = self.score_boxes(img, props)
        out_b, out_s = select(
            torch.from_numpy(refined), torch.from_numpy(scores), self.config.detection
        )
        return Detections(
            out_b.numpy(), out_s.numpy(), props, scores, time.perf_counter() - t0, t1 - t0
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
