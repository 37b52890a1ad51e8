"""Separation Index family: exact, streamed, memory-bounded; CPU, CUDA and torch.distributed."""

from dnnlab.separability.measures import (
    DEFAULT_MEASURES,
    Measure,
    SeparabilityResult,
    parse_measures,
    separability,
)
from dnnlab.separability.normalize import NORMALIZATIONS, normalize

__all__ = [
    "DEFAULT_MEASURES",
    "NORMALIZATIONS",
    "Measure",
    "SeparabilityResult",
    "normalize",
    "parse_measures",
    "separability",
]
