"""A user's own network for `dnnlab probe --model docs/examples/tinynet.py:make`."""

import torch
from torch import nn


def make() -> nn.Module:
    """A small CNN with random weights (seeded): what a probe sees before any training."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )
