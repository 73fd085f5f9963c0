"""lambdahat: fast, reproducible, diagnosed estimates of the local learning coefficient (LLC, λ̂).

The public surface is re-exported here; everything else lives in modules with one job each:
``config`` (LLCConfig, every sampling setting), ``problem`` (prepare once: model copies, data, L0),
``estimator`` (sample, and LLCEstimator, the canonical-interp facade), ``samplers`` (SGLD, RMSProp-SGLD, SGNHT), ``chains`` (the vmapped runner),
``result`` / ``diagnostics`` (LLCResult, R-hat, ESS, MALA acceptance, divergence), ``calibration`` (automatic step
size), ``sweeps`` (grid searches and checkpoint sweeps, local or Ray), ``plotting``, ``truth`` (closed-form
learning coefficients and their models), ``validation`` and ``modadd`` (the modular-addition toolkit).
"""

from .calibration import Calibration, CalibrationError, calibrate, calibrate_problem, calibrated_estimator
from .config import LLCConfig
from .estimator import LLCEstimator, nbeta_from_effective_size, sample
from .plotting import plot_diagnostics, plot_trace
from .problem import Problem, prepare
from .result import LLCResult
from .samplers import Sampler
from .sweeps import (
    GridSearchConfig,
    LLCGridSearch,
    llc_over_checkpoints,
    plot_grid,
    plot_llc_over_checkpoints,
)

__version__ = "0.1.0"

__all__ = [
    "Calibration",
    "CalibrationError",
    "GridSearchConfig",
    "LLCConfig",
    "LLCEstimator",
    "LLCGridSearch",
    "LLCResult",
    "Problem",
    "Sampler",
    "__version__",
    "calibrate",
    "calibrate_problem",
    "calibrated_estimator",
    "llc_over_checkpoints",
    "nbeta_from_effective_size",
    "plot_diagnostics",
    "plot_grid",
    "plot_llc_over_checkpoints",
    "plot_trace",
    "prepare",
    "sample",
]
