"""Closed-form learning coefficients, and small models whose true learning coefficient is known.

The local learning coefficient (LLC) estimator

.. math::

    \\hat\\lambda(w^*) = n\\beta \\big( \\mathbb{E}_p[L_n(w)] - L_n(w^*) \\big), \\qquad
    p(w) \\propto \\exp\\big(-n\\beta L_n(w) - \\tfrac{\\gamma}{2} \\|w - w^*\\|^2\\big),

can only be validated against models whose real log canonical threshold (RLCT) :math:`\\lambda` is known. This
module collects

* the formulas: regular models (:func:`rlct_regular`, and the exact finite-:math:`n\\beta` SGLD value
  :func:`regular_posterior_mean_nbeta_k`), monomials / normal crossings (:func:`rlct_monomial`,
  :func:`multiplicity_monomial`), radial potentials (:func:`rlct_radial`), reduced-rank regression
  (:func:`rlct_reduced_rank`, Aoyagi & Watanabe 2005) and deep linear networks (:func:`rlct_deep_linear`,
  Aoyagi 2024);
* an exact numerical reference for the finite-:math:`n\\beta` posterior mean
  :math:`\\mathbb{E}[n\\beta K]` in one or two dimensions (:func:`posterior_mean_nbeta_k_numeric`): at finite
  :math:`n` it differs from :math:`\\lambda` for very singular potentials, so tight tests must use it rather
  than :math:`\\lambda`;
* builders of tiny validation models, positioned at their true parameter :math:`w^*`, packaged as a
  :class:`TruthCase` (:func:`potential_case`, :func:`regular_case`, :func:`monomial_case`,
  :func:`radial_case`, :func:`reduced_rank_case`, :func:`deep_linear_case`, :func:`default_cases`).

All formula functions work on plain Python numbers, return ``float`` and raise ``ValueError`` on bad input.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DEFAULT_N",
    "PotentialModel",
    "TruthCase",
    "deep_linear_case",
    "default_cases",
    "half_squared_error",
    "mean_output_loss",
    "monomial_case",
    "monomial_potential",
    "multiplicity_monomial",
    "posterior_mean_nbeta_k_numeric",
    "potential_case",
    "quadratic_potential",
    "radial_case",
    "radial_potential",
    "reduced_rank_case",
    "regular_case",
    "regular_posterior_mean_nbeta_k",
    "rlct_deep_linear",
    "rlct_monomial",
    "rlct_radial",
    "rlct_reduced_rank",
    "rlct_regular",
]

DEFAULT_N = 10_000
"""Default data set size ``n`` of the validation cases (it sets ``nbeta = n / log n``)."""


# ----------------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------------


def _check_int(func: str, name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{func}: expected {name} to be an integer >= {minimum}, got {value!r}.")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{func}: expected {name} to be an integer >= {minimum}, got {value}.")
    return value


def _check_real(func: str, name: str, value: object, *, lower: float, strict: bool) -> float:
    """Return ``value`` as a finite ``float`` above ``lower`` (strictly or not), or raise a ``ValueError``."""
    bound = f"> {lower:g}" if strict else f">= {lower:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{func}: expected {name} to be a finite real number {bound}, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < lower or (strict and value == lower):
        raise ValueError(f"{func}: expected {name} to be a finite real number {bound}, got {value!r}.")
    return value


# ----------------------------------------------------------------------------------------------------
# Regular models
# ----------------------------------------------------------------------------------------------------


def rlct_regular(d: int) -> float:
    """Learning coefficient of a regular model with ``d`` parameters.

    .. math::

        \\lambda = d / 2 .

    Parameters
    ----------
    d : int
        Number of parameters, ``>= 1``.

    Returns
    -------
    float
        ``d / 2``.

    Examples
    --------
    >>> rlct_regular(10)
    5.0
    """
    d = _check_int("rlct_regular", "d", d, 1)
    return d / 2


def regular_posterior_mean_nbeta_k(
    d: int, a: float, nbeta: float, gamma: float, epsilon: float = 0.0
) -> float:
    """Exact stationary mean of ``nbeta * K`` under SGLD for the quadratic ``K(w) = a ||w - w*||^2``.

    With localization :math:`\\gamma` the potential is :math:`U(w) = n\\beta a\\|w\\|^2 +
    \\tfrac{\\gamma}{2}\\|w\\|^2 = \\tfrac{\\kappa}{2}\\|w\\|^2` (taking :math:`w^* = 0`), :math:`\\kappa = 2
    n\\beta a + \\gamma`. The SGLD step :math:`w' = w - \\tfrac{\\varepsilon}{2}\\nabla U(w) +
    \\sqrt{\\varepsilon}\\,\\xi` is, per coordinate, the AR(1) process :math:`w' = (1 -
    \\varepsilon\\kappa/2)\\, w + \\sqrt{\\varepsilon}\\,\\xi`, stable for :math:`0 \\le \\varepsilon\\kappa <
    4`, with stationary variance

    .. math::

        v = \\frac{\\varepsilon}{1 - (1 - \\varepsilon\\kappa/2)^2} = \\frac{1}{\\kappa (1 -
        \\varepsilon\\kappa/4)},

    so that

    .. math::

        \\mathbb{E}[n\\beta K] = n\\beta a\\, d\\, v
        = \\frac{d}{2} \\cdot \\frac{2 n\\beta a / \\kappa}{1 - \\varepsilon\\kappa/4}.

    ``epsilon = 0`` gives the exact posterior mean; it tends to ``d / 2`` as ``nbeta * a / gamma`` grows.

    Parameters
    ----------
    d : int
        Number of parameters, ``>= 1``.
    a : float
        Curvature ``a > 0`` of ``K``.
    nbeta : float
        Inverse temperature times sample size, ``> 0``.
    gamma : float
        Localization strength, ``>= 0``.
    epsilon : float, default 0.0
        SGLD step size (learning rate), ``>= 0``; needs ``epsilon * kappa < 4``.

    Returns
    -------
    float
        :math:`\\mathbb{E}[n\\beta K(w)]` at stationarity.

    Examples
    --------
    >>> regular_posterior_mean_nbeta_k(2, 1.0, nbeta=100.0, gamma=0.0)
    1.0
    >>> round(regular_posterior_mean_nbeta_k(2, 1.0, nbeta=100.0, gamma=1.0, epsilon=1e-3), 6)
    1.04767
    """
    func = "regular_posterior_mean_nbeta_k"
    d = _check_int(func, "d", d, 1)
    a = _check_real(func, "a", a, lower=0.0, strict=True)
    nbeta = _check_real(func, "nbeta", nbeta, lower=0.0, strict=True)
    gamma = _check_real(func, "gamma", gamma, lower=0.0, strict=False)
    epsilon = _check_real(func, "epsilon", epsilon, lower=0.0, strict=False)
    kappa = 2.0 * nbeta * a + gamma
    if epsilon * kappa >= 4.0:
        raise ValueError(
            f"{func}: SGLD on this quadratic diverges for epsilon * kappa >= 4 "
            f"(kappa = 2 * nbeta * a + gamma = {kappa:g}, epsilon = {epsilon:g}); "
            f"use epsilon < {4.0 / kappa:g}."
        )
    return (d / 2.0) * (2.0 * nbeta * a / kappa) / (1.0 - epsilon * kappa / 4.0)


# ----------------------------------------------------------------------------------------------------
# Monomials and radial potentials
# ----------------------------------------------------------------------------------------------------


def _monomial_ratios(func: str, k: Sequence[float], h: Sequence[float] | None) -> list[Fraction]:
    """Exact ratios ``(h_i + 1) / (2 k_i)`` over the coordinates with ``k_i > 0``."""
    if isinstance(k, str | bytes) or not hasattr(k, "__iter__"):
        raise ValueError(f"{func}: expected k to be a sequence of exponents, got {k!r}.")
    ks = [_check_real(func, f"k[{i}]", ki, lower=0.0, strict=False) for i, ki in enumerate(k)]
    if not ks:
        raise ValueError(f"{func}: expected at least one exponent in k, got an empty sequence.")
    if h is None:
        hs = [0.0] * len(ks)
    elif isinstance(h, str | bytes) or not hasattr(h, "__iter__"):
        raise ValueError(f"{func}: expected h to be a sequence of prior exponents, got {h!r}.")
    else:
        hs = [_check_real(func, f"h[{i}]", hi, lower=-1.0, strict=True) for i, hi in enumerate(h)]
        if len(hs) != len(ks):
            raise ValueError(
                f"{func}: expected h to have one entry per exponent in k ({len(ks)}), got {len(hs)} entries."
            )
    ratios = [(Fraction(hi) + 1) / (2 * Fraction(ki)) for ki, hi in zip(ks, hs) if ki > 0]
    if not ratios:
        raise ValueError(
            f"{func}: all exponents in k are 0, so K is constant and has no learning coefficient; "
            f"got k = {ks}."
        )
    return ratios


def rlct_monomial(k: Sequence[float], h: Sequence[float] | None = None) -> float:
    """Learning coefficient of the monomial potential ``K(w) = prod_i w_i^(2 k_i)`` at ``w = 0``.

    With a prior density :math:`\\propto \\prod_i |w_i|^{h_i}` near the origin (``h = 0``: any smooth positive
    prior, such as the Gaussian localization),

    .. math::

        \\lambda = \\min_{i:\\, k_i > 0} \\frac{h_i + 1}{2 k_i},

    which for ``h = 0`` is :math:`1 / (2 \\max_i k_i)`. Coordinates with ``k_i = 0`` do not enter ``K`` and do
    not constrain :math:`\\lambda`.

    Parameters
    ----------
    k : sequence of float
        Exponents ``k_i >= 0``, not all zero.
    h : sequence of float, optional
        Prior exponents ``h_i > -1`` (so the prior is integrable), one per ``k_i``; default all zero.

    Returns
    -------
    float
        :math:`\\lambda`.

    Examples
    --------
    >>> rlct_monomial([1, 3])
    0.16666666666666666
    >>> rlct_monomial([1, 2], h=[0, 2])
    0.5
    >>> rlct_monomial([0, 2])
    0.25
    """
    return float(min(_monomial_ratios("rlct_monomial", k, h)))


def multiplicity_monomial(k: Sequence[float], h: Sequence[float] | None = None) -> int:
    """Multiplicity ``m`` of the monomial potential: the number of coordinates attaining the minimum in λ.

    .. math::

        m = \\#\\Big\\{ i : k_i > 0,\\ \\frac{h_i + 1}{2 k_i} = \\lambda \\Big\\}.

    The free energy is :math:`n L_n(w_0) + \\lambda \\log n - (m - 1) \\log\\log n + O_p(1)`: a multiplicity
    ``m > 1`` (e.g. the normal crossing ``k = (1, 1)``) brings ``log log n`` corrections, so finite-``n``
    estimates converge to ``λ`` more slowly.

    Parameters
    ----------
    k, h :
        As in :func:`rlct_monomial`.

    Returns
    -------
    int
        The multiplicity, ``>= 1``.

    Examples
    --------
    >>> multiplicity_monomial([1, 1])
    2
    >>> multiplicity_monomial([1, 2])
    1
    """
    ratios = _monomial_ratios("multiplicity_monomial", k, h)
    lam = min(ratios)
    return sum(1 for q in ratios if q == lam)


def rlct_radial(d: int, k: float) -> float:
    """Learning coefficient of the radial potential ``K(w) = ||w||^(2k)`` in ``d`` dimensions.

    In polar coordinates the volume :math:`V(t) = \\int_{K < t} dw \\propto t^{d / (2k)}`, so

    .. math::

        \\lambda = \\frac{d}{2k}.

    Parameters
    ----------
    d : int
        Dimension, ``>= 1``.
    k : float
        Exponent, ``> 0`` (``k = 1`` is the regular quadratic).

    Returns
    -------
    float
        ``d / (2 k)``.

    Examples
    --------
    >>> rlct_radial(3, 2)
    0.75
    """
    d = _check_int("rlct_radial", "d", d, 1)
    k = _check_real("rlct_radial", "k", k, lower=0.0, strict=True)
    return d / (2.0 * k)


# ----------------------------------------------------------------------------------------------------
# Reduced-rank regression and deep linear networks
# ----------------------------------------------------------------------------------------------------


def rlct_reduced_rank(M: int, H: int, N: int, r: int) -> float:
    """Learning coefficient of reduced-rank regression ``y = B A x`` (Aoyagi & Watanabe 2005).

    ``x`` has ``M`` entries, ``A`` is ``H x M``, ``B`` is ``N x H`` and the true product ``B0 A0`` has rank
    ``r``.

    * If :math:`N + r \\le M + H`, :math:`M + r \\le N + H` and :math:`H + r \\le M + N`:

      .. math::

          \\lambda = \\frac{2 (H + r)(M + N) - (M - N)^2 - (H + r)^2}{8}
          \\; \\Big( + \\frac{1}{8} \\text{ if } M + H + N + r \\text{ is odd} \\Big);

    * if :math:`M + H < N + r`: :math:`\\lambda = (HM - Hr + Nr) / 2`;
    * if :math:`N + H < M + r`: :math:`\\lambda = (HN - Hr + Mr) / 2`;
    * if :math:`M + N < H + r`: :math:`\\lambda = MN / 2`.

    Since :math:`r \\le \\min(M, H, N)` at most one of the last three conditions can hold. The value is
    symmetric in ``M`` and ``N``. It is the *global* learning coefficient; the local one at a true parameter
    where ``A`` and ``B`` both have rank exactly ``r`` equals it (see :func:`reduced_rank_case`).

    Parameters
    ----------
    M : int
        Input dimension, ``>= 1``.
    H : int
        Hidden (inner) dimension, ``>= 1``.
    N : int
        Output dimension, ``>= 1``.
    r : int
        Rank of the true product, ``0 <= r <= min(M, H, N)``.

    Returns
    -------
    float
        :math:`\\lambda`.

    Examples
    --------
    >>> rlct_reduced_rank(5, 3, 5, 0)
    6.5
    >>> rlct_reduced_rank(4, 3, 4, 1)
    6.0
    """
    func = "rlct_reduced_rank"
    M = _check_int(func, "M", M, 1)
    H = _check_int(func, "H", H, 1)
    N = _check_int(func, "N", N, 1)
    r = _check_int(func, "r", r, 0)
    if r > min(M, H, N):
        raise ValueError(
            f"{func}: the true rank r cannot exceed min(M, H, N) = {min(M, H, N)}; got r = {r} "
            f"with (M, H, N) = ({M}, {H}, {N})."
        )
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    if M + N < H + r:
        return M * N / 2
    num = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 1:
        num += 1
    return num / 8


def rlct_deep_linear(widths: Sequence[int], r: int) -> float:
    """Learning coefficient of a deep linear network ``f(x) = W_L ... W_1 x`` (Aoyagi 2024).

    ``widths = [H_0, H_1, ..., H_L]`` with :math:`H_0 = N` the input and :math:`H_L = M` the output width;
    :math:`W_l` is :math:`H_l \\times H_{l-1}` and the true product has rank ``r``. Let :math:`M_i = H_i - r`.
    The set :math:`S` is the :math:`\\ell + 1` smallest :math:`M_i` for the first :math:`\\ell = 1, \\dots, L`
    with

    (a) :math:`\\max_{j \\in S} M_j < \\min_{k \\notin S} M_k`,
    (b) :math:`\\sum_{j \\in S} M_j \\ge \\ell \\max_{j \\in S} M_j`,
    (c) :math:`\\sum_{j \\in S} M_j < \\ell \\min_{k \\notin S} M_k`

    ((a) and (c) hold vacuously when :math:`S` is everything). With :math:`\\Sigma = \\sum_{j \\in S} M_j`,
    :math:`\\bar M = \\lceil \\Sigma / \\ell \\rceil` and :math:`a = \\Sigma - (\\bar M - 1)\\ell`,

    .. math::

        \\lambda = \\frac{-r^2 + r(N + M)}{2} + \\frac{a(\\ell - a)}{4\\ell}
        - \\frac{\\ell(\\ell - 1)}{4} \\Big(\\frac{\\Sigma}{\\ell}\\Big)^2
        + \\frac{1}{2} \\sum_{i < j;\\ i, j \\in S} M_i M_j .

    Such an :math:`\\ell` always exists and is unique ((b) at :math:`\\ell + 1` is the negation of (c) at
    :math:`\\ell`, (b) holds at :math:`\\ell = 1`, and once (c) holds it holds for every larger
    :math:`\\ell`). For ``L = 1`` this gives the regular value :math:`NM/2`; for ``L = 2`` it equals
    :func:`rlct_reduced_rank`. The value is the global one; the local value at a true parameter where every
    layer has rank exactly ``r`` equals it.

    Parameters
    ----------
    widths : sequence of int
        ``[input, hidden..., output]``, at least two widths, each ``>= 1``.
    r : int
        Rank of the true end-to-end map, ``0 <= r <= min(widths)``.

    Returns
    -------
    float
        :math:`\\lambda`.

    Examples
    --------
    >>> rlct_deep_linear([5, 3, 5], 0)
    6.5
    >>> rlct_deep_linear([10, 20, 20, 10], 10)
    50.0
    """
    func = "rlct_deep_linear"
    if isinstance(widths, str | bytes) or not hasattr(widths, "__len__"):
        raise ValueError(
            f"{func}: expected widths to be a sequence [input, hidden..., output], got {widths!r}."
        )
    hs = [_check_int(func, f"widths[{i}]", w, 1) for i, w in enumerate(widths)]
    if len(hs) < 2:
        raise ValueError(
            f"{func}: expected at least two widths [input, ..., output] (one layer), got {len(hs)}: {hs}."
        )
    r = _check_int(func, "r", r, 0)
    if r > min(hs):
        raise ValueError(
            f"{func}: the true rank r cannot exceed the smallest width {min(hs)}; "
            f"got r = {r} with widths {hs}."
        )
    n_layers = len(hs) - 1
    m = sorted(h - r for h in hs)
    for ell in range(1, n_layers + 1):
        inside, outside = m[: ell + 1], m[ell + 1 :]
        total, largest = sum(inside), inside[-1]
        cond_a = not outside or largest < outside[0]
        cond_b = total >= ell * largest
        cond_c = not outside or total < ell * outside[0]
        if cond_a and cond_b and cond_c:
            break
    else:  # pragma: no cover - unreachable, see the docstring
        raise RuntimeError(f"{func}: found no set S for widths {hs} and r = {r}; please report this.")
    m_bar = -(-total // ell)
    a = total - (m_bar - 1) * ell
    pair_sum = (total * total - sum(x * x for x in inside)) // 2
    lam = (
        Fraction(-r * r + r * (hs[0] + hs[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        + Fraction(pair_sum, 2)
    )
    return float(lam)


# ----------------------------------------------------------------------------------------------------
# Potentials
# ----------------------------------------------------------------------------------------------------


class _MonomialPotential:
    """``w -> prod_i w_i^(2 k_i)`` over the last axis (picklable, works on tensors of shape ``[..., d]``)."""

    def __init__(self, k: Sequence[float]) -> None:
        _monomial_ratios("monomial_potential", k, None)
        self.k = tuple(float(ki) for ki in k)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if w.shape[-1] != len(self.k):
            raise ValueError(
                f"monomial_potential: expected w with last dimension {len(self.k)} (one per exponent in "
                f"k = {self.k}), got shape {tuple(w.shape)}."
            )
        out = None
        for i, ki in enumerate(self.k):
            if ki == 0:
                continue
            power = 2.0 * ki
            term = w[..., i] ** int(power) if power.is_integer() else w[..., i].abs() ** power
            out = term if out is None else out * term
        return out

    def __repr__(self) -> str:
        return f"monomial_potential(k={self.k})"


class _RadialPotential:
    """``w -> ||w||^(2k)`` over the last axis."""

    def __init__(self, k: float) -> None:
        self.k = _check_real("radial_potential", "k", k, lower=0.0, strict=True)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        sq = (w * w).sum(dim=-1)
        return sq ** int(self.k) if self.k.is_integer() else sq**self.k

    def __repr__(self) -> str:
        return f"radial_potential(k={self.k})"


class _QuadraticPotential:
    """``w -> a ||w||^2`` over the last axis."""

    def __init__(self, a: float) -> None:
        self.a = _check_real("quadratic_potential", "a", a, lower=0.0, strict=True)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.a * (w * w).sum(dim=-1)

    def __repr__(self) -> str:
        return f"quadratic_potential(a={self.a})"


def monomial_potential(k: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The monomial potential ``K(w) = prod_i w_i^(2 k_i)`` as a torch function of ``w`` of shape ``[...,
    d]``.

    .. math::

        K(w) = \\prod_{i : k_i > 0} w_i^{2 k_i}

    (with :math:`|w_i|` when :math:`2 k_i` is not an integer). Its learning coefficient at ``0`` is
    :func:`rlct_monomial`. The callable is picklable and uses only elementwise operations, so it works under
    ``torch.func`` transforms.

    Parameters
    ----------
    k : sequence of float
        Exponents ``k_i >= 0``, not all zero; ``d = len(k)``.

    Returns
    -------
    callable
        ``w -> K(w)``, reducing the last axis.

    Examples
    --------
    >>> K = monomial_potential([1, 3])
    >>> float(K(torch.tensor([2.0, 1.0])))
    4.0
    """
    return _MonomialPotential(k)


def radial_potential(k: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The radial potential ``K(w) = ||w||^(2k)`` as a torch function of ``w`` of shape ``[..., d]``.

    .. math::

        K(w) = \\Big(\\sum_i w_i^2\\Big)^k, \\qquad \\lambda = d / (2k) \\text{ (see }
        \\texttt{rlct\\_radial}).

    Parameters
    ----------
    k : float
        Exponent, ``> 0``.

    Returns
    -------
    callable
        ``w -> K(w)``, reducing the last axis.

    Examples
    --------
    >>> float(radial_potential(2)(torch.tensor([1.0, 1.0])))
    4.0
    """
    return _RadialPotential(k)


def quadratic_potential(a: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The regular potential ``K(w) = a ||w||^2`` as a torch function of ``w`` of shape ``[..., d]``.

    .. math::

        K(w) = a \\sum_i w_i^2, \\qquad \\lambda = d / 2 .

    Parameters
    ----------
    a : float, default 1.0
        Curvature, ``> 0``.

    Returns
    -------
    callable
        ``w -> K(w)``, reducing the last axis.

    Examples
    --------
    >>> float(quadratic_potential(0.5)(torch.tensor([1.0, 3.0])))
    5.0
    """
    return _QuadraticPotential(a)


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

    >>> value = posterior_mean_nbeta_k_numeric(quadratic_potential(1.0), 1, nbeta=100.0, gamma=1.0)
    >>> round(value, 9), round(0.5 * 200 / 201, 9)
    (0.497512438, 0.497512438)
    """
    func = "posterior_mean_nbeta_k_numeric"
    if not callable(K):
        raise ValueError(f"{func}: expected K to be a callable w -> K(w), got {K!r}.")
    d = _check_int(func, "d", d, 1)
    if d > 2:
        raise ValueError(f"{func}: quadrature is implemented for d = 1 or 2, got d = {d}.")
    nbeta = _check_real(func, "nbeta", nbeta, lower=0.0, strict=True)
    gamma = _check_real(func, "gamma", gamma, lower=0.0, strict=False)
    if radius is not None:
        radius = _check_real(func, "radius", radius, lower=0.0, strict=True)
    elif gamma == 0.0:
        raise ValueError(
            f"{func}: with gamma = 0 and no radius the prior is improper and the posterior of a singular K "
            f"need not be normalizable; pass gamma > 0 or a box radius."
        )
    rtol = _check_real(func, "rtol", rtol, lower=0.0, strict=True)
    w_min = _check_real(func, "w_min", w_min, lower=0.0, strict=True)
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


# ----------------------------------------------------------------------------------------------------
# Validation models
# ----------------------------------------------------------------------------------------------------


def mean_output_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Criterion of the potential models: the batch mean of the outputs (each output is ``K(w)``)."""
    return outputs.mean()


def half_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood with unit variance, up to a constant.

    .. math::

        \\ell = \\frac{1}{B} \\sum_{b=1}^{B} \\frac{1}{2} \\| f(x_b) - y_b \\|^2

    (the squared error summed over output dimensions, halved, averaged over the batch).
    """
    return 0.5 * (outputs - targets).pow(2).sum(dim=-1).mean()


@dataclasses.dataclass(frozen=True)
class TruthCase:
    """A validation model at its true parameter, with its data and its known learning coefficient.

    Attributes
    ----------
    name : str
        Short identifier, e.g. ``"rrr_M4_H3_N4_r1"``.
    model : torch.nn.Module
        The model, with its parameters at the true parameter ``w*`` (copy it before changing them).
    dataset : torch.utils.data.TensorDataset
        ``n`` rows ``(x, y)``.
    criterion_fn : callable
        ``(outputs, targets) -> scalar`` mean loss, so that :math:`L_n(w)` is its value on the whole data set.
    true_lambda : float
        The learning coefficient at ``w*``.
    d : int
        Number of parameters.
    n : int
        Data set size (``nbeta = n / log n``).
    description : str
        What the case is and where ``true_lambda`` comes from.
    """

    name: str
    model: nn.Module
    dataset: TensorDataset
    criterion_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    true_lambda: float
    d: int
    n: int
    description: str

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A ``DataLoader`` over the data set; when shuffling, the order is drawn from a generator seeded by
        ``seed``.

        Parameters
        ----------
        batch_size : int
            Rows per batch, ``>= 1``.
        shuffle : bool, default False
            Reshuffle every pass.
        seed : int, default 0
            Seed of the shuffling generator.

        Returns
        -------
        torch.utils.data.DataLoader
        """
        batch_size = _check_int("TruthCase.loader", "batch_size", batch_size, 1)
        generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


class PotentialModel(nn.Module):
    """A model whose only parameter is a vector ``w`` and whose per-sample output is ``K(w - w*)``.

    ``forward(x)`` returns ``K(w - w_star)`` repeated ``x.shape[0]`` times, so with :func:`mean_output_loss`
    the empirical loss is :math:`L_n(w) = K(w - w^*)` for any data.

    Parameters
    ----------
    potential : callable
        ``K``, mapping a tensor of shape ``[d]`` to a scalar.
    w_star : torch.Tensor
        The true parameter, shape ``[d]``; ``w`` starts there.
    """

    def __init__(self, potential: Callable[[torch.Tensor], torch.Tensor], w_star: torch.Tensor) -> None:
        super().__init__()
        self.potential = potential
        self.w = nn.Parameter(w_star.detach().clone())
        self.register_buffer("w_star", w_star.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.potential(self.w - self.w_star).expand(x.shape[0])

    def extra_repr(self) -> str:
        return f"d={self.w.numel()}, potential={self.potential!r}"


def _dummy_dataset(func: str, n: int) -> TensorDataset:
    n = _check_int(func, "n", n, 1)
    return TensorDataset(torch.zeros(n, 1), torch.zeros(n))


def potential_case(
    name: str,
    K: Callable[[torch.Tensor], torch.Tensor],
    d: int,
    n: int,
    true_lambda: float,
    w_star: torch.Tensor | Sequence[float] | None = None,
    description: str = "",
) -> TruthCase:
    """A :class:`TruthCase` whose loss is a given potential: :math:`L_n(w) = K(w - w^*)`.

    The model is a :class:`PotentialModel` (one parameter ``w`` of shape ``[d]``, at ``w*``); the data set is
    ``n`` dummy rows (``x = 0`` of shape ``[n, 1]``, ``y = 0`` of shape ``[n]``), which only set ``n`` and the
    batching; the criterion is :func:`mean_output_loss`.

    Parameters
    ----------
    name : str
        Identifier of the case.
    K : callable
        Potential on tensors of shape ``[d]`` (and ``[..., d]``), ``>= 0`` with ``K(0) = 0``.
    d : int
        Number of parameters, ``>= 1``.
    n : int
        Data set size, ``>= 1``.
    true_lambda : float
        The learning coefficient of ``K`` at 0.
    w_star : tensor or sequence of float, optional
        The true parameter; default zeros.
    description : str, optional
        Free text; default a generic one.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = potential_case("quartic", radial_potential(2), d=2, n=100, true_lambda=rlct_radial(2, 2))
    >>> case.d, case.n, case.true_lambda
    (2, 100, 0.5)
    """
    func = "potential_case"
    d = _check_int(func, "d", d, 1)
    dataset = _dummy_dataset(func, n)
    true_lambda = _check_real(func, "true_lambda", true_lambda, lower=0.0, strict=False)
    if w_star is None:
        w_star = torch.zeros(d)
    w_star = torch.as_tensor(w_star, dtype=torch.get_default_dtype())
    if w_star.shape != (d,):
        raise ValueError(f"{func}: expected w_star of shape ({d},), got {tuple(w_star.shape)}.")
    with torch.no_grad():
        at_truth = K(torch.zeros(d))
    if not isinstance(at_truth, torch.Tensor) or at_truth.numel() != 1 or float(at_truth) != 0.0:
        raise ValueError(
            f"{func}: expected K(0) to be the scalar 0 (the true parameter must be a zero of K), "
            f"got {at_truth!r}."
        )
    model = PotentialModel(K, w_star)
    return TruthCase(
        name=name,
        model=model,
        dataset=dataset,
        criterion_fn=mean_output_loss,
        true_lambda=true_lambda,
        d=d,
        n=int(n),
        description=description or f"potential {K!r} in d = {d} at w*, true lambda = {true_lambda:g}",
    )


def regular_case(d: int, a: float = 1.0, n: int = DEFAULT_N) -> TruthCase:
    """Regular validation case ``K(w) = a ||w||^2`` in ``d`` dimensions: ``λ = d / 2``.

    At finite ``nbeta``, localization ``gamma`` and step ``epsilon`` the exact SGLD expectation of
    :math:`\\hat\\lambda` is :func:`regular_posterior_mean_nbeta_k`.

    Parameters
    ----------
    d : int
        Number of parameters.
    a : float, default 1.0
        Curvature.
    n : int, default DEFAULT_N
        Data set size.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> regular_case(10).true_lambda
    5.0
    """
    d = _check_int("regular_case", "d", d, 1)
    lam = rlct_regular(d)
    return potential_case(
        f"regular_d{d}",
        quadratic_potential(a),
        d,
        n,
        lam,
        description=f"regular quadratic K = {a:g} ||w||^2 in d = {d}: lambda = d/2 = {lam:g}",
    )


def monomial_case(k: Sequence[float], n: int = DEFAULT_N) -> TruthCase:
    """Monomial validation case ``K(w) = prod_i w_i^(2 k_i)``, ``d = len(k)``: ``λ = 1 / (2 max k_i)``.

    The Gaussian localization is a smooth positive prior, so ``h = 0`` in :func:`rlct_monomial`. With
    multiplicity ``m > 1`` (several ``k_i`` equal to the maximum, e.g. the normal crossing ``k = (1, 1)``) the
    free energy has a ``-(m - 1) log log n`` term and estimates approach ``λ`` slowly; for very singular ``K``
    compare finite-``n`` estimates with :func:`posterior_mean_nbeta_k_numeric`.

    Parameters
    ----------
    k : sequence of float
        Exponents ``k_i >= 0``, not all zero.
    n : int, default DEFAULT_N
        Data set size.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = monomial_case([1, 2])
    >>> case.name, case.d, case.true_lambda
    ('monomial_k1_2', 2, 0.25)
    """
    lam = rlct_monomial(k)
    mult = multiplicity_monomial(k)
    ks = [float(ki) for ki in k]
    tag = "_".join(f"{ki:g}" for ki in ks)
    terms = " * ".join(f"w{i + 1}^{2 * ki:g}" for i, ki in enumerate(ks) if ki > 0)
    note = f", multiplicity {mult} (log log n corrections at finite n)" if mult > 1 else ""
    return potential_case(
        f"monomial_k{tag}",
        monomial_potential(ks),
        len(ks),
        n,
        lam,
        description=f"monomial K = {terms}: lambda = 1/(2 max k) = {lam:g}{note}",
    )


def radial_case(d: int, k: float, n: int = DEFAULT_N) -> TruthCase:
    """Radial validation case ``K(w) = ||w||^(2k)`` in ``d`` dimensions: ``λ = d / (2k)``.

    Parameters
    ----------
    d : int
        Number of parameters.
    k : float
        Exponent, ``> 0``.
    n : int, default DEFAULT_N
        Data set size.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> radial_case(3, 2).true_lambda
    0.75
    """
    lam = rlct_radial(d, k)
    return potential_case(
        f"radial_d{d}_k{float(k):g}",
        radial_potential(k),
        d,
        n,
        lam,
        description=f"radial K = ||w||^{2 * float(k):g} in d = {d}: lambda = d/(2k) = {lam:g}",
    )


def _rank_r_weight(out_features: int, in_features: int, r: int) -> torch.Tensor:
    """``[[I_r, 0], [0, 0]]`` of shape ``[out, in]``: rank exactly ``r``, entries 0 and 1 (products exact)."""
    weight = torch.zeros(out_features, in_features)
    idx = torch.arange(r)
    weight[idx, idx] = 1.0
    return weight


def _linear_chain(widths: Sequence[int], r: int) -> nn.Sequential:
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layer = nn.Linear(fan_in, fan_out, bias=False)
        with torch.no_grad():
            layer.weight.copy_(_rank_r_weight(fan_out, fan_in, r))
        layers.append(layer)
    return nn.Sequential(*layers)


def _regression_case(
    name: str, model: nn.Module, x: torch.Tensor, true_lambda: float, description: str
) -> TruthCase:
    with torch.no_grad():
        y = model(x)
    return TruthCase(
        name=name,
        model=model,
        dataset=TensorDataset(x, y),
        criterion_fn=half_squared_error,
        true_lambda=true_lambda,
        d=sum(p.numel() for p in model.parameters()),
        n=x.shape[0],
        description=description,
    )


def reduced_rank_case(M: int, H: int, N: int, r: int, n: int = DEFAULT_N, seed: int = 0) -> TruthCase:
    """Reduced-rank regression validation case ``y = B A x`` at a true parameter of rank ``r``.

    The model is ``nn.Sequential(Linear(M, H), Linear(H, N))`` without biases (``A`` = first weight, ``H x
    M``; ``B`` = second weight, ``N x H``), at :math:`A^* = [[I_r, 0], [0, 0]]`, :math:`B^* = [[I_r, 0], [0,
    0]]`: both factors have rank exactly ``r``, a point where the local learning coefficient equals the global
    value of :func:`rlct_reduced_rank` (at a generic factorization it can be larger). Inputs :math:`x \\sim
    N(0, I_M)` from a generator seeded by ``seed``; targets are noiseless, :math:`y = B^* A^* x`, so
    :math:`L_n(w^*) = 0` exactly; the criterion is :func:`half_squared_error` (a unit-variance Gaussian
    likelihood), ``d = H (M + N)``.

    Parameters
    ----------
    M, H, N : int
        Input, hidden and output widths.
    r : int
        True rank, ``0 <= r <= min(M, H, N)``.
    n : int, default DEFAULT_N
        Data set size.
    seed : int, default 0
        Seed of the inputs.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = reduced_rank_case(4, 3, 4, 1, n=100)
    >>> case.d, case.true_lambda
    (24, 6.0)
    """
    lam = rlct_reduced_rank(M, H, N, r)
    n = _check_int("reduced_rank_case", "n", n, 1)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, M, generator=generator)
    return _regression_case(
        f"rrr_M{M}_H{H}_N{N}_r{r}",
        _linear_chain([M, H, N], r),
        x,
        lam,
        f"reduced-rank regression {M}->{H}->{N}, true rank {r} (both factors rank {r}), x ~ N(0, I), "
        f"noiseless: lambda = {lam:g} (Aoyagi & Watanabe 2005), regular would be {H * (M + N) / 2:g}",
    )


def deep_linear_case(widths: Sequence[int], r: int, n: int = DEFAULT_N, seed: int = 0) -> TruthCase:
    """Deep linear network validation case ``f(x) = W_L ... W_1 x`` at a true parameter of rank ``r``.

    ``nn.Sequential`` of bias-free ``nn.Linear(widths[l], widths[l + 1])``, every weight at :math:`[[I_r, 0],
    [0, 0]]` (rank exactly ``r``; ``w* = 0`` when ``r = 0``), where the local learning coefficient equals the
    global value of :func:`rlct_deep_linear`. Inputs :math:`x \\sim U[-1, 1]^{N}` (``N = widths[0]``) from a
    generator seeded by ``seed``; noiseless targets; criterion :func:`half_squared_error`.

    Parameters
    ----------
    widths : sequence of int
        ``[input, hidden..., output]``.
    r : int
        True rank, ``0 <= r <= min(widths)``.
    n : int, default DEFAULT_N
        Data set size.
    seed : int, default 0
        Seed of the inputs.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = deep_linear_case([5, 4, 5], 0, n=100)
    >>> case.name, case.d, case.true_lambda
    ('dln_5-4-5_r0', 40, 8.0)
    """
    lam = rlct_deep_linear(widths, r)
    hs = [int(w) for w in widths]
    n = _check_int("deep_linear_case", "n", n, 1)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.rand(n, hs[0], generator=generator) * 2.0 - 1.0
    arch = "-".join(str(w) for w in hs)
    d = sum(a * b for a, b in itertools.pairwise(hs))
    return _regression_case(
        f"dln_{arch}_r{r}",
        _linear_chain(hs, r),
        x,
        lam,
        f"deep linear network {arch.replace('-', '->')}, true rank {r} (every layer rank {r}), x ~ U[-1, 1], "
        f"noiseless: lambda = {lam:g} (Aoyagi 2024), regular would be {d / 2:g}",
    )


def default_cases(quick: bool = False) -> list[TruthCase]:
    """A small, varied set of validation cases for a table of estimated against true λ.

    ======================  ====  ==========  =====================================================
    name                    d     λ           what
    ======================  ====  ==========  =====================================================
    regular_d10             10    5           regular quadratic
    monomial_k1_2           2     1/4         ``K = w1^2 w2^4``
    normal_crossing_k1_1    2     1/2         ``K = w1^2 w2^2``, multiplicity 2 (``log log n``)
    radial_d3_k2            3     3/4         ``K = ||w||^4``
    rrr_M4_H3_N4_r1         24    6           reduced-rank regression 4->3->4, rank 1
    dln_4-3-3-4_r1          33    11/2        deep linear network, rank 1
    dln_5-4-5_r0            40    8           deep linear network at ``w* = 0``
    ======================  ====  ==========  =====================================================

    Parameters
    ----------
    quick : bool, default False
        Only ``regular_d10``, ``monomial_k1_2`` and ``rrr_M4_H3_N4_r1``.

    Returns
    -------
    list of TruthCase

    Examples
    --------
    >>> [case.name for case in default_cases(quick=True)]
    ['regular_d10', 'monomial_k1_2', 'rrr_M4_H3_N4_r1']
    """
    if quick:
        return [regular_case(10), monomial_case([1, 2]), reduced_rank_case(4, 3, 4, 1)]
    crossing = dataclasses.replace(monomial_case([1, 1]), name="normal_crossing_k1_1")
    return [
        regular_case(10),
        monomial_case([1, 2]),
        crossing,
        radial_case(3, 2),
        reduced_rank_case(4, 3, 4, 1),
        deep_linear_case([4, 3, 3, 4], 1),
        deep_linear_case([5, 4, 5], 0),
    ]
