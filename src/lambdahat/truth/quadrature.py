"""Exact finite-nβ posterior means of ``nβK`` by quadrature: in one or two dimensions
(:func:`posterior_mean_nbeta_k_numeric`) and for radial potentials in any dimension (:func:`radial_posterior_mean`).

At finite nβ these differ from λ for singular potentials, so tight tests compare λ̂ with them rather than with λ.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ._checks import check_int, check_real

__all__ = ["posterior_mean_nbeta_k_numeric", "radial_posterior_mean"]


# ----------------------------------------------------------------------------------------------------
# Exact finite-nbeta posterior mean by quadrature
# ----------------------------------------------------------------------------------------------------

_GAUSS_TAIL = 60.0  # the Gaussian-only grid stops where exp(-gamma w^2 / 2) = exp(-_GAUSS_TAIL)
_EDGE_T = 40.0  # the box grid stops where the distance to the edge is radius * exp(-_EDGE_T)
_CHUNK_POINTS = 1 << 21


def _axis_nodes(
    h: float, w_min: float, gamma: float, radius: float | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Nodes of one axis: positions ``w``, log-Jacobians, and the number of leading nodes on the ``2h`` sub-grid.

    Each half-axis is mapped from a uniform grid in ``t``: ``w = exp(t)`` (no box) or ``w = R sigmoid(t)``
    (box of half-width ``R``). Both are log-spaced near ``0``, so the narrow ridges of singular integrands
    along the axes are resolved, and both make the integrand in ``t`` smooth and decaying at both ends, so the
    trapezoidal rule converges exponentially fast. The nodes of the ``2h`` sub-grid (both signs) come first, so
    that the sub-grid of a product grid is a leading block.
    """
    dtype = torch.float64
    if radius is None:
        t_lo, t_hi = math.log(w_min), 0.5 * math.log(2.0 * _GAUSS_TAIL / gamma)
    else:
        t_lo, t_hi = math.log(w_min / radius), _EDGE_T
    count = math.ceil((t_hi - t_lo) / (2.0 * h)) * 2 + 1
    t = t_lo + h * torch.arange(count, dtype=dtype)
    t = torch.cat([t[0::2], t[1::2]])
    if radius is None:
        w_pos, logjac = t.exp(), t
    else:
        w_pos = radius * torch.sigmoid(t)
        logjac = math.log(radius) + nn.functional.logsigmoid(t) + nn.functional.logsigmoid(-t)
    n_coarse = (count + 1) // 2
    w = torch.cat([w_pos[:n_coarse], -w_pos[:n_coarse], w_pos[n_coarse:], -w_pos[n_coarse:]])
    logjac = torch.cat([logjac[:n_coarse], logjac[:n_coarse], logjac[n_coarse:], logjac[n_coarse:]])
    return w, logjac, 2 * n_coarse


def _evaluate_k(K: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    func = "posterior_mean_nbeta_k_numeric"
    with torch.no_grad():
        values = K(points)
    if not isinstance(values, torch.Tensor) or values.shape != points.shape[:-1]:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"{func}: expected K to map a float64 tensor of shape [..., d] = {tuple(points.shape)} to a "
            f"tensor of shape {tuple(points.shape[:-1])}, got {shape}; reduce over the last axis only."
        )
    values = values.to(torch.float64)
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(
            f"{func}: K must be finite and non-negative everywhere, got a negative or non-finite value."
        )
    return values


def _grid_estimates(
    K: Callable[[torch.Tensor], torch.Tensor],
    d: int,
    nbeta: float,
    gamma: float,
    radius: float | None,
    h: float,
    w_min: float,
) -> tuple[float, float]:
    """``E[nbeta K]`` by the trapezoidal rule on the grid of spacing ``h`` and on its ``2h`` sub-grid."""
    w, logjac, n_coarse = _axis_nodes(h, w_min, gamma, radius)
    fine_parts: list[torch.Tensor] = []
    coarse_parts: list[torch.Tensor] = []
    rows = w.numel() if d == 1 else max(1, _CHUNK_POINTS // w.numel())
    for start in range(0, w.numel(), rows):
        stop = min(start + rows, w.numel())
        if d == 1:
            points = w[:, None]
            log_base = logjac
        else:
            points = torch.stack(torch.broadcast_tensors(w[start:stop, None], w[None, :]), dim=-1)
            log_base = logjac[start:stop, None] + logjac[None, :]
        nbk = nbeta * _evaluate_k(K, points)
        log_weight = log_base - nbk - 0.5 * gamma * (points * points).sum(dim=-1)
        log_weight_k = log_weight + nbk.log()
        fine_parts.append(
            torch.stack([log_weight.logsumexp(tuple(range(d))), log_weight_k.logsumexp(tuple(range(d)))])
        )
        if start < n_coarse:  # the leading block of the 2h sub-grid
            lead = (slice(0, min(stop, n_coarse) - start),) + (slice(0, n_coarse),) * (d - 1)
            coarse_parts.append(
                torch.stack(
                    [
                        log_weight[lead].logsumexp(tuple(range(d))),
                        log_weight_k[lead].logsumexp(tuple(range(d))),
                    ]
                )
            )
    fine = torch.stack(fine_parts).logsumexp(0)
    crude = torch.stack(coarse_parts).logsumexp(0)
    return math.exp(float(fine[1] - fine[0])), math.exp(float(crude[1] - crude[0]))


def posterior_mean_nbeta_k_numeric(
    K: Callable[[torch.Tensor], torch.Tensor],
    d: int,
    nbeta: float,
    gamma: float,
    *,
    radius: float | None = None,
    rtol: float = 1e-7,
    w_min: float = 1e-24,
    max_points: int = 50_000_000,
) -> float:
    """Exact posterior mean of ``nbeta * K(w)`` in one or two dimensions, by quadrature.

    .. math::

        \\mathbb{E}_p[n\\beta K] = \\frac{\\int n\\beta K(w)\\, e^{-n\\beta K(w) - \\gamma\\|w\\|^2/2}\\, dw}
        {\\int e^{-n\\beta K(w) - \\gamma\\|w\\|^2/2}\\, dw},

    over :math:`\\mathbb{R}^d`, or over the box :math:`[-R, R]^d` when ``radius = R`` is given (a uniform
    prior on the box when ``gamma = 0``). The true parameter is :math:`w^* = 0`. This is the value an exact
    sampler of the localized tempered posterior would give for :math:`\\hat\\lambda` at finite
    :math:`n\\beta`; it tends to :math:`\\lambda` as :math:`n\\beta \\to \\infty` but can be well below it at
    moderate :math:`n` for singular ``K``.

    Singular integrands concentrate on narrow ridges along the axes, so each half-axis is mapped to a uniform
    grid in ``t`` by :math:`w = e^t` (or :math:`w = R\\,\\sigma(t)` on a box): log-spaced near 0, from
    ``w_min`` out to where the Gaussian (or the box edge) makes the integrand negligible. In ``t`` the
    integrand is smooth and decays at both ends, so the trapezoidal rule converges exponentially; the spacing
    is halved until the estimates on the grid and on its every-other-node sub-grid agree to ``rtol``; the
    finer estimate, which is returned, is then in practice far more accurate (its error is roughly the square
    of the coarser one's; the tests check agreement with closed forms to about 1e-12). Sums are taken in log
    space. A 2-D call takes of the order of a second.

    Parameters
    ----------
    K : callable
        Potential, mapping a float64 tensor of shape ``[..., d]`` to ``[...]``, finite and ``>= 0``, with
        ``K(0) = 0``; e.g. :func:`monomial_potential`.
    d : int
        Dimension, 1 or 2.
    nbeta : float
        ``n * beta > 0``, e.g. ``n / log(n)``.
    gamma : float
        Localization strength ``>= 0``; ``gamma = 0`` needs ``radius``.
    radius : float, optional
        Half-width of a box prior; default none (the prior is the Gaussian localization alone).
    rtol : float, default 1e-7
        Relative agreement required between the grids of spacing ``h`` and ``2h``.
    w_min : float, default 1e-24
        Smallest ``|w_i|`` on the grid; the strip ``|w_i| < w_min`` is left out.
    max_points : int, default 50_000_000
        Largest grid tried before giving up.

    Returns
    -------
    float
        :math:`\\mathbb{E}_p[n\\beta K]`.

    Raises
    ------
    RuntimeError
        If the grids do not agree to ``rtol`` before the grid exceeds ``max_points``.

    Examples
    --------
    The regular case has the closed form ``(d/2) * 2 nbeta / (2 nbeta + gamma)``:

    >>> from lambdahat.truth import quadratic_potential
    >>> value = posterior_mean_nbeta_k_numeric(quadratic_potential(1.0), 1, nbeta=100.0, gamma=1.0)
    >>> round(value, 9), round(0.5 * 200 / 201, 9)
    (0.497512438, 0.497512438)
    """
    func = "posterior_mean_nbeta_k_numeric"
    if not callable(K):
        raise ValueError(f"{func}: expected K to be a callable w -> K(w), got {K!r}.")
    d = check_int(func, "d", d, 1)
    if d > 2:
        raise ValueError(f"{func}: quadrature is implemented for d = 1 or 2, got d = {d}.")
    nbeta = check_real(func, "nbeta", nbeta, lower=0.0, strict=True)
    gamma = check_real(func, "gamma", gamma, lower=0.0, strict=False)
    if radius is not None:
        radius = check_real(func, "radius", radius, lower=0.0, strict=True)
    elif gamma == 0.0:
        raise ValueError(
            f"{func}: with gamma = 0 and no radius the prior is improper and the posterior of a singular K "
            f"need not be normalizable; pass gamma > 0 or a box radius."
        )
    rtol = check_real(func, "rtol", rtol, lower=0.0, strict=True)
    w_min = check_real(func, "w_min", w_min, lower=0.0, strict=True)
    h = 0.1
    while True:
        fine, crude = _grid_estimates(K, d, nbeta, gamma, radius, h, w_min)
        if abs(fine - crude) <= rtol * abs(fine):
            return fine
        h /= 2.0
        if _axis_nodes(h, w_min, gamma, radius)[0].numel() ** d > max_points:
            raise RuntimeError(
                f"{func}: the quadrature did not converge to rtol = {rtol:g} (last estimates {fine!r} and "
                f"{crude!r} at spacing {2 * h:g}); raise max_points or rtol, or check that K is smooth."
            )


def radial_posterior_mean(d: int, k: float, nbeta: float, gamma: float, points: int = 400_001) -> float:
    """Exact ``E[nβ ||w||^(2k)]`` under ``p(w) ∝ exp(−nβ ||w||^(2k) − (γ/2)||w||²)`` in ``d`` dimensions.

    In polar coordinates the density of ``r = ||w||`` is ``∝ r^(d−1) exp(−nβ r^(2k) − γ r²/2)``; with
    ``r = e^t`` the integrals become smooth in ``t`` and the trapezoidal rule on a wide, fine grid is exact to
    far below Monte Carlo error. Without localization the value is exactly ``d / (2k)`` (``nβK`` is then
    Gamma(d/(2k), 1) distributed).

    Parameters
    ----------
    d : int
        Dimension, ``>= 1``.
    k : float
        Exponent, ``> 0``.
    nbeta : float
        ``n * beta > 0``.
    gamma : float
        Localization strength ``>= 0``.
    points : int, default 400_001
        Nodes of the trapezoidal rule in ``t = log r``.

    Returns
    -------
    float
        :math:`\\mathbb{E}_p[n\\beta K]`.

    Examples
    --------
    >>> round(radial_posterior_mean(3, 2, nbeta=500.0, gamma=0.0), 6)
    0.75
    """
    func = "radial_posterior_mean"
    d = check_int(func, "d", d, 1)
    k = check_real(func, "k", k, lower=0.0, strict=True)
    nbeta = check_real(func, "nbeta", nbeta, lower=0.0, strict=True)
    gamma = check_real(func, "gamma", gamma, lower=0.0, strict=False)
    points = check_int(func, "points", points, 3)
    t = np.linspace(-40.0, 10.0, points)
    r = np.exp(t)
    u = nbeta * r ** (2 * k)
    log_w = d * t - u - 0.5 * gamma * r * r  # r^(d-1) dr = r^d dt
    w = np.exp(log_w - log_w.max())
    return float(np.trapezoid(u * w, t) / np.trapezoid(w, t))
