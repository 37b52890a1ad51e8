"""Batched augmentation on the training device: no per-image PIL work, no worker processes.

`augment` is the course's transforms: RandomHorizontalFlip, RandomRotation(10) (nearest,
black fill), ToTensor, Normalize(mean=0.5, std=0.5). `flip_translate` is the budget
recipe's lighter one: a random flip and a shift by up to `shift` pixels each way (black
fill, as RandomCrop(32, padding=shift)), then the same normalization.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN = 0.5
STD = 0.5


def to_input(x_uint8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 images -> normalized float: (x/255 - 0.5) / 0.5."""
    return x_uint8.to(dtype).mul_(1 / (255 * STD)).sub_(MEAN / STD)


def augment(x_uint8: torch.Tensor, gen: torch.Generator, max_degrees: float = 10.0):
    """Random horizontal flip and rotation in [-max_degrees, max_degrees], per image."""
    n = x_uint8.shape[0]
    dev = x_uint8.device
    x = x_uint8.float()
    # Draw on the generator's device (CPU), then move: same numbers on every device.
    flip = torch.rand(n, generator=gen) < 0.5
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_degrees)
    flip, angle = flip.to(dev), angle.to(dev)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx = torch.where(flip, -1.0, 1.0)
    # Output pixel p samples the input at R(-angle) p, then the flip mirrors x.
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x.mul_(1 / (255 * STD)).sub_(MEAN / STD)


def flip_translate(x_uint8: torch.Tensor, gen: torch.Generator, shift: int = 2):
    """Random horizontal flip and a random shift in [-shift, shift] pixels along each axis
    (the uncovered border black), per image; (N, 3, H, W) uint8 -> normalized float."""
    n, _, h, w = x_uint8.shape
    dev = x_uint8.device
    flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(dev)
    padded = F.pad(x_uint8, (shift, shift, shift, shift))
    cols = torch.arange(w, device=dev) + dx[:, None]  # (n, w): the crop's padded columns
    cols = torch.where(flip[:, None], w + 2 * shift - 1 - cols, cols)  # ... of the flipped image
    rows = torch.arange(h, device=dev) + dy[:, None]  # (n, h)
    img = torch.arange(n, device=dev)[:, None, None]
    x = padded.permute(0, 2, 3, 1)[img, rows[:, :, None], cols[:, None, :]]  # (n, h, w, 3)
    return to_input(x.permute(0, 3, 1, 2))


AUGMENTERS = {"flip-rotate": augment, "flip-translate": flip_translate}
