"""Frozen ImageNet MobileNetV2 features with a small head; crops cut and resized on the fly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# torchvision's ImageNet weights use these; the TFLite-derived 1001-class weights use 0.5/0.5.
TORCHVISION_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TFLITE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class WeightsError(ValueError):
    """Backbone weights that cannot be found or do not fit MobileNetV2."""


def make_head(dropout: float = 0.2, hidden: int = 256, classes: int = 2) -> nn.Sequential:
    """The seed's head: Dropout, Linear 1280->256, ReLU, Dropout, Linear 256->2."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, hidden), nn.ReLU(),
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


class CropClassifier(nn.Module):
    """backbone (frozen) -> global average pool -> head; input normalization stored inside."""

    def __init__(self, features: nn.Module, norm, head: nn.Module | None = None):
        super().__init__()
        self.features = features.to(memory_format=torch.channels_last)
        self.head = head if head is not None else make_head()
        self.register_buffer("mean", torch.tensor(norm[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm[1]).view(1, 3, 1, 1))

    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        """Pooled 1280-d features of crops given as floats in [0, 1]."""
        # channels_last doubles MobileNetV2's CPU throughput (oneDNN's depthwise kernels).
        x = ((x01 - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x01):
        return self.head(self.embed(x01))


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
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4).clone()
    if spec.context:
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        b[:, 0] -= spec.context * bw
        b[:, 2] += spec.context * bw
        b[:, 1] -= spec.context * bh
        b[:, 3] += spec.context * bh
        b[:, [0, 2]] = b[:, [0, 2]].clamp(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clamp(0, h)
    t = torch.tensor(img).permute(2, 0, 1)[None].float().div_(255)
    rois = torch.cat([torch.zeros(len(b), 1), b], 1)
    return roi_align(t, rois, output_size=spec.size, spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)  # fmt: skip
