"""Statistics of the traces: divergence, R-hat, ESS and the across-chain trend test.

All functions take traces shaped ``(chain, draw)``. Statistically undefined input gives NaN, never an exception.
R-hat (rank-normalized split R-hat, Vehtari et al. 2021) and the bulk effective sample size come from arviz.
Whether the numbers are good enough (the thresholds and the plain-language advice) is decided in one place,
:mod:`lambdahat.trust`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .trust import TREND_P_VALUE

__all__ = [
    "DIVERGENCE_FACTOR",
    "TREND_P_VALUE",
    "divergence",
    "effective_sample_size",
    "half_growth",
    "r_hat",
    "trend_p_value",
    "trend_z",
]

# TREND_P_VALUE (re-exported for existing imports) is defined, with its reason, in lambdahat.trust.

#: A finite loss counts as exploded when it exceeds ``L0 + DIVERGENCE_FACTOR * (1 + |L0|)``.
DIVERGENCE_FACTOR = 1e4


def divergence(loss_trace: torch.Tensor, init_loss: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which chains diverged and at which step.

    A chain diverges at the first step whose loss is NaN, infinite, or exploded (larger than
    ``L0 + DIVERGENCE_FACTOR (1 + |L0|)``).

    Parameters
    ----------
    loss_trace:
        ``[chains, steps]`` losses of every step.
    init_loss:
        ``L0``.

    Returns
    -------
    diverged : bool ``[chains]``; step : int64 ``[chains]`` (-1 where the chain did not diverge).
    """
    limit = init_loss + DIVERGENCE_FACTOR * (1.0 + abs(init_loss))
    bad = ~torch.isfinite(loss_trace) | (loss_trace > limit)
    diverged = bad.any(dim=1)
    first = torch.where(diverged, bad.float().argmax(dim=1), torch.full_like(diverged, -1, dtype=torch.long))
    return diverged, first


def _arviz_stat(fn_name: str, trace: np.ndarray) -> float:
    if trace.ndim != 2 or trace.shape[0] < 2 or trace.shape[1] < 4 or not np.isfinite(trace).all():
        return math.nan
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(getattr(az, fn_name)(trace))


def r_hat(trace: np.ndarray | torch.Tensor) -> float:
    """Rank-normalized split R-hat of a ``(chain, draw)`` trace (NaN with fewer than 2 chains or 4 draws, or
    non-finite values). Values above :data:`lambdahat.trust.MAX_RHAT` say the chains disagree."""
    return _arviz_stat("rhat", np.asarray(trace, dtype=np.float64))


def effective_sample_size(trace: np.ndarray | torch.Tensor) -> float:
    """Bulk effective sample size of a ``(chain, draw)`` trace (NaN when undefined)."""
    return _arviz_stat("ess", np.asarray(trace, dtype=np.float64))


def trend_z(trace: np.ndarray | torch.Tensor) -> float:
    """How far the second half of the draws lies from the first half, as a t statistic over chains.

    For each chain ``c``, ``d_c = mean(last half) − mean(first half)``. Stationary, independent chains give
    ``E[d_c] = 0``, so ``t = mean(d) / (sd(d) / sqrt(C))`` follows Student's t with ``C − 1`` degrees of freedom.
    Using the independence of the chains avoids estimating autocorrelations from a trace that may be trending
    (which inflates them and hides the trend). NaN with fewer than 2 chains or 8 draws.
    """
    arr = np.asarray(trace, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 8 or not np.isfinite(arr).all():
        return math.nan
    half = arr.shape[1] // 2
    d = arr[:, -half:].mean(axis=1) - arr[:, :half].mean(axis=1)
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / (sd / math.sqrt(len(d))))


def trend_p_value(t: float, chains: int) -> float:
    """Two-sided p-value of :func:`trend_z`'s statistic ``t`` under stationarity (Student's t, ``chains − 1``
    degrees of freedom)."""
    if not math.isfinite(t) or chains < 2:
        return math.nan if math.isnan(t) else 0.0
    from scipy.stats import t as student_t

    return float(2 * student_t.sf(abs(t), chains - 1))


def half_growth(trace: np.ndarray | torch.Tensor) -> float:
    """Relative growth from the first to the second half of the draws: ``mean(last half) / mean(first half) − 1``
    over all chains of a ``(chain, draw)`` trace of a positive quantity (NaN when undefined)."""
    arr = np.asarray(trace, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2 or not np.isfinite(arr).all():
        return math.nan
    half = arr.shape[1] // 2
    first = arr[:, :half].mean()
    return float(arr[:, -half:].mean() / first - 1.0) if first > 0 else math.nan
