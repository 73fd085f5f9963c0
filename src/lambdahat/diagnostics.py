"""Statistics of the traces: divergence, R-hat, ESS and the across-chain trend test.

All functions take traces shaped ``(chain, draw)``. Statistically undefined input gives NaN, never an exception.
R-hat (rank-normalized split R-hat) and the bulk effective sample size follow Vehtari et al. (2021) and agree
with arviz's ``rhat`` and ``ess`` to rounding (tested); they are computed here with NumPy because importing arviz
(which imports matplotlib's pyplot and scipy.stats) took 2–3 s, more than a whole first call on a small model.
Whether the numbers are good enough (the thresholds and the plain-language advice) is decided in one place,
:mod:`lambdahat.trust`.
"""

from __future__ import annotations

import math

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


def _valid(trace: np.ndarray, min_chains: int) -> bool:
    return (
        trace.ndim == 2
        and trace.shape[0] >= min_chains
        and trace.shape[1] >= 4
        and bool(np.isfinite(trace).all())
    )


def _split_chains(trace: np.ndarray) -> np.ndarray:
    """``(chain, draw)`` → ``(2·chain, ⌊draw/2⌋)``: the first and the last half of every chain as chains of their
    own (the middle draw of an odd count is left out)."""
    half = trace.shape[1] // 2
    return np.concatenate([trace[:, :half], trace[:, trace.shape[1] - half :]], axis=0)


def _rank_normalize(trace: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks: ``Φ⁻¹((r − 3/8) / (S + 1/4))``, with ``r`` the rank of each value among
    all ``S`` values (ties get their average rank), Blom's offset as in Vehtari et al. (2021, eq. 14)."""
    _, inverse, counts = np.unique(trace, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse.reshape(-1)].reshape(trace.shape)
    uniform = (ranks - 0.375) / (trace.size + 0.25)
    return torch.special.ndtri(torch.from_numpy(uniform)).numpy()


def _potential_scale_reduction(trace: np.ndarray) -> float:
    """Gelman–Rubin ``R̂ = sqrt((N − 1)/N + B / (N W))`` of a ``(chain, N draws)`` trace, with ``B`` ``N`` times
    the variance of the chain means and ``W`` the mean within-chain variance."""
    n = trace.shape[1]
    between = n * np.var(trace.mean(axis=1), ddof=1)
    within = np.mean(np.var(trace, axis=1, ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sqrt((n - 1) / n + between / (n * within)))


def _autocovariance(trace: np.ndarray) -> np.ndarray:
    """Biased autocovariance of every chain at lags ``0 … N − 1`` (``1/N`` normalization), by FFT with zero padding
    to at least ``2N`` (so the circular correlation is the linear one)."""
    n = trace.shape[1]
    centred = trace - trace.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=1)[:, :n] / n


def _effective_size(trace: np.ndarray) -> float:
    """Effective sample size of a ``(chain, N draws)`` trace, Vehtari et al. (2021, eqs. 10–13):
    ``S / τ̂`` with ``τ̂ = −1 + 2 Σ ρ̂_t`` summed over Geyer's initial positive sequence of pairs
    ``ρ̂_{2k} + ρ̂_{2k+1} > 0``, made monotone, and ``ρ̂_t = 1 − (W − mean_c acov_c(t)) / var⁺`` the combined
    autocorrelation; ``τ̂`` is kept at least ``1 / log₁₀ S``."""
    chains, n = trace.shape
    if np.ptp(trace) < np.finfo(float).resolution:
        return float(trace.size)
    acov = _autocovariance(trace).mean(axis=0)  # averaged over chains, lags 0 .. n - 1
    within = acov[0] * n / (n - 1.0)
    var_plus = within * (n - 1.0) / n + (np.var(trace.mean(axis=1), ddof=1) if chains > 1 else 0.0)
    rho = np.zeros(n)
    rho[0] = even = 1.0
    rho[1] = odd = 1.0 - (within - acov[1]) / var_plus
    t = 1
    while t < n - 3 and even + odd > 0.0:  # initial positive sequence
        even = 1.0 - (within - acov[t + 1]) / var_plus
        odd = 1.0 - (within - acov[t + 2]) / var_plus
        if even + odd >= 0:
            rho[t + 1], rho[t + 2] = even, odd
        t += 2
    last = t - 2
    if even > 0:
        rho[last + 1] = even
    for t in range(1, last - 1, 2):  # initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
    total = trace.size
    tau = -1.0 + 2.0 * rho[: last + 1].sum() + rho[last + 1 : last + 2].sum()
    tau = max(tau, 1.0 / np.log10(total))
    return math.nan if np.isnan(rho).any() else float(total / tau)


def r_hat(trace: np.ndarray | torch.Tensor) -> float:
    """Rank-normalized split R-hat of a ``(chain, draw)`` trace (Vehtari, Gelman, Simpson, Carpenter & Bürkner
    2021): the larger of the split R-hat of the rank-normalized draws and of the rank-normalized distances from
    their median (the tails). NaN with fewer than 2 chains or 4 draws, or non-finite values. Values above
    :data:`lambdahat.trust.MAX_RHAT` say the chains disagree."""
    arr = np.asarray(trace, dtype=np.float64)
    if not _valid(arr, min_chains=2):
        return math.nan
    split = _split_chains(arr)
    bulk = _potential_scale_reduction(_rank_normalize(split))
    tail = _potential_scale_reduction(_rank_normalize(np.abs(split - np.median(split))))
    return float(max(bulk, tail))


def effective_sample_size(trace: np.ndarray | torch.Tensor) -> float:
    """Bulk effective sample size of a ``(chain, draw)`` trace: :func:`_effective_size` of the rank-normalized
    split chains (Vehtari et al. 2021); NaN with fewer than 2 chains or 4 draws, or non-finite values."""
    arr = np.asarray(trace, dtype=np.float64)
    if not _valid(arr, min_chains=2):
        return math.nan
    return _effective_size(_rank_normalize(_split_chains(arr)))


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
    """Two-sided p-value of :func:`trend_z`'s statistic ``t`` under stationarity: ``P(|T| ≥ |t|)`` for Student's
    t with ``ν = chains − 1`` degrees of freedom.

    For integer ``ν`` the distribution function is a finite sum (Abramowitz & Stegun 26.7.3–4): with
    ``θ = arctan(|t| / √ν)``, ``c = cos θ``,

    .. math::

        P(|T| < |t|) = \\begin{cases}
        \\tfrac{2}{\\pi}\\big(\\theta + \\sin\\theta\\,(c + \\tfrac{2}{3}c^3 + \\dots
            + \\tfrac{2\\cdot4\\cdots(\\nu-3)}{3\\cdot5\\cdots(\\nu-2)}c^{\\nu-2})\\big) & \\nu \\text{ odd},\\\\
        \\sin\\theta\\,(1 + \\tfrac{1}{2}c^2 + \\dots
            + \\tfrac{1\\cdot3\\cdots(\\nu-3)}{2\\cdot4\\cdots(\\nu-2)}c^{\\nu-2}) & \\nu \\text{ even}
        \\end{cases}

    (the sum in the odd case is empty for ``ν = 1``). Computed here rather than imported: scipy.stats takes about a
    second to import; the tests check the sum against it. A p-value near 1e-10 keeps about six significant digits.
    """
    if math.isnan(t) or chains < 2:
        return math.nan
    if math.isinf(t):
        return 0.0
    nu = int(chains) - 1
    theta = math.atan(abs(t) / math.sqrt(nu))
    cos2 = math.cos(theta) ** 2
    if nu % 2:
        term = total = math.cos(theta) if nu > 1 else 0.0
        for k in range(3, nu - 1, 2):
            term *= (k - 1) / k * cos2
            total += term
        inside = 2.0 / math.pi * (theta + math.sin(theta) * total)
    else:
        term = total = 1.0
        for k in range(2, nu - 1, 2):
            term *= (k - 1) / k * cos2
            total += term
        inside = math.sin(theta) * total
    return max(0.0, 1.0 - inside)


def half_growth(trace: np.ndarray | torch.Tensor) -> float:
    """Relative growth from the first to the second half of the draws: ``mean(last half) / mean(first half) − 1``
    over all chains of a ``(chain, draw)`` trace of a positive quantity (NaN when undefined)."""
    arr = np.asarray(trace, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2 or not np.isfinite(arr).all():
        return math.nan
    half = arr.shape[1] // 2
    first = arr[:, :half].mean()
    return float(arr[:, -half:].mean() / first - 1.0) if first > 0 else math.nan
