"""The backbone (ImageNet MobileNetV2's `features`) and the box read-outs on its maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
from torchvision.ops import roi_align

from dnnlab.detect.boxes import pad_boxes
from dnnlab.detect.config import FINE_LAYER, FeatureSpec
from dnnlab.errors import InputError
from dnnlab.utils.safe_load import load_error_reason, load_plain

# torchvision's ImageNet weights use these; the TFLite-derived 1001-class weights use 0.5/0.5.
TORCHVISION_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TFLITE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# The stride-16 map holds a linear bottleneck's outputs, about 4x the RMS of the last map's
# ReLU6 outputs on cats-voc (3.48 against 0.90): scaled so that one ridge penalty suits both.
FINE_SCALE = 0.25


class WeightsError(InputError):
    """Backbone weights that cannot be found or do not fit MobileNetV2."""


def mobilenet_features() -> nn.Sequential:
    """An untrained MobileNetV2 `features` module, to load trained weights into."""
    return mobilenet_v2().features


def load_backbone(weights: str | None):
    """(features module, normalization) of an ImageNet MobileNetV2.

    weights: a state-dict path (1000 or 1001 classes), or None for torchvision's
    IMAGENET1K_V1 weights when they are already in torch's cache (nothing is downloaded).
    """
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        try:
            state = load_plain(path)
        except Exception as e:  # never torch's own message: it advises weights_only=False
            raise WeightsError(
                f"{path}: cannot read as a state dict ({load_error_reason(e)})"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise WeightsError(f"{path}: not a state dict")
        n_cls = state.get("classifier.1.weight", torch.empty(0, 0)).shape[0]
        if n_cls not in (1000, 1001):
            raise WeightsError(
                f"{path}: expected a MobileNetV2 state dict with 1000 or 1001 "
                f"classes; its classifier has {n_cls}"
            )
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


def photo_tensor(img: np.ndarray, device) -> torch.Tensor:
    """(1, 3, H, W) floats in [0, 1] of an H x W x 3 uint8 photo."""
    return torch.tensor(img, device=device).permute(2, 0, 1)[None].float().div_(255)


def run_backbone(backbone: nn.Module, x01: torch.Tensor, mean, std, fine: bool):
    """[last map] of a (n, 3, h, w) batch in [0, 1]; with fine, [last map, stride-16 map]."""
    # channels_last doubles MobileNetV2's CPU throughput (oneDNN's depthwise kernels).
    x = ((x01 - mean) / std).contiguous(memory_format=torch.channels_last)
    if not fine:
        return [backbone(x)]
    for k, layer in enumerate(backbone):
        x = layer(x)
        if k == FINE_LAYER:
            mid = x
    return [x, mid]


def resize_photo(t: torch.Tensor, image_size: int) -> torch.Tensor:
    """A (1, 3, h, w) photo with its longer side resized to image_size."""
    h, w = t.shape[-2:]
    s = image_size / max(h, w)
    if abs(s - 1) <= 1e-6:
        return t
    size = (max(32, round(h * s)), max(32, round(w * s)))
    return F.interpolate(t, size=size, mode="bilinear", antialias=s < 1, align_corners=False)


def pool_boxes(
    maps: list[torch.Tensor], boxes: torch.Tensor, height: int, width: int, spec: FeatureSpec
) -> torch.Tensor:
    """RoIAlign boxes (image pixels, (n, 4)) on a photo's maps: (n, spec.dim)."""
    b = [pad_boxes(boxes.float().reshape(-1, 4), spec.context, width, height).to(maps[0].device)]
    g = spec.grid
    # Grid 1 still samples 2x2 bins and averages: one bilinear sample per box is too coarse.
    r = roi_align(
        maps[0].float(),
        b,
        output_size=max(g, 2),
        spatial_scale=maps[0].shape[-1] / width,
        sampling_ratio=2,
        aligned=True,
    )
    r = (r.mean((2, 3)) if g == 1 else r).flatten(1)
    if not spec.fine:
        return r
    m = roi_align(
        maps[1].float(),
        b,
        output_size=spec.fine,
        spatial_scale=maps[1].shape[-1] / width,
        sampling_ratio=2,
        aligned=True,
    )
    return torch.cat([r, m.flatten(1) * FINE_SCALE], 1)


def crop_batch(img: np.ndarray, boxes: np.ndarray, size: int, context: float) -> torch.Tensor:
    """Every box of one photo cut (padded by context) and resized: (n, 3, size, size) in [0, 1].

    RoIAlign does the cut-and-resize for all boxes in one call (bilinear, like a resize of
    each crop), so no crop is ever written to disk or handled one at a time.
    """
    h, w = img.shape[:2]
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    b = pad_boxes(b, context, w, h)
    t = photo_tensor(img, "cpu")
    rois = torch.cat([torch.zeros(len(b), 1), b], 1)
    return roi_align(t, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
