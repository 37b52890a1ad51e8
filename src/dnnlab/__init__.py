"""dnnlab: a lab for analysing and designing deep networks."""

from dnnlab.separability import SeparabilityResult, separability

__version__ = "0.1.0"
__all__ = ["SeparabilityResult", "separability", "__version__"]
