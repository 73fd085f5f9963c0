"""lambdahat: fast, reproducible, diagnosed estimates of the local learning coefficient (LLC, λ̂).

The public surface is re-exported here; everything else lives in modules with one job each.
"""

from .estimator import LLCEstimator, nbeta_from_effective_size
from .result import LLCResult
from .samplers import Sampler

__version__ = "0.1.0"

__all__ = ["LLCEstimator", "LLCResult", "Sampler", "__version__", "nbeta_from_effective_size"]
