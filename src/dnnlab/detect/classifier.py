"""Frozen ImageNet MobileNetV2 features with a small head; crops cut and resized on the fly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dnnlab.errors import InputError

# torchvision's ImageNet weights use these; the TFLite-derived 1001-class weights use 0.5/0.5.
TORCHVISION_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TFLITE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class WeightsError(InputError):
    """Backbone weights that cannot be found or do not fit MobileNetV2."""


def make_head(in_dim: int = 1280, dropout: float = 0.2, hidden: int = 256,
              classes: int = 2) -> nn.Sequential:  # fmt: skip
    """The seed's head: Dropout, Linear in_dim->256, ReLU, Dropout, Linear 256->2."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, classes))  # fmt: skip


def load_backbone(weights: str | None):
    """(features module, normalization) of an ImageNet MobileNetV2.

    weights: a state-dict path (1000 or 1001 classes), or None for torchvision's
    IMAGENET1K_V1 weights when they are already in torch's cache (nothing is downloaded).
    """
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    if weights:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{path}: cannot read as a state dict ({e})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        n_cls = state.get("classifier.1.weight", torch.empty(0, 0)).shape[0]
        if n_cls not in (1000, 1001):
            raise WeightsError(f"{path}: expected a MobileNetV2 state dict with 1000 or 1001 "
                               f"classes; its classifier has {n_cls}")  # fmt: skip
        model = mobilenet_v2(num_classes=n_cls)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsError(f"{path}: does not fit torchvision's mobilenet_v2: {e}") from None
        norm = TFLITE_NORM if n_cls == 1001 else TORCHVISION_NORM
        return model.features, norm
    w = MobileNet_V2_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    if not cache.exists():
        raise WeightsError(
            f"no backbone weights: torchvision's {w} is not in the cache ({cache}) and nothing "
            "is downloaded here; pass --backbone-weights PATH (a MobileNetV2 state dict with "
            "1000 or 1001 classes)"
        )
    model = mobilenet_v2(weights=w)
    return model.features, TORCHVISION_NORM


@dataclass
class BoxFeatures:
    """How a box becomes a feature vector for the head.

    mode "roi" (default): the backbone runs once on the whole photo (longer side resized to
    image_size) and each box is RoIAligned on its last feature map into a grid x grid cell
    layout (SPP-net / Fast R-CNN). One forward pass per photo instead of one per proposal,
    and the grid keeps where in the box the cat is, which the pooled vector forgets.
    mode "crops" (the seed's): each box is cut, resized to crop_size and run through the
    backbone on its own (batched); grid 1 = the seed's globally pooled 1280-d vector.
    context pads each box by this fraction of its size on every side, so the features see
    whether the cat goes on past the box's edge.
    fine_grid (mode "roi" only; 0: off) appends the box read on the stride-16 map (the 96
    channels after block FINE_LAYER) as a fine_grid x fine_grid grid. Only the box
    regressors see these: the last map's cells are 32 px wide, too coarse to put an edge
    within a few pixels. The head reads the first head_dim numbers, the seed's features.
    """

    mode: str = "roi"
    grid: int = 3
    context: float = 0.2
    image_size: int = 640
    crop_size: int = 224
    fine_grid: int = 7

    def __post_init__(self):
        if self.mode not in ("roi", "crops"):
            raise ValueError(f"unknown feature mode {self.mode!r}; 'roi' or 'crops'")
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")
        if self.fine_grid < 0:
            raise ValueError(f"fine_grid must be >= 0, got {self.fine_grid}")

    @property
    def head_dim(self) -> int:
        return 1280 * self.grid * self.grid

    @property
    def fine(self) -> int:
        """Cells of the fine grid in use (crops have no photo-wide map to read it from)."""
        return self.fine_grid if self.mode == "roi" else 0

    @property
    def dim(self) -> int:
        return self.head_dim + FINE_CHANNELS * self.fine * self.fine


# MobileNetV2's features[13] ends the stride-16 stage: 96 channels, 40 x 40 at 640 px.
FINE_LAYER, FINE_CHANNELS = 13, 96
# Its outputs are a linear bottleneck's, about 4x the RMS of the last map's ReLU6 outputs on
# cats-voc (3.48 against 0.90): scaled down so that one ridge penalty suits both parts.
FINE_SCALE = 0.25


def pad_boxes(boxes: torch.Tensor, context: float, width: float, height: float) -> torch.Tensor:
    b = boxes.clone()
    if context:
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        b[:, 0] -= context * bw
        b[:, 2] += context * bw
        b[:, 1] -= context * bh
        b[:, 3] += context * bh
    b[:, [0, 2]] = b[:, [0, 2]].clamp(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clamp(0, height)
    return b


class BoxClassifier(nn.Module):
    """Frozen-backbone features of boxes -> the seed's head (cat / not cat), plus an optional
    R-CNN box regressor on the same features. The input normalization is stored inside."""

    def __init__(self, features: nn.Module, norm, spec: BoxFeatures | None = None,
                 head: nn.Module | None = None, regressor: nn.Module | None = None,
                 regressor2: nn.Module | None = None):  # fmt: skip
        super().__init__()
        self.spec = spec or BoxFeatures()
        self.features = features.to(memory_format=torch.channels_last)
        self.head = head if head is not None else make_head(self.spec.head_dim)
        self.regressor = regressor
        self.regressor2 = regressor2  # rounds after the first (None: reuse the first)
        self.register_buffer("mean", torch.tensor(norm[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm[1]).view(1, 3, 1, 1))

    def _backbone(self, x01: torch.Tensor, fine: bool = False):
        """The last feature map; with fine=True, [last map, stride-16 map]."""
        # channels_last doubles MobileNetV2's CPU throughput (oneDNN's depthwise kernels).
        x = ((x01 - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        if not fine:
            return self.features(x)
        for k, layer in enumerate(self.features):
            x = layer(x)
            if k == FINE_LAYER:
                mid = x
        return [x, mid]

    def feature_map(self, img: np.ndarray) -> list[torch.Tensor]:
        """The maps of a whole photo, for mode "roi": [last (1, 1280, h', w')], then the
        stride-16 map when the spec has a fine grid."""
        dev = self.mean.device
        t = torch.tensor(img, device=dev).permute(2, 0, 1)[None].float()
        t = t.div_(255)
        h, w = img.shape[:2]
        s = self.spec.image_size / max(h, w)
        if abs(s - 1) > 1e-6:
            size = (max(32, round(h * s)), max(32, round(w * s)))
            t = F.interpolate(t, size=size, mode="bilinear", antialias=s < 1, align_corners=False)
        if self.spec.fine:
            return self._backbone(t, fine=True)
        return [self._backbone(t)]

    def pool_boxes(self, fmaps: list[torch.Tensor], boxes: torch.Tensor, height: int,
                   width: int) -> torch.Tensor:  # fmt: skip
        """RoIAlign boxes (image pixels) on the maps from feature_map(): (n, spec.dim)."""
        from torchvision.ops import roi_align

        b = pad_boxes(boxes.float().reshape(-1, 4), self.spec.context, width, height)
        b = [b.to(fmaps[0].device)]
        g = self.spec.grid
        # Grid 1 still samples 2x2 bins and averages: one bilinear sample per box is too coarse.
        r = roi_align(fmaps[0].float(), b, output_size=max(g, 2),
                      spatial_scale=fmaps[0].shape[-1] / width, sampling_ratio=2,
                      aligned=True)  # fmt: skip
        r = (r.mean((2, 3)) if g == 1 else r).flatten(1)
        if not self.spec.fine:
            return r
        m = roi_align(fmaps[1].float(), b, output_size=self.spec.fine,
                      spatial_scale=fmaps[1].shape[-1] / width, sampling_ratio=2,
                      aligned=True)  # fmt: skip
        return torch.cat([r, m.flatten(1) * FINE_SCALE], 1)

    def embed_crops(self, img: np.ndarray, boxes: np.ndarray, batch: int = 16) -> torch.Tensor:
        """Mode "crops": each box cut, resized and run through the backbone (batched)."""
        dev = self.mean.device
        spec = CropSpec(self.spec.crop_size, self.spec.context)
        out = []
        for s in range(0, len(boxes), batch):
            crops = crop_batch(img, boxes[s : s + batch], spec).to(dev)
            out.append(F.adaptive_avg_pool2d(self._backbone(crops), self.spec.grid).flatten(1))
        return torch.cat(out) if out else torch.zeros(0, self.spec.dim, device=dev)

    def box_features(self, img: np.ndarray, batch: int = 16):
        """A function from boxes (a tensor, image pixels) to their features on this photo.

        In mode "roi" the backbone runs here, once; each call only RoIAligns, so boxes that
        move (box regression rounds) are re-read at no backbone cost.
        """
        if self.spec.mode == "crops":
            return lambda b: self.embed_crops(img, b.cpu().numpy(), batch)
        h, w = img.shape[:2]
        fmap = self.feature_map(img)
        return lambda b: self.pool_boxes(fmap, b, h, w)

    def embed(self, img: np.ndarray, boxes: np.ndarray, batch: int = 16) -> torch.Tensor:
        """(len(boxes), spec.dim) features of the boxes of one photo (uint8 HxWx3)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return torch.zeros(0, self.spec.dim, device=self.mean.device)
        return self.box_features(img, batch)(torch.from_numpy(boxes).to(self.mean.device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head on its part of the features (the fine grid is the regressors')."""
        return self.head(x[:, : self.spec.head_dim])

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), 1)[:, 1]

    def refine(self, x: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
               round: int = 0):  # fmt: skip
        """Boxes moved by the regressor (unchanged without one); rounds after the first use
        the second regressor when there is one (the fine or the cascade's)."""
        if self.regressor is None:
            return boxes
        from dnnlab.detect.boxreg import apply_deltas

        reg = self.regressor2 if round > 0 and self.regressor2 is not None else self.regressor
        return apply_deltas(boxes, reg(x).to(boxes.dtype), width, height)


@dataclass
class CropSpec:
    size: int = 224
    context: float = 0.0  # pad each box by this fraction of its size on every side


def crop_batch(img: np.ndarray, boxes: np.ndarray, spec: CropSpec) -> torch.Tensor:
    """Cut and resize every box of one image: (len(boxes), 3, size, size) floats in [0, 1].

    RoIAlign does the cut-and-resize for all boxes in one call (bilinear, like a resize of
    each crop), so no crop is ever written to disk or handled one at a time.
    """
    from torchvision.ops import roi_align

    h, w = img.shape[:2]
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    b = pad_boxes(b, spec.context, w, h)
    t = torch.tensor(img).permute(2, 0, 1)[None].float().div_(255)
    rois = torch.cat([torch.zeros(len(b), 1), b], 1)
    return roi_align(t, rois, output_size=spec.size, spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)  # fmt: skip
