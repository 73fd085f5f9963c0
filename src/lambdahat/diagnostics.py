"""Diagnostics of the loss traces: divergence, R-hat, ESS, MALA acceptance, stationarity, and plain-language advice.

All functions take traces shaped ``(chain, draw)``. Statistically undefined input gives NaN, never an exception.
R-hat (rank-normalized split R-hat, Vehtari et al. 2021) and the bulk effective sample size come from arviz.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

__all__ = [
    "DIVERGENCE_FACTOR",
    "advice",
    "divergence",
    "effective_sample_size",
    "r_hat",
    "trend_z",
]

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
    non-finite values). Values above 1.1 say the chains disagree."""
    return _arviz_stat("rhat", np.asarray(trace, dtype=np.float64))


def effective_sample_size(trace: np.ndarray | torch.Tensor) -> float:
    """Bulk effective sample size of a ``(chain, draw)`` trace (NaN when undefined)."""
    return _arviz_stat("ess", np.asarray(trace, dtype=np.float64))


def trend_z(trace: np.ndarray | torch.Tensor) -> float:
    """How far the mean of the last half of the draws lies from that of the first half, in standard errors.

    The standard error of each half-mean is ``sd / sqrt(ess_half)`` with the ESS of that half pooled over chains.
    ``|z| > 4`` means the trace is still drifting: burn-in was too short, or the chain is not stationary.
    """
    arr = np.asarray(trace, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 8 or not np.isfinite(arr).all():
        return math.nan
    half = arr.shape[1] // 2
    first, last = arr[:, :half], arr[:, -half:]
    ses = []
    for part in (first, last):
        ess = effective_sample_size(part) if part.shape[0] >= 2 else part.size
        ess = part.size if not np.isfinite(ess) else max(ess, 1.0)
        ses.append(part.std(ddof=1) / math.sqrt(ess))
    se = math.hypot(*ses)
    if se == 0:
        return 0.0 if last.mean() == first.mean() else math.inf
    return float((last.mean() - first.mean()) / se)


def advice(
    *,
    llc_mean: float,
    llc_std: float,
    n_chains: int,
    diverged: list[int],
    mala_acceptance: float,
    rhat: float,
    trend: float,
) -> list[str]:
    """Plain-language warnings about an estimate; an empty list when nothing looks wrong."""
    notes = []
    if diverged:
        notes.append(
            f"chains {diverged} diverged (non-finite or exploding loss) and are left out of llc_mean; "
            "lower learning_rate or raise localization."
        )
    if len(diverged) == n_chains:
        notes.append("every chain diverged: there is no estimate. Lower learning_rate by 10x and try again.")
        return notes
    if math.isfinite(mala_acceptance) and mala_acceptance < 0.5:
        notes.append(
            f"mean MALA acceptance is {mala_acceptance:.2f} (well-tuned SGLD gives about 0.9): the step is too "
            "large for the posterior's curvature, so λ̂ is biased; lower learning_rate."
        )
    if math.isfinite(rhat) and rhat > 1.1:
        notes.append(
            f"R-hat of the loss traces is {rhat:.2f} (> 1.1): the chains disagree; run longer (more burnin_steps "
            "and draws) or raise localization."
        )
    if math.isfinite(trend) and abs(trend) > 4:
        notes.append(
            f"the loss trace is still drifting ({trend:+.1f} standard errors between the first and second half "
            "of the draws): raise burnin_steps, or learning_rate if the chains barely move."
        )
    if math.isfinite(llc_mean) and llc_mean < 0:
        notes.append(
            f"λ̂ is negative ({llc_mean:.3g}): the chains found lower loss than w*, which is then not a local "
            "minimum at this temperature; train further, raise localization or use restrict_to_orth_grad=True."
        )
    return notes
