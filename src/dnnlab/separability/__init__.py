"""Separation Index family: exact, streamed, memory-bounded; CPU, CUDA and torch.distributed."""

from dnnlab.separability.cka import CkaMatrix, CkaResult, linear_cka, unbiased_cka
from dnnlab.separability.linear import LinearClassifier, fit_linear, linear_accuracy
from dnnlab.separability.measures import separability
from dnnlab.separability.normalize import NORMALIZATIONS, normalize
from dnnlab.separability.result import SeparabilityResult
from dnnlab.separability.vocabulary import DEFAULT_MEASURES, Measure, parse_measures

__all__ = [
    "CkaMatrix",
    "CkaResult",
    "DEFAULT_MEASURES",
    "LinearClassifier",
    "fit_linear",
    "linear_cka",
    "linear_accuracy",
    "unbiased_cka",
    "NORMALIZATIONS",
    "Measure",
    "SeparabilityResult",
    "normalize",
    "parse_measures",
    "separability",
]
