"""Box arithmetic shared by training and detection. Boxes are (n, 4) float tensors of
(x1, y1, x2, y2) in image pixels."""

from __future__ import annotations

import torch


def pad_boxes(boxes: torch.Tensor, context: float, width: float, height: float) -> torch.Tensor:
    """Boxes grown by `context` of their size on every side, clipped to the image: (n, 4)."""
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


def box_deltas(props: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """R-CNN's regression targets (n, 4): centre shift in units of the proposal's size, then
    log size ratio (dx, dy, dw, dh)."""
    pw, ph = props[:, 2] - props[:, 0], props[:, 3] - props[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = (gt[:, 0] + gw / 2 - props[:, 0] - pw / 2) / pw
    dy = (gt[:, 1] + gh / 2 - props[:, 1] - ph / 2) / ph
    return torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph)], 1)


def apply_deltas(props: torch.Tensor, d: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """The inverse of box_deltas, clipped to the image: (n, 4)."""
    pw, ph = props[:, 2] - props[:, 0], props[:, 3] - props[:, 1]
    cx = props[:, 0] + pw / 2 + d[:, 0] * pw
    cy = props[:, 1] + ph / 2 + d[:, 1] * ph
    # A size change beyond e^±2 is never a real correction; clamp as Fast R-CNN does.
    w = pw * torch.exp(d[:, 2].clamp(-2, 2))
    h = ph * torch.exp(d[:, 3].clamp(-2, 2))
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clamp(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clamp(0, height)
    return out


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Boxes (n, 4) mirrored left-right in an image `width` pixels wide: (n, 4)."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
