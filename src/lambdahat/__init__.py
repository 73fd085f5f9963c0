"""lambdahat: fast, reproducible, diagnosed estimates of the local learning coefficient (LLC, λ̂).

The public surface is re-exported here; everything else lives in modules with one job each:
``config`` (LLCConfig, every sampling setting), ``problem`` (prepare once: model copies, data, L0),
``estimator`` (sample, and LLCEstimator, the canonical-interp facade), ``samplers`` (SGLD, RMSProp-SGLD, SGNHT),
``plan`` (eager or compiled, decided once per run), ``chains`` (the vmapped runner), ``rng`` (per-chain noise
streams), ``memory`` (``chain_batch="auto"``),
``result`` / ``diagnostics`` (LLCResult, R-hat, ESS, MALA acceptance, divergence), ``accuracy`` (companion runs
that measure the step, localization and relaxation biases of λ̂), ``calibration`` (the step chosen on its measured
bias), ``guidance`` (warnings on γ and nβ, with their numbers), ``sweeps`` (grid searches and checkpoint sweeps, local or Ray), ``influence`` / ``susceptibility`` (BIF, loss
kernel and susceptibilities from per-sample losses at the draws), ``plotting``, ``truth`` (closed-form
learning coefficients and their models), ``validation`` and ``modadd`` (the modular-addition toolkit).
"""

from typing import TYPE_CHECKING

# The names are imported on first use (PEP 562), so that `import lambdahat.cli` (and `lambdahat --help`) does not
# pay for torch, pandas and matplotlib; `from lambdahat import X` and `lambdahat.X` work as usual.
_EXPORTS = {
    "AccuracyCheck": "accuracy",
    "check_accuracy": "accuracy",
    "Calibration": "calibration",
    "CalibrationError": "calibration",
    "calibrate": "calibration",
    "calibrate_problem": "calibration",
    "calibrated_estimator": "calibration",
    "LLCConfig": "config",
    "LLCEstimator": "estimator",
    "LossKernel": "influence",
    "bif": "influence",
    "loss_gain": "influence",
    "loss_kernel": "influence",
    "nbeta_from_effective_size": "estimator",
    "sample": "estimator",
    "plot_diagnostics": "plotting",
    "plot_trace": "plotting",
    "Problem": "problem",
    "prepare": "problem",
    "LLCResult": "result",
    "Sampler": "samplers",
    "Susceptibilities": "susceptibility",
    "susceptibilities": "susceptibility",
    "to_arviz": "interop",
    "to_xarray": "interop",
    "GridSearchConfig": "sweeps",
    "LLCGridSearch": "sweeps",
    "llc_over_checkpoints": "sweeps",
    "plot_grid": "sweeps",
    "plot_llc_over_checkpoints": "sweeps",
}

if TYPE_CHECKING:
    from .accuracy import AccuracyCheck, check_accuracy
    from .calibration import Calibration, CalibrationError, calibrate, calibrate_problem, calibrated_estimator
    from .config import LLCConfig
    from .estimator import LLCEstimator, nbeta_from_effective_size, sample
    from .influence import LossKernel, bif, loss_gain, loss_kernel
    from .interop import to_arviz, to_xarray
    from .plotting import plot_diagnostics, plot_trace
    from .problem import Problem, prepare
    from .result import LLCResult
    from .samplers import Sampler
    from .susceptibility import Susceptibilities, susceptibilities
    from .sweeps import (
        GridSearchConfig,
        LLCGridSearch,
        llc_over_checkpoints,
        plot_grid,
        plot_llc_over_checkpoints,
    )


def __getattr__(name: str):
    import importlib

    module = _EXPORTS.get(name)
    if module is None:  # a submodule such as lambdahat.sweeps, as after an eager import
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'lambdahat' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.2.0"

__all__ = [
    "AccuracyCheck",
    "Calibration",
    "CalibrationError",
    "GridSearchConfig",
    "LLCConfig",
    "LLCEstimator",
    "LLCGridSearch",
    "LLCResult",
    "LossKernel",
    "Problem",
    "Sampler",
    "Susceptibilities",
    "__version__",
    "bif",
    "calibrate",
    "calibrate_problem",
    "calibrated_estimator",
    "check_accuracy",
    "llc_over_checkpoints",
    "loss_gain",
    "loss_kernel",
    "nbeta_from_effective_size",
    "plot_diagnostics",
    "plot_grid",
    "plot_llc_over_checkpoints",
    "plot_trace",
    "prepare",
    "sample",
    "susceptibilities",
    "to_arviz",
    "to_xarray",
]
